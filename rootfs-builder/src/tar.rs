//! A deterministic GNU tar stream of a directory tree. The rootfs artifact is a
//! directory, so its manifest digest is the sha256 of this stream; the release
//! reuses the same stream for the rootfs tarball.
//!
//! Determinism: entries sorted by path bytes, owner 0:0 named root/root,
//! mtime as on disk (the builder has pinned it), no atime/ctime, hard links
//! stored once and referenced afterwards, names longer than 100 bytes through
//! GNU `././@LongLink` records.

use crate::walk::{list_tree, EntryKind, TreeEntry};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

const BLOCK: usize = 512;
/// GNU tar pads archives to a whole 20-block record.
const RECORD: u64 = 20 * BLOCK as u64;

/// Writes the tree at `dir` as a tar stream to `out`.
pub fn write_tree_tar<W: Write>(dir: &Path, out: W) -> Result<()> {
    let entries = list_tree(dir)?;
    let mut w = CountingWriter {
        inner: out,
        count: 0,
    };
    for entry in &entries {
        write_entry(&mut w, entry, &entries)
            .with_context(|| format!("{}: cannot archive", entry.host_path.display()))?;
    }
    w.write_all(&[0u8; 2 * BLOCK])?;
    let pad = (RECORD - w.count % RECORD) % RECORD;
    w.write_all(&vec![0u8; pad as usize])?;
    w.inner.flush()?;
    Ok(())
}

/// sha256 (lowercase hex) of [`write_tree_tar`]'s stream for `dir`.
pub fn tree_digest(dir: &Path) -> Result<String> {
    let mut hasher = HashWriter(Sha256::new());
    write_tree_tar(dir, &mut hasher)?;
    Ok(hex::encode(hasher.0.finalize()))
}

struct HashWriter(Sha256);
impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}
impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn archive_name(entry: &TreeEntry) -> Vec<u8> {
    let mut name = b"./".to_vec();
    name.extend_from_slice(&entry.rel);
    if entry.kind == EntryKind::Directory && !entry.rel.is_empty() {
        name.push(b'/');
    }
    name
}

fn write_entry<W: Write>(
    w: &mut CountingWriter<W>,
    entry: &TreeEntry,
    all: &[TreeEntry],
) -> Result<()> {
    let name = archive_name(entry);
    let mut typeflag = match entry.kind {
        EntryKind::Regular => b'0',
        EntryKind::Symlink(_) => b'2',
        EntryKind::CharDevice { .. } => b'3',
        EntryKind::BlockDevice { .. } => b'4',
        EntryKind::Directory => b'5',
        EntryKind::Fifo => b'6',
    };
    let mut link: Vec<u8> = match &entry.kind {
        EntryKind::Symlink(t) => t.clone(),
        _ => Vec::new(),
    };
    let mut size = entry.size;
    if let Some((first, _)) = entry.link_group {
        if !std::ptr::eq(&all[first], entry) {
            typeflag = b'1';
            link = archive_name(&all[first]);
            size = 0;
        }
    }
    let (major, minor) = match entry.kind {
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            (major, minor)
        }
        _ => (0, 0),
    };
    if entry.mtime < 0 {
        bail!("mtime {} is before 1970; tar cannot store it", entry.mtime);
    }
    if link.len() > 100 {
        write_long_record(w, b'K', &link)?;
    }
    if name.len() > 100 {
        write_long_record(w, b'L', &name)?;
    }
    let header = Header {
        name: &name,
        mode: entry.perm,
        size,
        mtime: entry.mtime as u64,
        typeflag,
        linkname: &link,
        devmajor: major,
        devminor: minor,
    }
    .encode()?;
    w.write_all(&header)?;
    if typeflag == b'0' {
        let mut f = std::fs::File::open(&entry.host_path)?;
        let copied = std::io::copy(&mut (&mut f).take(size), w)?;
        if copied != size {
            bail!("file shrank while archiving ({copied} of {size} bytes)");
        }
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        w.write_all(&vec![0u8; pad as usize])?;
    }
    Ok(())
}

use std::io::Read;

fn write_long_record<W: Write>(w: &mut W, typeflag: u8, long: &[u8]) -> Result<()> {
    let mut data = long.to_vec();
    data.push(0);
    let header = Header {
        name: b"././@LongLink",
        mode: 0,
        size: data.len() as u64,
        mtime: 0,
        typeflag,
        linkname: b"",
        devmajor: 0,
        devminor: 0,
    }
    .encode()?;
    w.write_all(&header)?;
    let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
    data.resize(data.len() + pad, 0);
    w.write_all(&data)?;
    Ok(())
}

struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    linkname: &'a [u8],
    devmajor: u32,
    devminor: u32,
}

impl Header<'_> {
    fn encode(&self) -> Result<[u8; BLOCK]> {
        let mut h = [0u8; BLOCK];
        // Over-long names are carried by the preceding LongLink record; the
        // header keeps the first 100 bytes as GNU tar does.
        let n = self.name.len().min(100);
        h[0..n].copy_from_slice(&self.name[..n]);
        octal(&mut h[100..108], self.mode as u64)?;
        octal(&mut h[108..116], 0)?;
        octal(&mut h[116..124], 0)?;
        octal(&mut h[124..136], self.size)?;
        octal(&mut h[136..148], self.mtime)?;
        h[156] = self.typeflag;
        let l = self.linkname.len().min(100);
        h[157..157 + l].copy_from_slice(&self.linkname[..l]);
        h[257..263].copy_from_slice(b"ustar ");
        h[263..265].copy_from_slice(b" \0");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        if matches!(self.typeflag, b'3' | b'4') {
            octal(&mut h[329..337], self.devmajor as u64)?;
            octal(&mut h[337..345], self.devminor as u64)?;
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let chk = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(chk.as_bytes());
        Ok(h)
    }
}

/// Zero-padded octal filling the field but its last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("value {value} does not fit a {digits}-digit tar field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
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
        let out = Command::new("tar")
            .env("TZ", "UTC")
            .args(["--numeric-owner", "-tvf"])
            .arg(&tar_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
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
}
