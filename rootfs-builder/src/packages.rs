//! Debian packages in a recipe: the lock that pins them, and their files
//! unpacked into an agent-as-init tree.
//!
//! A recipe names what it wants (`packages.install`); the lock next to it
//! (`image-recipes/NAME.lock`) holds the whole dependency closure, each
//! package as name, version and the sha256 of its `.deb`. The lock is
//! written by `cargo xtask versions --update recipe:NAME` and checked on
//! every build: a lock written for another package list is an error that
//! says how to rewrite it. The caller (xtask) fetches the `.deb`s and
//! verifies their digests; this module only reads them.
//!
//! An agent-as-init guest runs no maintainer scripts: the packages' data
//! is unpacked as it is, owned by root, minus the recipe's `exclude`
//! paths, and the recipe supplies what a postinst would have made (the
//! `update-alternatives` links, for instance) as its own symlinks.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::recipe::{GuestPath, Mode, PackageVariant};
#[cfg(test)]
use crate::rootless::Privileges;
use crate::tree::Creator;

/// The lock file format written and read here.
pub const LOCK_FORMAT: u32 = 1;

/// One pinned package of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    /// sha256 of the `.deb` (the archive's `SHA256` field).
    pub sha256: String,
}

/// `image-recipes/NAME.lock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub recipe: String,
    /// The Debian suite the packages come from (versions.yaml `distro.suite`).
    pub suite: String,
    pub architecture: String,
    /// The recipe's `packages.variant`; `essential` adds Debian's
    /// `Essential: yes` set to the closure (absent: `extract`).
    #[serde(default, skip_serializing_if = "PackageVariant::is_extract")]
    pub variant: PackageVariant,
    /// The recipe's `packages.install` this lock was resolved for, sorted.
    pub install: Vec<String>,
    /// The closure, sorted by name.
    pub packages: Vec<LockedPackage>,
}

/// The lock file of recipe `name` in `recipes_dir`.
pub fn lock_path(recipes_dir: &Path, name: &str) -> PathBuf {
    recipes_dir.join(format!("{name}.lock"))
}

impl Lock {
    pub fn to_yaml(&self) -> Result<String> {
        let body = serde_yaml_ng::to_string(self)?;
        Ok(format!(
            "# The Debian packages of recipe `{}`: the closure of its packages.install,\n\
             # each pinned by version and .deb sha256. Written by\n\
             # `cargo xtask versions --update recipe:{}`; do not edit by hand.\n{body}",
            self.recipe, self.recipe
        ))
    }

    /// Reads `file` and checks it against the recipe's wishes: fail-closed,
    /// every mismatch names the file and the command that rewrites it.
    pub fn load_checked(
        file: &Path,
        recipe: &str,
        variant: PackageVariant,
        install: &[String],
        suite: &str,
    ) -> Result<Lock> {
        let fix = format!("run `cargo xtask versions --update recipe:{recipe}` to write it");
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!(
                    "{}: missing: recipe `{recipe}` lists packages; {fix}",
                    file.display()
                )
            }
            Err(e) => return Err(anyhow!(e).context(format!("{}: cannot read", file.display()))),
        };
        let lock: Lock = serde_yaml_ng::from_str(&text)
            .map_err(|e| anyhow!("{}: {e}; {fix}", file.display()))?;
        if lock.format != LOCK_FORMAT {
            bail!(
                "{}: format {} is not {LOCK_FORMAT}; {fix}",
                file.display(),
                lock.format
            );
        }
        if lock.recipe != recipe {
            bail!(
                "{}: written for recipe `{}`, not `{recipe}`; {fix}",
                file.display(),
                lock.recipe
            );
        }
        if lock.variant != variant {
            bail!(
                "{}: resolved for packages.variant {} but the recipe says {}; {fix}",
                file.display(),
                lock.variant.as_str(),
                variant.as_str()
            );
        }
        let mut wanted = install.to_vec();
        wanted.sort();
        wanted.dedup();
        if lock.install != wanted {
            bail!(
                "{}: resolved for packages {:?} but the recipe installs {:?}; {fix}",
                file.display(),
                lock.install,
                wanted
            );
        }
        if lock.suite != suite {
            bail!(
                "{}: resolved against Debian {} but versions.yaml distro.suite is {suite}; {fix}",
                file.display(),
                lock.suite
            );
        }
        for want in &wanted {
            if !lock.packages.iter().any(|p| &p.name == want) {
                bail!(
                    "{}: package {want} is not in the lock; {fix}",
                    file.display()
                );
            }
        }
        for p in &lock.packages {
            if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!(
                    "{}: package {}: sha256 {:?} is not 64 hex digits; {fix}",
                    file.display(),
                    p.name,
                    p.sha256
                );
            }
        }
        Ok(lock)
    }
}

