//! A deterministic GNU tar stream of a directory tree. The rootfs artifact is a
//! directory, so its manifest digest is the sha256 of this stream; the release
//! reuses the same stream for the rootfs tarball.
//!
//! Determinism: entries sorted by path bytes, owner 0:0 named root/root,
//! mtime as on disk (the builder has pinned it), no atime/ctime, hard links
//! stored once and referenced afterwards, names longer than 100 bytes through
//! GNU `././@LongLink` records: the stream is host-support's GNU tar writer.

use crate::walk::{list_tree, EntryKind, TreeEntry};
use anyhow::{bail, Context, Result};
use host_support::hash::Sha256Writer;
use host_support::tar::{Kind, Writer};
use std::io::Write;
use std::path::Path;

#[cfg(test)]
use host_support::tar::RECORD;

/// Writes the tree at `dir` as a tar stream to `out`.
pub fn write_tree_tar<W: Write>(dir: &Path, out: W) -> Result<()> {
    write_tar(dir, out, Times::AsOnDisk)
}

/// Which mtimes the stream carries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Times {
    AsOnDisk,
    Zero,
}

fn write_tar<W: Write>(dir: &Path, out: W, times: Times) -> Result<()> {
    let mut entries = list_tree(dir)?;
    if times == Times::Zero {
        entries.iter_mut().for_each(|e| e.mtime = 0);
    }
    let mut w = Writer::new(out);
    for entry in &entries {
        write_entry(&mut w, entry, &entries)
            .with_context(|| format!("{}: cannot archive", entry.host_path.display()))?;
    }
    w.finish()?;
    Ok(())
}

/// sha256 (lowercase hex) of [`write_tree_tar`]'s stream for `dir`.
pub fn tree_digest(dir: &Path) -> Result<String> {
    let mut hasher = Sha256Writer::default();
    write_tree_tar(dir, &mut hasher)?;
    Ok(hasher.hex())
}

/// [`tree_digest`] with every mtime taken as 0: names, kinds, modes and
/// contents only. For an input tree whose times record when it was made
/// (a kernel's installed modules), not what it is.
pub fn content_digest(dir: &Path) -> Result<String> {
    let mut hasher = Sha256Writer::default();
    write_tar(dir, &mut hasher, Times::Zero)?;
    Ok(hasher.hex())
}

fn archive_name(entry: &TreeEntry) -> Vec<u8> {
    let mut name = b"./".to_vec();
    name.extend_from_slice(&entry.rel);
    name
}

fn write_entry<W: Write>(w: &mut Writer<W>, entry: &TreeEntry, all: &[TreeEntry]) -> Result<()> {
    if entry.mtime < 0 {
        bail!("mtime {} is before 1970; tar cannot store it", entry.mtime);
    }
    let first_link = match entry.link_group {
        Some((first, _)) if !std::ptr::eq(&all[first], entry) => Some(archive_name(&all[first])),
        _ => None,
    };
    let kind = match (&first_link, &entry.kind) {
        (Some(target), _) => Kind::HardLink { target },
        (None, EntryKind::Regular) => Kind::File {
            size: entry.size,
            data: Box::new(std::fs::File::open(&entry.host_path)?),
        },
        (None, EntryKind::Symlink(t)) => Kind::Symlink { target: t },
        (None, EntryKind::CharDevice { major, minor }) => Kind::CharDevice {
            major: *major,
            minor: *minor,
        },
        (None, EntryKind::BlockDevice { major, minor }) => Kind::BlockDevice {
            major: *major,
            minor: *minor,
        },
        (None, EntryKind::Directory) => Kind::Dir,
        (None, EntryKind::Fifo) => Kind::Fifo,
    };
    w.append(archive_name(entry), entry.perm, entry.mtime as u64, kind)
}

