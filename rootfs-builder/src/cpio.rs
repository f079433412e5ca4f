//! initrd writer: a cpio "newc" (magic `070701`) archive of a rootfs tree,
//! compressed deterministically with gzip or zstd.
//!
//! Format facts (the kernel's `init/initramfs.c` and GNU cpio agree): a
//! 110-byte ASCII header of `070701` and 13 eight-digit hex fields, the NUL
//! terminated name padded so that header+name is a multiple of 4, the data
//! padded to 4, and a final `TRAILER!!!` entry. Hard links share an inode
//! number and nlink; by convention only the last member of a group carries the
//! data (the extractor links the earlier names to it).

use crate::walk::{list_tree, EntryKind, TreeEntry};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

pub const NEWC_MAGIC: &[u8; 6] = b"070701";
pub const TRAILER: &str = "TRAILER!!!";

/// Compression of the initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip level 9, header mtime 0 (the kernel's default decompressor).
    Gzip,
    /// zstd level 19, single-threaded, with a content checksum.
    Zstd,
}

impl Compression {
    pub const GZIP_LEVEL: u32 = 9;
    pub const ZSTD_LEVEL: i32 = 19;
}

/// One newc header's fields (names are in the header only by their size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NewcHeader {
    pub ino: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    /// Length of the name including its terminating NUL.
    pub namesize: u32,
    pub check: u32,
}

impl NewcHeader {
    pub const LEN: usize = 110;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut h = [0u8; Self::LEN];
        h[..6].copy_from_slice(NEWC_MAGIC);
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.devmajor,
            self.devminor,
            self.rdevmajor,
            self.rdevminor,
            self.namesize,
            self.check,
        ];
        for (i, v) in fields.iter().enumerate() {
            let start = 6 + i * 8;
            h[start..start + 8].copy_from_slice(format!("{v:08X}").as_bytes());
        }
        h
    }
}

/// Writes one entry: header, name (NUL, padded to 4), data (padded to 4).
pub fn write_newc_entry<W: Write>(
    w: &mut W,
    header: &NewcHeader,
    name: &[u8],
    data: &mut dyn Read,
) -> Result<u64> {
    if header.namesize as usize != name.len() + 1 {
        bail!(
            "cpio: namesize {} does not match name length {}",
            header.namesize,
            name.len()
        );
    }
    w.write_all(&header.encode())?;
    w.write_all(name)?;
    let head_len = NewcHeader::LEN + name.len() + 1;
    w.write_all(&[0u8; 4][..1 + pad4(head_len)])?;
    let copied = std::io::copy(&mut data.take(header.filesize as u64), w)?;
    if copied != header.filesize as u64 {
        bail!(
            "cpio: {} shrank while archiving ({copied} of {} bytes)",
            String::from_utf8_lossy(name),
            header.filesize
        );
    }
    w.write_all(&[0u8; 3][..pad4(header.filesize as usize)])?;
    Ok(
        (head_len + pad4(head_len) + header.filesize as usize + pad4(header.filesize as usize))
            as u64,
    )
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Writes the tree at `tree` as an uncompressed newc archive: entries sorted
/// by path, owner 0:0, every mtime = `source_date_epoch`, inode numbers 1..
/// in path order.
pub fn write_cpio<W: Write>(tree: &Path, mut out: W, source_date_epoch: i64) -> Result<()> {
    let mtime = u32::try_from(source_date_epoch).with_context(|| {
        format!("SOURCE_DATE_EPOCH {source_date_epoch} does not fit a newc mtime (0..=4294967295)")
    })?;
    let entries = list_tree(tree)?;
    // Inode numbers: one per distinct inode, in order of first appearance.
    let mut ino_of_first: BTreeMap<usize, u32> = BTreeMap::new();
    let mut last_of_group: BTreeMap<usize, usize> = BTreeMap::new();
    let mut next_ino = 1u32;
    let mut inos = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let first = e.link_group.map_or(i, |(f, _)| f);
        let ino = *ino_of_first.entry(first).or_insert_with(|| {
            next_ino += 1;
            next_ino - 1
        });
        inos.push(ino);
        if e.link_group.is_some() {
            last_of_group.insert(first, i);
        }
    }
    for (i, e) in entries.iter().enumerate() {
        write_tree_entry(&mut out, e, i, inos[i], mtime, &last_of_group)
            .with_context(|| format!("{}: cannot archive", e.host_path.display()))?;
    }
    let trailer = NewcHeader {
        nlink: 1,
        namesize: TRAILER.len() as u32 + 1,
        ..Default::default()
    };
    write_newc_entry(
        &mut out,
        &trailer,
        TRAILER.as_bytes(),
        &mut std::io::empty(),
    )?;
    out.flush()?;
    Ok(())
}

