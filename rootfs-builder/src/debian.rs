//! The base of an `init: systemd` guest: a Debian system installed by
//! mmdebstrap (`--variant=essential` plus the recipe's `packages.install`),
//! maintainer scripts included, from a local repository that holds exactly
//! the lock's verified `.deb`s. No mirror is asked: a package the lock
//! lacks fails the install, and `--offline` builds work from the cache.
//!
//! mmdebstrap is used (not our own unpacker, as for agent-as-init guests)
//! because a systemd userland needs what the maintainer scripts make:
//! users and groups, alternatives, ldconfig's cache, enabled units.
//!
//! What mmdebstrap copies from the build host, or names the temp repository
//! in, is removed afterwards so that the tree depends on the inputs only:
//! the host's hostname and resolv.conf, the sources.list, the `-old`
//! backups of dpkg and debconf, ldconfig's aux cache and the lock files.
//!
//! mmdebstrap writes a tarball, which is unpacked into the tree here: as
//! root with its owners and device nodes, without root (mmdebstrap's
//! unshare mode: a user namespace over the user's subuids, which needs
//! `newuidmap` and entries in /etc/subuid and /etc/subgid) into the
//! user's own files and the tree's rootless record. mmdebstrap makes the
//! same tarball in both modes, so both give the same tree.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use host_support::hash::{bytes_sha256, sha256_file};

use crate::recipe::{DeviceKind, Mode, PackagesSpec};
use crate::rootless::{Privileges, RecordedDevice};
use crate::tree::Creator;

/// What the build host leaves in a fresh mmdebstrap tree (relative paths).
const HOST_LEFTOVERS: &[&str] = &[
    "etc/hostname",
    "etc/resolv.conf",
    "etc/apt/sources.list",
    "etc/.pwd.lock",
    "var/cache/apt/archives/lock",
    "var/cache/debconf/config.dat-old",
    "var/cache/debconf/templates.dat-old",
    "var/cache/ldconfig/aux-cache",
    "var/lib/dpkg/lock",
    "var/lib/dpkg/lock-frontend",
    "var/lib/dpkg/status-old",
    "var/lib/dpkg/diversions-old",
    "etc/group-",
    "etc/gshadow-",
    "etc/passwd-",
    "etc/shadow-",
    "etc/subgid-",
    "etc/subuid-",
];