/// `tar --numeric-owner -tv` of a tar file, in UTC: what GNU tar makes
/// of our stream (tests check the writers with it).
#[cfg(test)]
pub(crate) fn gnu_tar_listing(tar_file: &Path) -> String {
    let out = crate::util::run_ok(
        std::process::Command::new("tar")
            .env("TZ", "UTC")
            .args(["--numeric-owner", "-tvf"])
            .arg(tar_file),
    );
    String::from_utf8(out.stdout).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::process::Command;

    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("etc/deep")).unwrap();
        std::fs::write(root.join("etc/hostname"), "kata\n").unwrap();
        std::fs::write(root.join("a-file"), vec![7u8; 1000]).unwrap();
        std::fs::hard_link(root.join("a-file"), root.join("etc/deep/link")).unwrap();
        symlink("/etc/hostname", root.join("sym")).unwrap();
        let long = "x".repeat(120);
        std::fs::write(root.join("etc").join(&long), "long").unwrap();
        symlink(format!("/etc/{long}"), root.join("longsym")).unwrap();
        nix::sys::stat::mknod(
            &root.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("null"), std::fs::Permissions::from_mode(0o666))
            .unwrap();
        crate::tree::pin_times(root, 1_700_000_000).unwrap();
    }

    #[test]
    #[ignore = "needs root (mknod of device nodes): run by cargo xtask test unit"]
    fn gnu_tar_reads_our_stream() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let tar_path = dir.path().join("t.tar");
        write_tree_tar(&root, std::fs::File::create(&tar_path).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&tar_path).unwrap().len() % RECORD, 0);
        let listing = gnu_tar_listing(&tar_path);
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().nth(5).unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{listing}");
        assert!(
            listing.contains("./etc/deep/link link to ./a-file"),
            "{listing}"
        );
        assert!(listing.contains("./sym -> /etc/hostname"), "{listing}");
        assert!(
            listing.contains(&format!("./etc/{}", "x".repeat(120))),
            "{listing}"
        );
        assert!(
            listing.lines().any(|l| l.starts_with("crw-rw-rw- 0/0")
                && l.contains("1,3")
                && l.ends_with("./null")),
            "{listing}"
        );
        assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");
        assert!(listing.contains("2023-11-14"), "{listing}");

        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xf")
            .arg(&tar_path)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(tree_digest(&x).unwrap(), tree_digest(&root).unwrap());
    }

    #[test]
    #[ignore = "needs root (mknod of device nodes): run by cargo xtask test unit"]
    fn digest_changes_with_content_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let d0 = tree_digest(&root).unwrap();
        assert_eq!(d0, tree_digest(&root).unwrap());
        std::fs::write(root.join("etc/hostname"), "kate\n").unwrap();
        crate::tree::pin_times(&root, 1_700_000_000).unwrap();
        let d1 = tree_digest(&root).unwrap();
        assert_ne!(d0, d1);
        crate::tree::pin_times(&root, 1_700_000_001).unwrap();
        let d2 = tree_digest(&root).unwrap();
        assert_ne!(d1, d2);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        crate::tree::pin_times(&root, 1_700_000_001).unwrap();
        assert_ne!(d2, tree_digest(&root).unwrap());
    }

    #[test]
    fn content_digest_ignores_times_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("modules");
        std::fs::create_dir_all(root.join("kernel")).unwrap();
        std::fs::write(root.join("kernel/dummy.ko"), b"one").unwrap();
        crate::tree::pin_times(&root, 1_700_000_000).unwrap();
        let c0 = content_digest(&root).unwrap();
        let t0 = tree_digest(&root).unwrap();
        crate::tree::pin_times(&root, 1_800_000_000).unwrap();
        assert_eq!(c0, content_digest(&root).unwrap());
        assert_ne!(t0, tree_digest(&root).unwrap());
        std::fs::write(root.join("kernel/dummy.ko"), b"two").unwrap();
        let c1 = content_digest(&root).unwrap();
        assert_ne!(c0, c1);
        std::fs::set_permissions(
            root.join("kernel/dummy.ko"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_ne!(c1, content_digest(&root).unwrap());
    }
}