fn write_tree_entry<W: Write>(
    out: &mut W,
    e: &TreeEntry,
    index: usize,
    ino: u32,
    mtime: u32,
    last_of_group: &BTreeMap<usize, usize>,
) -> Result<()> {
    let name: Vec<u8> = if e.rel.is_empty() {
        b".".to_vec()
    } else {
        e.rel.clone()
    };
    let mut header = NewcHeader {
        ino,
        mode: e.mode_type_bits() | e.perm,
        nlink: 1,
        mtime,
        namesize: u32::try_from(name.len() + 1)?,
        ..Default::default()
    };
    let mut data: Box<dyn Read> = Box::new(std::io::empty());
    match &e.kind {
        EntryKind::Directory => header.nlink = e.dir_nlink,
        EntryKind::Regular => {
            let carries_data = match e.link_group {
                Some((first, count)) => {
                    header.nlink = count;
                    last_of_group[&first] == index
                }
                None => true,
            };
            if carries_data {
                header.filesize = u32::try_from(e.size)
                    .context("file larger than 4 GiB cannot go into a newc archive")?;
                data = Box::new(std::fs::File::open(&e.host_path)?);
            }
        }
        EntryKind::Symlink(target) => {
            header.filesize = u32::try_from(target.len())?;
            data = Box::new(std::io::Cursor::new(target.clone()));
        }
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            header.rdevmajor = *major;
            header.rdevminor = *minor;
            if let Some((_, count)) = e.link_group {
                header.nlink = count;
            }
        }
        EntryKind::Fifo => {}
    }
    write_newc_entry(out, &header, &name, &mut *data)?;
    Ok(())
}