/// mmdebstrap's own hooks that merge /usr before the essential set.
const MERGED_USR_HOOKS: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// Installs the Debian system into `root` (an empty directory). `debs` is
/// the lock's closure, (name, verified .deb), every one of them offered to
/// apt; `install` is what is asked for on top of the essential set.
#[allow(clippy::too_many_arguments)]
pub(crate) fn install_system(
    spec: &PackagesSpec,
    suite: &str,
    architecture: &str,
    debs: &[(String, PathBuf)],
    root: &Path,
    source_date_epoch: i64,
    log: &Path,
    creator: &mut Creator,
) -> Result<()> {
    let parent = crate::util::parent_dir(root);
    let repo = tempfile::Builder::new()
        .prefix(".apt-repo.")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temp directory in {}", parent.display()))?;
    write_repository(repo.path(), suite, architecture, debs)?;
    let tarball = repo.path().join("system.tar");
    let mode = match creator.privileges {
        Privileges::Root => "--mode=root",
        Privileges::Rootless => "--mode=unshare",
    };
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(mode)
        .arg("--format=tar")
        .arg("--variant=essential")
        .arg(format!("--architectures={architecture}"))
        .arg(format!("--include={}", spec.install.join(",")))
        // The repository is a local, unsigned one made just now from
        // verified files; apt is told to trust it.
        .arg("--skip=check/signed-by")
        // A merged /usr, as Debian bookworm has it (debootstrap's way; the
        // hook ships with mmdebstrap).
        .arg(format!("--hook-dir={MERGED_USR_HOOKS}"))
        .arg("--aptopt=Acquire::Languages \"none\"");
    for e in &spec.exclude {
        cmd.arg(format!("--dpkgopt=path-exclude={e}"))
            .arg(format!("--dpkgopt=path-exclude={e}/*"));
    }
    cmd.arg(suite)
        .arg(&tarball)
        .arg(format!(
            "deb [trusted=yes] copy://{} ./",
            repo.path().display()
        ))
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env_remove("TMPDIR");
    let out = cmd.output().context(
        "run mmdebstrap (apt-get install mmdebstrap, or `cargo xtask doctor --install`)",
    )?;
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    std::fs::write(log, &text).with_context(|| format!("write {}", log.display()))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&text);
        let hint = match creator.privileges {
            Privileges::Root => "",
            Privileges::Rootless => "; without root, mmdebstrap's unshare mode needs newuidmap (apt-get install uidmap) and this user's ranges in /etc/subuid and /etc/subgid",
        };
        bail!(
            "mmdebstrap {mode} failed ({}) installing {} (full log {}){hint}:\n{}",
            out.status,
            spec.install.join(", "),
            log.display(),
            host_support::log::tail_text(&text, 12)
        );
    }
    unpack_system(&tarball, root, creator)
        .with_context(|| format!("unpacking mmdebstrap's {}", tarball.display()))?;
    for rel in HOST_LEFTOVERS {
        let p = root.join(rel);
        match std::fs::remove_file(&p) {
            Ok(()) => creator.forget(rel),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
    // Empty, as upstream images ship it: systemd makes a transient id at
    // every boot instead of all guests sharing one.
    std::fs::write(root.join("etc/machine-id"), b"")?;
    Ok(())
}

/// Unpacks mmdebstrap's tarball into `root` (an empty directory) through
/// `creator`: owners and device nodes made or recorded, set-id modes put
/// back after chown, extended attributes (systemd's POSIX ACLs on
/// /var/log/journal) set last, after the mode they would otherwise be
/// changed by. mke2fs copies them into the image.
fn unpack_system(tarball: &Path, root: &Path, creator: &mut Creator) -> Result<()> {
    let file = std::fs::File::open(tarball)?;
    let mut archive = ::tar::Archive::new(std::io::BufReader::new(file));
    let mut directory_xattrs = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = member(&raw)?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let key = ext.key().unwrap_or("(not UTF-8)");
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), ext.value_bytes().to_vec()));
                } else if key.starts_with("LIBARCHIVE.xattr.") || key.starts_with("SCHILY.acl.") {
                    bail!("/{rel}: {key} in the tarball; only GNU tar's SCHILY.xattr records are read");
                }
            }
        }
        let header = entry.header();
        let mode = Mode(header.mode()? & 0o7777);
        let owner = (header.uid()? as u32, header.gid()? as u32);
        let kind = header.entry_type();
        // Never through a symlink: an entry below a link (say `lib` ->
        // /etc) would be written outside the tree.
        crate::util::within_tree(root, &rel)?;
        let host = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        match kind {
            ::tar::EntryType::Directory => {
                if !rel.is_empty() {
                    std::fs::create_dir(&host).with_context(|| format!("/{rel}: cannot create"))?;
                }
                creator.own_as(&host, &rel, owner)?;
                creator.directory_mode(&host, &rel, mode)?;
            }
            ::tar::EntryType::Regular | ::tar::EntryType::Continuous => {
                // create_new: never through a link already at that path.
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&host)
                    .with_context(|| format!("/{rel}: cannot create"))?;
                std::io::copy(&mut entry, &mut out)?;
                creator.own_as(&host, &rel, owner)?;
                creator.mode(&host, &rel, mode)?;
            }
            ::tar::EntryType::Symlink => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("/{rel}: a symlink without a target"))?;
                std::os::unix::fs::symlink(&target, &host)?;
                creator.own_as(&host, &rel, owner)?;
            }
            ::tar::EntryType::Link => {
                let target = entry
                    .link_name()?
                    .with_context(|| format!("/{rel}: a hard link without a target"))?;
                let target = member(&target)?;
                crate::util::within_tree(root, &target)?;
                std::fs::hard_link(root.join(&target), &host)
                    .with_context(|| format!("/{rel}: cannot link to /{target}"))?;
                // Same inode, so the same owner and mode: recorded for
                // this path too, never chowned again (that would clear
                // set-id bits).
                creator.same_inode(&rel, &target)?;
            }
            ::tar::EntryType::Char | ::tar::EntryType::Block => {
                let device = RecordedDevice {
                    kind: if kind == ::tar::EntryType::Char {
                        DeviceKind::Char
                    } else {
                        DeviceKind::Block
                    },
                    major: header.device_major()?.context("a device without a major")?,
                    minor: header.device_minor()?.context("a device without a minor")?,
                };
                creator.device(&host, &rel, device)?;
                creator.own_as(&host, &rel, owner)?;
                creator.mode(&host, &rel, mode)?;
            }
            ::tar::EntryType::Fifo => {
                nix::unistd::mkfifo(&host, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
                creator.own_as(&host, &rel, owner)?;
                creator.mode(&host, &rel, mode)?;
            }
            other => bail!("/{rel}: a {other:?} entry, which a rootfs cannot hold"),
        }
        if xattrs.is_empty() {
            continue;
        }
        if kind == ::tar::EntryType::Symlink {
            bail!("/{rel}: a symlink with extended attributes");
        }
        // An access ACL rewrites the owner's mode bits: the read (and
        // directory write and search) a rootless build adds would be lost.
        let needs = if kind == ::tar::EntryType::Directory {
            0o700
        } else {
            0o400
        };
        if creator.privileges == Privileges::Rootless
            && mode.0 & needs != needs
            && xattrs.iter().any(|(n, _)| n == "system.posix_acl_access")
        {
            bail!(
                "/{rel}: a POSIX ACL on mode {:04o}, which a build without root cannot keep readable; build as root",
                mode.0
            );
        }
        // A directory's default ACL would be inherited by the entries
        // unpacked below it: directories get theirs at the end.
        if kind == ::tar::EntryType::Directory {
            directory_xattrs.push((host, rel, xattrs));
        } else {
            set_xattrs(&host, &rel, &xattrs, creator.privileges)?;
        }
    }
    for (host, rel, xattrs) in &directory_xattrs {
        set_xattrs(host, rel, xattrs, creator.privileges)?;
    }
    Ok(())
}