/// Who put each path in the tree, for collision messages.
pub type Owners = BTreeMap<String, String>;

/// Whether `path` (relative, no leading `/`) is `exclude` or below it.
fn excluded(path: &str, exclude: &[GuestPath]) -> bool {
    exclude.iter().any(|e| {
        let e = e.relative();
        path == e
            || path
                .strip_prefix(e)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// A member name of a data tarball as a plain relative path.
fn member_path(raw: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir | Component::RootDir => {}
            Component::Normal(n) => parts.push(n.to_str()?.to_string()),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Unpacks the data of `deb` (package `name`) into `root`, leaving out
/// `exclude`. A directory may be shared; anything else already there (from
/// the recipe or another package) is an error naming both sides. Everything
/// is root's: chowned as root, left to the tree's rootless record (owner
/// 0:0) otherwise; modes go through `creator` (kept readable without root).
pub(crate) fn unpack_deb(
    deb: &Path,
    name: &str,
    root: &Path,
    exclude: &[GuestPath],
    owners: &mut Owners,
    creator: &mut Creator,
) -> Result<usize> {
    let out = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .output()
        .context("run dpkg-deb (apt-get install dpkg)")?;
    if !out.status.success() {
        bail!(
            "package {name}: dpkg-deb --fsys-tarfile {}: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut archive = ::tar::Archive::new(&out.stdout[..]);
    let mut count = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = member_path(&raw) else {
            if raw.components().any(|c| c == Component::ParentDir) {
                bail!("package {name}: member {} leaves the tree", raw.display());
            }
            continue; // "./"
        };
        if excluded(&rel, exclude) {
            continue;
        }
        // No symlink above the member, however far up.
        crate::util::within_tree(root, &rel)
            .with_context(|| format!("package {name}: cannot unpack"))?;
        let host = root.join(&rel);
        let parent_ok = host
            .parent()
            .map(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()))
            .unwrap_or(false);
        if !parent_ok {
            // Directories the package does not list itself (it always does
            // in practice), or a parent that is a symlink: never written through.
            let parent = host.parent().unwrap_or(root);
            if std::fs::symlink_metadata(parent).is_ok() {
                bail!(
                    "package {name}: /{rel}: its parent /{} is not a directory in the tree (a symlink from {}?)",
                    parent.strip_prefix(root).unwrap_or(parent).display(),
                    owners
                        .get(&parent.strip_prefix(root).unwrap_or(parent).to_string_lossy().into_owned())
                        .map(String::as_str)
                        .unwrap_or("the recipe")
                );
            }
            std::fs::create_dir_all(parent)?;
        }
        let mode = entry.header().mode()? & 0o7777;
        let kind = entry.header().entry_type();
        let existing = std::fs::symlink_metadata(&host).ok();
        if kind.is_dir() {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => bail!(
                    "package {name} has directory /{rel}, where {} put something else",
                    owners.get(&rel).map(String::as_str).unwrap_or("the recipe")
                ),
                None => {
                    std::fs::create_dir(&host)?;
                    creator.directory_mode(&host, &rel, Mode(mode))?;
                    owners.insert(rel, format!("package {name}"));
                }
            }
            continue;
        }
        if existing.is_some() {
            bail!(
                "package {name} installs /{rel}, which {} already put there; drop one of them (the recipe's `packages.exclude` leaves package paths out)",
                owners.get(&rel).map(String::as_str).unwrap_or("the recipe")
            );
        }
        match kind {
            ::tar::EntryType::Regular | ::tar::EntryType::Continuous => {
                let mut data = Vec::new();
                entry.read_to_end(&mut data)?;
                std::fs::write(&host, &data)?;
            }
            ::tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("package {name}: symlink /{rel} has no target"))?;
                std::os::unix::fs::symlink(target, &host)?;
            }
            ::tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .and_then(|t| member_path(&t))
                    .with_context(|| format!("package {name}: hard link /{rel} has no target in the package"))?;
                std::fs::hard_link(root.join(target), &host)?;
            }
            other => bail!(
                "package {name}: /{rel} is a {other:?}; only files, directories and links are unpacked"
            ),
        }
        // Everything is root's, as dpkg would leave these packages. A hard
        // link shares its target's inode, owner and mode: a second chown
        // would only clear its set-id bits.
        if kind != ::tar::EntryType::Link {
            creator.own(&host)?;
        }
        if kind == ::tar::EntryType::Regular {
            // After chown, which clears set-id bits.
            creator.mode(&host, &rel, Mode(mode))?;
        } else if kind == ::tar::EntryType::Link {
            let target = entry
                .link_name()?
                .and_then(|t| member_path(&t))
                .context("a hard link's target")?;
            creator.same_inode(&rel, &target)?;
        }
        owners.insert(rel, format!("package {name}"));
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lock() -> Lock {
        Lock {
            format: LOCK_FORMAT,
            recipe: "minimal".into(),
            suite: "bookworm".into(),
            architecture: "amd64".into(),
            variant: PackageVariant::Extract,
            install: vec!["iptables".into()],
            packages: vec![
                LockedPackage {
                    name: "iptables".into(),
                    version: "1.8.9-2".into(),
                    sha256: "a".repeat(64),
                },
                LockedPackage {
                    name: "libc6".into(),
                    version: "2.36-9".into(),
                    sha256: "b".repeat(64),
                },
            ],
        }
    }

    #[test]
    fn a_lock_is_checked_against_the_recipe_fail_closed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("minimal.lock");
        let err = Lock::load_checked(
            &file,
            "minimal",
            PackageVariant::Extract,
            &["iptables".into()],
            "bookworm",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("missing") && err.contains("versions --update recipe:minimal"),
            "{err}"
        );

        std::fs::write(&file, lock().to_yaml().unwrap()).unwrap();
        let ok = Lock::load_checked(
            &file,
            "minimal",
            PackageVariant::Extract,
            &["iptables".into()],
            "bookworm",
        )
        .unwrap();
        assert_eq!(ok, lock());
        for (install, suite, says) in [
            (
                vec!["iptables".to_string(), "nftables".into()],
                "bookworm",
                "but the recipe installs",
            ),
            (
                vec!["iptables".to_string()],
                "trixie",
                "distro.suite is trixie",
            ),
        ] {
            let err =
                Lock::load_checked(&file, "minimal", PackageVariant::Extract, &install, suite)
                    .unwrap_err()
                    .to_string();
            assert!(err.contains(says) && err.contains("minimal.lock"), "{err}");
        }
        let err = Lock::load_checked(
            &file,
            "minimal",
            PackageVariant::Essential,
            &["iptables".into()],
            "bookworm",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("packages.variant extract but the recipe says essential"),
            "{err}"
        );
        let mut bad = lock();
        bad.packages[1].sha256 = "xyz".into();
        std::fs::write(&file, bad.to_yaml().unwrap()).unwrap();
        let err = Lock::load_checked(
            &file,
            "minimal",
            PackageVariant::Extract,
            &["iptables".into()],
            "bookworm",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("libc6") && err.contains("64 hex"), "{err}");
        std::fs::write(&file, "format: 1\nrecipe: minimal\nextra: 1\n").unwrap();
        assert!(Lock::load_checked(
            &file,
            "minimal",
            PackageVariant::Extract,
            &["iptables".into()],
            "bookworm"
        )
        .is_err());
    }

    /// A .deb made here with dpkg-deb: a program, a library link, a
    /// document (excluded) and a file the recipe also has.
    fn fake_deb(dir: &Path, with_collision: bool) -> PathBuf {
        let pkg = dir.join("pkg");
        for d in [
            "DEBIAN",
            "usr/sbin",
            "usr/lib/x86_64-linux-gnu",
            "usr/share/doc/fake",
            "etc",
        ] {
            std::fs::create_dir_all(pkg.join(d)).unwrap();
        }
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: fake\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n",
        )
        .unwrap();
        std::fs::write(pkg.join("usr/sbin/fake-tool"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            pkg.join("usr/sbin/fake-tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(pkg.join("usr/lib/x86_64-linux-gnu/libfake.so.1.0"), "lib").unwrap();
        std::os::unix::fs::symlink(
            "libfake.so.1.0",
            pkg.join("usr/lib/x86_64-linux-gnu/libfake.so.1"),
        )
        .unwrap();
        std::fs::write(pkg.join("usr/share/doc/fake/copyright"), "c").unwrap();
        if with_collision {
            std::fs::write(pkg.join("etc/hostname"), "pkg").unwrap();
        }
        let deb = dir.join("fake.deb");
        crate::util::run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "--build"])
                .arg(&pkg)
                .arg(&deb),
        );
        deb
    }

    #[test]
    #[ignore = "needs root (files owned by 0:0) and dpkg-deb: run by cargo xtask test unit"]
    fn a_package_is_unpacked_as_root_without_its_exclusions_or_collisions() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "recipe").unwrap();
        let mut owners = Owners::new();
        owners.insert("etc/hostname".into(), "recipe files".into());
        let exclude = [GuestPath::new("/usr/share").unwrap()];

        let deb = fake_deb(&dir.path().join("a"), false);
        let n = unpack_deb(
            &deb,
            "fake",
            &root,
            &exclude,
            &mut owners,
            &mut Creator::new(Privileges::Root),
        )
        .unwrap();
        assert_eq!(n, 3, "the tool, the library and its link");
        let tool = std::fs::metadata(root.join("usr/sbin/fake-tool")).unwrap();
        assert_eq!(
            (tool.uid(), tool.gid(), tool.mode() & 0o7777),
            (0, 0, 0o755)
        );
        assert_eq!(
            std::fs::read_link(root.join("usr/lib/x86_64-linux-gnu/libfake.so.1")).unwrap(),
            Path::new("libfake.so.1.0")
        );
        assert!(!root.join("usr/share").exists(), "excluded");

        // The same package again: everything collides with itself.
        let err = unpack_deb(
            &deb,
            "fake",
            &root,
            &exclude,
            &mut owners,
            &mut Creator::new(Privileges::Root),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("package fake installs /usr/") && err.contains("package fake already"),
            "{err}"
        );

        let root2 = dir.path().join("root2");
        std::fs::create_dir_all(root2.join("etc")).unwrap();
        std::fs::write(root2.join("etc/hostname"), "recipe").unwrap();
        let deb = fake_deb(&dir.path().join("b"), true);
        let err = unpack_deb(
            &deb,
            "fake",
            &root2,
            &exclude,
            &mut owners,
            &mut Creator::new(Privileges::Root),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/hostname") && err.contains("recipe files"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(root2.join("etc/hostname")).unwrap(),
            "recipe"
        );
    }

    #[test]
    fn exclusions_match_whole_components() {
        let ex = [GuestPath::new("/usr/share/doc").unwrap()];
        assert!(excluded("usr/share/doc", &ex));
        assert!(excluded("usr/share/doc/libc6/copyright", &ex));
        assert!(!excluded("usr/share/docs", &ex));
        assert!(!excluded("usr/share", &ex));
        assert_eq!(
            member_path(Path::new("./usr/sbin/x")).as_deref(),
            Some("usr/sbin/x")
        );
        assert_eq!(member_path(Path::new("./")), None);
        assert_eq!(member_path(Path::new("../etc/passwd")), None);
    }
}