/// Writes `out` as a compressed initrd of `tree` (temp file + rename). The
/// tree must contain `/init` (file or symlink): the kernel runs it.
pub fn write_initrd(
    tree: &Path,
    out: &Path,
    compression: Compression,
    source_date_epoch: i64,
) -> Result<()> {
    let init = tree.join("init");
    if std::fs::symlink_metadata(&init).is_err() {
        bail!("{}: no /init in the tree; the kernel starts /init from an initrd (build the rootfs with `init: agent`)", tree.display());
    }
    crate::util::write_atomically(out, |file| {
        let buffered = std::io::BufWriter::new(file);
        match compression {
            Compression::Gzip => {
                let mut gz = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(3) // Unix, fixed rather than "unknown" for clarity
                    .write(buffered, flate2::Compression::new(Compression::GZIP_LEVEL));
                write_cpio(tree, &mut gz, source_date_epoch)?;
                gz.finish()?
                    .into_inner()
                    .map_err(|e| e.into_error())?
                    .sync_all()?;
            }
            Compression::Zstd => {
                let mut z = zstd::Encoder::new(buffered, Compression::ZSTD_LEVEL)?;
                z.include_checksum(true)?;
                write_cpio(tree, &mut z, source_date_epoch)?;
                z.finish()?
                    .into_inner()
                    .map_err(|e| e.into_error())?
                    .sync_all()?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
    use std::process::{Command, Stdio};

    #[test]
    fn newc_header_bytes() {
        let h = NewcHeader {
            ino: 1,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            nlink: 1,
            mtime: 0x6553f100,
            filesize: 5,
            namesize: 13,
            rdevmajor: 0xabc,
            ..Default::default()
        };
        let bytes = h.encode();
        let expected = concat!(
            "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "6553F100",
            "00000005", "00000000", "00000000", "00000ABC", "00000000", "0000000D", "00000000"
        );
        assert_eq!(std::str::from_utf8(&bytes).unwrap(), expected);
        // Name padding: 110 + 13 = 123 -> 124; data 5 -> 8.
        let mut buf = Vec::new();
        let n = write_newc_entry(&mut buf, &h, b"etc/hostname", &mut &b"kata\n"[..]).unwrap();
        assert_eq!(n, 132);
        assert_eq!(buf.len(), 132);
        assert_eq!(&buf[110..123], b"etc/hostname\0");
        assert_eq!(buf[123], 0);
        assert_eq!(&buf[124..129], b"kata\n");
        assert_eq!(&buf[129..132], &[0, 0, 0]);
        let bad = NewcHeader { namesize: 3, ..h };
        assert!(write_newc_entry(
            &mut Vec::new(),
            &bad,
            b"etc/hostname",
            &mut std::io::empty()
        )
        .is_err());
    }

    fn sample_tree(root: &Path) {
        std::fs::create_dir_all(root.join("sbin")).unwrap();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("sbin/agent"), b"#!/bin/true\nagent body\n").unwrap();
        std::fs::set_permissions(
            root.join("sbin/agent"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::hard_link(root.join("sbin/agent"), root.join("sbin/agent2")).unwrap();
        std::fs::hard_link(root.join("sbin/agent"), root.join("agent3")).unwrap();
        symlink("/sbin/agent", root.join("init")).unwrap();
        std::fs::write(root.join("empty"), b"").unwrap();
        use nix::sys::stat::{makedev, mknod, Mode, SFlag};
        mknod(
            &root.join("dev/console"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(5, 1),
        )
        .unwrap();
        mknod(
            &root.join("dev/vda"),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o660),
            makedev(254, 0),
        )
        .unwrap();
        std::fs::set_permissions(root.join("dev/vda"), std::fs::Permissions::from_mode(0o660))
            .unwrap();
        crate::tree::pin_times(root, 1_000).unwrap();
    }

    #[test]
    #[ignore = "needs root (mknod of device nodes) and GNU cpio: run by cargo xtask test unit"]
    fn gnu_cpio_lists_and_extracts_our_archive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let mut archive = Vec::new();
        write_cpio(&root, &mut archive, 1_700_000_000).unwrap();

        let list = Command::new("cpio")
            .args(["-t", "-v", "--quiet", "--numeric-uid-gid"])
            .env("TZ", "UTC")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        list.stdin.as_ref().unwrap().write_all(&archive).unwrap();
        let out = list.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(names[0], ".", "{listing}");
        assert!(listing.contains("init -> /sbin/agent"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw-------")
                    && l.ends_with(" 5,   1 Nov 14  2023 dev/console")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("brw-rw----")
                    && l.ends_with(" 254,   0 Nov 14  2023 dev/vda")),
            "{listing}"
        );
        assert!(
            listing
                .lines()
                .all(|l| l.split_whitespace().nth(2) == Some("0")
                    && l.split_whitespace().nth(3) == Some("0")),
            "{listing}"
        );

        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let extract = Command::new("cpio")
            .args(["-i", "-d", "-m", "--quiet", "--no-absolute-filenames"])
            .current_dir(&x)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        extract.stdin.as_ref().unwrap().write_all(&archive).unwrap();
        let out = extract.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(x.join("sbin/agent")).unwrap(),
            b"#!/bin/true\nagent body\n"
        );
        let a = std::fs::metadata(x.join("sbin/agent")).unwrap();
        let b = std::fs::metadata(x.join("sbin/agent2")).unwrap();
        let c = std::fs::metadata(x.join("agent3")).unwrap();
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 3));
        assert_eq!(a.ino(), c.ino());
        assert_eq!(a.mode() & 0o7777, 0o755);
        assert_eq!(a.mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::read_link(x.join("init")).unwrap(),
            Path::new("/sbin/agent")
        );
        let con = std::fs::symlink_metadata(x.join("dev/console")).unwrap();
        assert_eq!((libc::major(con.rdev()), libc::minor(con.rdev())), (5, 1));
        let vda = std::fs::symlink_metadata(x.join("dev/vda")).unwrap();
        assert_eq!((libc::major(vda.rdev()), libc::minor(vda.rdev())), (254, 0));
        assert_eq!(std::fs::metadata(x.join("empty")).unwrap().len(), 0);
    }

    #[test]
    #[ignore = "needs root (mknod of device nodes): run by cargo xtask test unit"]
    fn archive_layout_is_sorted_with_sequential_inodes_and_data_on_last_link() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let mut archive = Vec::new();
        write_cpio(&root, &mut archive, 42).unwrap();
        // Walk the archive with an independent minimal parser.
        let mut pos = 0;
        let mut seen = Vec::new();
        loop {
            let h = &archive[pos..pos + 110];
            assert_eq!(&h[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (ino, nlink, mtime, size, namesize) =
                (field(0), field(4), field(5), field(6), field(11));
            let name = std::str::from_utf8(&archive[pos + 110..pos + 110 + namesize as usize - 1])
                .unwrap()
                .to_string();
            pos += 110 + namesize as usize;
            pos += (4 - pos % 4) % 4;
            pos += size as usize;
            pos += (4 - pos % 4) % 4;
            if name == TRAILER {
                break;
            }
            assert_eq!(mtime, 42);
            seen.push((name, ino, nlink, size));
        }
        assert_eq!(pos, archive.len());
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                ".",
                "agent3",
                "dev",
                "dev/console",
                "dev/vda",
                "empty",
                "init",
                "sbin",
                "sbin/agent",
                "sbin/agent2"
            ]
        );
        let inos: Vec<u32> = seen.iter().map(|s| s.1).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 6, 7, 8, 2, 2]);
        let links: Vec<(u32, u32)> = seen
            .iter()
            .filter(|s| s.1 == 2)
            .map(|s| (s.2, s.3))
            .collect();
        assert_eq!(links, [(3, 0), (3, 0), (3, 23)]);
        assert_eq!(seen[0].2, 4, "root nlink = 2 + two subdirectories");
    }

    #[test]
    #[ignore = "needs root (mknod of device nodes): run by cargo xtask test unit"]
    fn initrd_is_deterministic_and_decompresses() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        for (compression, tool) in [(Compression::Gzip, "gzip"), (Compression::Zstd, "zstd")] {
            let a = dir.path().join("a.img");
            let b = dir.path().join("b.img");
            write_initrd(&root, &a, compression, 7).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1100));
            write_initrd(&root, &b, compression, 7).unwrap();
            let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
            assert_eq!(a, b, "{tool}");
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            out.stdin.as_ref().unwrap().write_all(&a).unwrap();
            let out = out.wait_with_output().unwrap();
            assert!(out.status.success());
            let mut plain = Vec::new();
            write_cpio(&root, &mut plain, 7).unwrap();
            assert_eq!(out.stdout, plain, "{tool}");
        }
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err =
            write_initrd(&empty, &dir.path().join("c.img"), Compression::Gzip, 0).unwrap_err();
        assert!(err.to_string().contains("no /init in the tree"), "{err}");
        assert!(!dir.path().join("c.img").exists());
    }
}