fn set_xattrs(
    host: &Path,
    rel: &str,
    xattrs: &[(String, Vec<u8>)],
    privileges: Privileges,
) -> Result<()> {
    for (name, value) in xattrs {
        set_xattr(host, name, value).with_context(|| {
            let hint = match privileges {
                Privileges::Rootless => " (without root only user.* and POSIX ACLs can be set)",
                Privileges::Root => "",
            };
            format!("/{rel}: cannot set the extended attribute {name}{hint}")
        })?;
    }
    Ok(())
}

fn set_xattr(host: &Path, name: &str, value: &[u8]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(host.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated CStrings and `value` is a
    // live slice of the given length; the call only reads them.
    let rc = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// A tarball member's path relative to the tree root (`""` for `./`),
/// refusing anything that would leave it.
fn member(raw: &Path) -> Result<String> {
    use std::path::Component;
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(p) => parts.push(
                p.to_str()
                    .with_context(|| format!("{}: not a UTF-8 name", raw.display()))?,
            ),
            _ => bail!("{}: leaves the tree", raw.display()),
        }
    }
    Ok(parts.join("/"))
}

/// A flat apt repository in `dir`: the `.deb`s, their `Packages` index
/// (each package's control fields plus Filename, Size and SHA256) and a
/// `Release` naming the suite, which mmdebstrap needs to find the
/// essential set.
fn write_repository(
    dir: &Path,
    suite: &str,
    architecture: &str,
    debs: &[(String, PathBuf)],
) -> Result<()> {
    let mut index = Vec::new();
    for (name, deb) in debs {
        let file = format!("{name}.deb");
        let dest = dir.join(&file);
        if std::fs::hard_link(deb, &dest).is_err() {
            std::fs::copy(deb, &dest)
                .with_context(|| format!("copy {} into {}", deb.display(), dir.display()))?;
        }
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .output()
            .context("run dpkg-deb (apt-get install dpkg)")?;
        if !out.status.success() {
            bail!(
                "package {name}: dpkg-deb --field {}: {}",
                deb.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let control = String::from_utf8(out.stdout)
            .with_context(|| format!("package {name}: control fields are not UTF-8"))?;
        let package = control
            .lines()
            .find_map(|l| l.strip_prefix("Package:"))
            .map(str::trim);
        if package != Some(name.as_str()) {
            bail!(
                "{}: is package {package:?}, but the lock names it {name}",
                deb.display()
            );
        }
        let size = std::fs::metadata(deb)?.len();
        index.extend_from_slice(control.trim_end().as_bytes());
        write!(
            index,
            "\nFilename: ./{file}\nSize: {size}\nSHA256: {}\n\n",
            sha256_file(deb)?
        )?;
    }
    std::fs::write(dir.join("Packages"), &index)?;
    let release = format!(
        "Origin: kata-image-recipe\nSuite: {suite}\nCodename: {suite}\nArchitectures: {architecture}\nSHA256:\n {} {} Packages\n",
        bytes_sha256(&index),
        index.len()
    );
    std::fs::write(dir.join("Release"), release)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-file package made with dpkg-deb.
    fn deb(dir: &Path, name: &str) -> PathBuf {
        let pkg = dir.join(name);
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            format!("Package: {name}\nVersion: 1.0\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: test\n two lines\n"),
        )
        .unwrap();
        let out = dir.join(format!("{name}_1.0_amd64.deb"));
        crate::util::run_ok(
            Command::new("dpkg-deb")
                .args(["--root-owner-group", "-Zgzip", "--build"])
                .arg(&pkg)
                .arg(&out),
        );
        out
    }

    /// One tarball member as mmdebstrap's tar writes them (uid 0, mtime 1);
    /// `link` is a symlink's or hard link's target, a device is 1:3.
    fn append(
        b: &mut ::tar::Builder<std::fs::File>,
        (name, kind, mode, gid): (&str, ::tar::EntryType, u32, u64),
        link: Option<&Path>,
        data: &[u8],
    ) {
        let mut h = ::tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(gid);
        h.set_mtime(1);
        h.set_size(data.len() as u64);
        if let Some(link) = link {
            h.set_link_name(link).unwrap();
        }
        if kind == ::tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    }

    /// A tarball as mmdebstrap writes one: `./`, a set-gid directory and
    /// file of group 8, a file nobody may read (as /etc/shadow), a symlink,
    /// hard links, a device and a fifo.
    fn system_tarball(path: &Path) {
        use ::tar::EntryType as T;
        let mut b = ::tar::Builder::new(std::fs::File::create(path).unwrap());
        let to = |p: &'static str| Some(Path::new(p));
        for (member, link, data) in [
            (("./", T::Directory, 0o755, 0), None, &b""[..]),
            (("./dev/", T::Directory, 0o755, 0), None, b""),
            (("./etc/", T::Directory, 0o755, 0), None, b""),
            (
                ("./etc/shadow", T::Regular, 0o000, 42),
                None,
                b"root:*:1::::::\n",
            ),
            (
                ("./etc/shadow-link", T::Link, 0o000, 42),
                to("./etc/shadow"),
                b"",
            ),
            (("./dev/null", T::Char, 0o666, 0), None, b""),
            (("./run/", T::Directory, 0o755, 0), None, b""),
            (("./run/initctl", T::Fifo, 0o600, 0), None, b""),
            (("./sbin/", T::Directory, 0o755, 0), None, b""),
            (("./sbin/tool", T::Regular, 0o2755, 8), None, b"#!/bin/sh\n"),
            (
                ("./sbin/tool-again", T::Link, 0o2755, 8),
                to("./sbin/tool"),
                b"",
            ),
            (("./bin/", T::Directory, 0o555, 0), None, b""),
            (
                ("./bin/tool", T::Symlink, 0o777, 0),
                to("../sbin/tool"),
                b"",
            ),
            (("./var/", T::Directory, 0o755, 0), None, b""),
            (("./var/mail/", T::Directory, 0o2775, 8), None, b""),
        ] {
            append(&mut b, member, link, data);
        }
        b.finish().unwrap();
    }

    /// `tarball` unpacked into a fresh tree: (its temp dir, the tree, the
    /// outcome, the creator that made it).
    fn unpacked(
        tarball: impl Fn(&Path),
        privileges: Privileges,
    ) -> (tempfile::TempDir, PathBuf, Result<()>, Creator) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("system.tar");
        tarball(&file);
        let root = dir.path().join("rootfs");
        std::fs::create_dir(&root).unwrap();
        let mut creator = Creator::new(privileges);
        let outcome = unpack_system(&file, &root, &mut creator);
        (dir, root, outcome, creator)
    }

    #[test]
    fn a_system_unpacks_without_root_into_files_and_a_record() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let (_dir, root, outcome, creator) = unpacked(system_tarball, Privileges::Rootless);
        outcome.unwrap();
        let record = creator.finish().unwrap().unwrap();
        let mode = |rel: &str| {
            std::fs::symlink_metadata(root.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("sbin/tool"), 0o2755);
        assert_eq!(mode("var/mail"), 0o2775);
        assert_eq!(
            mode("bin"),
            0o555,
            "a read-only directory gets its mode last"
        );
        assert_eq!(mode("etc/shadow"), 0o400, "the owner can read it on disk");
        assert_eq!(record.modes.get("etc/shadow"), Some(&0));
        assert_eq!(
            record.modes.get("etc/shadow-link"),
            Some(&0),
            "a link's mode is its target's"
        );
        assert_eq!(record.modes.len(), 2);
        assert_eq!(
            std::fs::read_link(root.join("bin/tool")).unwrap(),
            Path::new("../sbin/tool")
        );
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(
            null.is_file() && null.len() == 0,
            "a placeholder, not a node"
        );
        assert!(std::fs::symlink_metadata(root.join("run/initctl"))
            .unwrap()
            .file_type()
            .is_fifo());
        let owners: Vec<(&str, (u32, u32))> = record
            .owners
            .iter()
            .map(|(p, o)| (p.as_str(), *o))
            .collect();
        assert_eq!(
            owners,
            [
                ("etc/shadow", (0, 42)),
                ("etc/shadow-link", (0, 42)),
                ("sbin/tool", (0, 8)),
                ("sbin/tool-again", (0, 8)),
                ("var/mail", (0, 8))
            ]
        );
        let null = record.devices["dev/null"];
        assert_eq!(
            (null.kind, null.major, null.minor),
            (DeviceKind::Char, 1, 3)
        );
        assert_eq!(record.devices.len(), 1);
    }

    #[test]
    #[ignore = "needs root (chown, mknod): run by cargo xtask test unit"]
    fn a_system_unpacks_as_root_with_owners_and_devices() {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let (_dir, root, outcome, creator) = unpacked(system_tarball, Privileges::Root);
        outcome.unwrap();
        assert!(creator.finish().unwrap().is_none());
        let tool = std::fs::metadata(root.join("sbin/tool")).unwrap();
        assert_eq!(
            (tool.uid(), tool.gid(), tool.mode() & 0o7777),
            (0, 8, 0o2755)
        );
        let again = std::fs::metadata(root.join("sbin/tool-again")).unwrap();
        assert_eq!(
            (again.ino(), again.mode() & 0o7777),
            (tool.ino(), 0o2755),
            "set-gid kept"
        );
        let null = std::fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    }

    #[test]
    fn nothing_is_written_through_a_symlink_in_the_tarball() {
        let outside = tempfile::tempdir().unwrap();
        let evil = |path: &Path| {
            let mut b = ::tar::Builder::new(std::fs::File::create(path).unwrap());
            let link = ("./lib", ::tar::EntryType::Symlink, 0o777, 0);
            append(&mut b, link, Some(outside.path()), b"");
            let planted = ("./lib/planted", ::tar::EntryType::Regular, 0o644, 0);
            append(&mut b, planted, None, b"evil");
            b.finish().unwrap();
        };
        let (_dir, _root, outcome, _) = unpacked(evil, Privileges::Rootless);
        let err = format!("{:#}", outcome.unwrap_err());
        assert!(
            err.contains("/lib/planted: /lib above it is not a directory"),
            "{err}"
        );
        assert!(!outside.path().join("planted").exists());
    }

    #[test]
    fn a_member_that_leaves_the_tree_is_refused() {
        assert_eq!(member(Path::new("./a/b")).unwrap(), "a/b");
        assert_eq!(member(Path::new("./")).unwrap(), "");
        let err = member(Path::new("./a/../../etc")).unwrap_err().to_string();
        assert!(err.contains("leaves the tree"), "{err}");
    }

    #[test]
    fn the_repository_indexes_exactly_the_locked_debs() {
        let work = tempfile::tempdir().unwrap();
        let a = deb(work.path(), "pkg-a");
        let b = deb(work.path(), "pkg-b");
        let repo = work.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        write_repository(
            &repo,
            "bookworm",
            "amd64",
            &[("pkg-a".into(), a.clone()), ("pkg-b".into(), b)],
        )
        .unwrap();
        let index = std::fs::read_to_string(repo.join("Packages")).unwrap();
        let stanzas: Vec<&str> = index.split("\n\n").filter(|s| !s.is_empty()).collect();
        assert_eq!(stanzas.len(), 2, "{index}");
        assert!(stanzas[0].starts_with("Package: pkg-a\n"), "{index}");
        assert!(
            stanzas[0].contains("\n two lines\nFilename: ./pkg-a.deb\n"),
            "{index}"
        );
        let sha = sha256_file(&a).unwrap();
        assert!(stanzas[0].contains(&format!("SHA256: {sha}")), "{index}");
        let release = std::fs::read_to_string(repo.join("Release")).unwrap();
        assert!(release.contains("Codename: bookworm\n"), "{release}");
        assert!(
            release.contains(&format!(" {} Packages", index.len())),
            "{release}"
        );
        // A .deb that is not the package the lock names is refused.
        let repo2 = work.path().join("repo2");
        std::fs::create_dir(&repo2).unwrap();
        let err = write_repository(&repo2, "bookworm", "amd64", &[("pkg-b".into(), a)])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is package Some(\"pkg-a\"), but the lock names it pkg-b"),
            "{err}"
        );
    }
}
