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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use host_support::hash::{bytes_sha256, sha256_file};

use crate::recipe::PackagesSpec;

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
pub fn install_system(
    spec: &PackagesSpec,
    suite: &str,
    architecture: &str,
    debs: &[(String, PathBuf)],
    root: &Path,
    source_date_epoch: i64,
    log: &Path,
) -> Result<()> {
    let parent = crate::util::parent_dir(root);
    let repo = tempfile::Builder::new()
        .prefix(".apt-repo.")
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a temp directory in {}", parent.display()))?;
    write_repository(repo.path(), suite, architecture, debs)?;
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--mode=root")
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
        .arg(root)
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
        bail!(
            "mmdebstrap failed ({}) installing {} into {} (full log {}):\n{}",
            out.status,
            spec.install.join(", "),
            root.display(),
            log.display(),
            host_support::log::tail_text(&text, 12)
        );
    }
    for rel in HOST_LEFTOVERS {
        let p = root.join(rel);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("remove {}", p.display())),
        }
    }
    // Empty, as upstream images ship it: systemd makes a transient id at
    // every boot instead of all guests sharing one.
    std::fs::write(root.join("etc/machine-id"), b"")?;
    Ok(())
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
        let st = Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(&pkg)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        out
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
