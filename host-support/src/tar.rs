//! The one GNU tar writer: headers fully controlled, output byte-identical
//! to GNU tar's (`tar --format=gnu --owner=root:0 --group=root:0`; a test
//! compares against the real thing).
//!
//! Why not the `tar` crate: it normalises `./opt/kata` to `opt/kata`, and
//! upstream's static tarball, every .deb and the rootfs stream list entries
//! as `./...`. What GNU tar does and this writer does too:
//! - owner 0:0 named root/root, the caller's mode and mtime, no atime/ctime;
//! - directory names end in `/`;
//! - names and link targets longer than 100 bytes are carried by a
//!   `././@LongLink` record before the header (`K` for the target first,
//!   then `L` for the name), whose own header has mode 0644, mtime 0 and
//!   owner root/root; the header keeps the first 100 bytes;
//! - device numbers only for character and block devices;
//! - the archive ends with two zero blocks and is padded with zeros to a
//!   whole record of 20 blocks (10240 bytes, GNU tar's default blocking).

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

const BLOCK: usize = 512;
/// GNU tar writes whole records of 20 blocks.
pub const RECORD: u64 = 20 * BLOCK as u64;

/// The type of one member.
pub enum Kind<'a> {
    Dir,
    /// A regular file: exactly `size` bytes are streamed from `data`.
    File {
        size: u64,
        data: Box<dyn Read + 'a>,
    },
    Symlink {
        target: &'a [u8],
    },
    /// A hard link to a member stored earlier (its archive name).
    HardLink {
        target: &'a [u8],
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// Writes tar members, then the end of the archive with [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self { out, written: 0 }
    }

    /// Appends one member named `name` (a `/` is added to directory names
    /// that lack it), with permission bits `mode` and modification time
    /// `mtime` (seconds since the epoch).
    pub fn append(
        &mut self,
        name: impl AsRef<[u8]>,
        mode: u32,
        mtime: u64,
        kind: Kind<'_>,
    ) -> Result<()> {
        let mut name = name.as_ref().to_vec();
        if matches!(kind, Kind::Dir) && !name.ends_with(b"/") {
            name.push(b'/');
        }
        let shown = String::from_utf8_lossy(&name).into_owned();
        let (typeflag, size, link, dev): (u8, u64, &[u8], Option<(u32, u32)>) = match &kind {
            Kind::File { size, .. } => (b'0', *size, b"", None),
            Kind::HardLink { target } => (b'1', 0, target, None),
            Kind::Symlink { target } => (b'2', 0, target, None),
            Kind::CharDevice { major, minor } => (b'3', 0, b"", Some((*major, *minor))),
            Kind::BlockDevice { major, minor } => (b'4', 0, b"", Some((*major, *minor))),
            Kind::Dir => (b'5', 0, b"", None),
            Kind::Fifo => (b'6', 0, b"", None),
        };
        if link.len() > 100 {
            self.long_record(b'K', link)?;
        }
        if name.len() > 100 {
            self.long_record(b'L', &name)?;
        }
        let header = Header {
            name: &name,
            mode,
            size,
            mtime,
            typeflag,
            link,
            dev,
        }
        .encode()
        .with_context(|| format!("{shown}: cannot archive"))?;
        self.put(&header)?;
        if let Kind::File { size, data } = kind {
            let copied = io::copy(&mut data.take(size), &mut self.out)
                .with_context(|| format!("{shown}: cannot copy file into tar"))?;
            self.written += copied;
            if copied != size {
                bail!("{shown}: file shrank while archiving ({copied} of {size} bytes)");
            }
            self.pad_block()?;
        }
        Ok(())
    }

    /// Ends the archive (two zero blocks, then zeros to a whole record),
    /// flushes and returns the writer.
    pub fn finish(mut self) -> Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        let pad = (RECORD - self.written % RECORD) % RECORD;
        self.put(&vec![0u8; pad as usize])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn long_record(&mut self, typeflag: u8, value: &[u8]) -> Result<()> {
        let mut data = value.to_vec();
        data.push(0);
        let header = Header {
            name: b"././@LongLink",
            mode: 0o644,
            size: data.len() as u64,
            mtime: 0,
            typeflag,
            link: b"",
            dev: None,
        }
        .encode()?;
        self.put(&header)?;
        self.put(&data)?;
        self.pad_block()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad_block(&mut self) -> Result<()> {
        let rem = (self.written % BLOCK as u64) as usize;
        if rem != 0 {
            self.put(&vec![0u8; BLOCK - rem])?;
        }
        Ok(())
    }
}

struct Header<'a> {
    name: &'a [u8],
    mode: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &'a [u8],
    dev: Option<(u32, u32)>,
}

impl Header<'_> {
    fn encode(&self) -> Result<[u8; BLOCK]> {
        let mut h = [0u8; BLOCK];
        put_truncated(&mut h[0..100], self.name);
        octal(&mut h[100..108], u64::from(self.mode))?;
        octal(&mut h[108..116], 0)?;
        octal(&mut h[116..124], 0)?;
        octal(&mut h[124..136], self.size)?;
        octal(&mut h[136..148], self.mtime)?;
        h[156] = self.typeflag;
        put_truncated(&mut h[157..257], self.link);
        // GNU magic and version: "ustar  \0".
        h[257..265].copy_from_slice(b"ustar  \0");
        put_truncated(&mut h[265..297], b"root");
        put_truncated(&mut h[297..329], b"root");
        if let Some((major, minor)) = self.dev {
            octal(&mut h[329..337], u64::from(major))?;
            octal(&mut h[337..345], u64::from(minor))?;
        }
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        Ok(h)
    }
}

fn put_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Zero-padded octal filling the field but its last byte, which stays NUL.
fn octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("value {value} does not fit a {digits}-digit tar header field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const MTIME: u64 = 1_700_000_000;

    fn long(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    /// The same members as [`sample_tree`], through our writer.
    fn ours() -> Vec<u8> {
        let mut w = Writer::new(Vec::new());
        let dir = format!("./{}", long('d', 60));
        let file = format!("{dir}/{}", long('f', 60));
        let target = format!("/{}", long('t', 110));
        w.append("./", 0o755, MTIME, Kind::Dir).unwrap();
        w.append(&dir, 0o700, MTIME, Kind::Dir).unwrap();
        let data = b"hello\n";
        w.append(
            &file,
            0o644,
            MTIME,
            Kind::File {
                size: data.len() as u64,
                data: Box::new(&data[..]),
            },
        )
        .unwrap();
        w.append(
            "./hard",
            0o644,
            MTIME,
            Kind::HardLink {
                target: file.as_bytes(),
            },
        )
        .unwrap();
        w.append(
            "./sym",
            0o777,
            MTIME,
            Kind::Symlink {
                target: target.as_bytes(),
            },
        )
        .unwrap();
        w.finish().unwrap()
    }

    fn sample_tree(root: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join(long('d', 60));
        let file = dir.join(long('f', 60));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, b"hello\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&file, root.join("hard")).unwrap();
        std::os::unix::fs::symlink(format!("/{}", long('t', 110)), root.join("sym")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn stream_layout() {
        let bytes = ours();
        assert_eq!(bytes.len() as u64 % RECORD, 0);
        // After "./" and the directory, the long file name comes as an L
        // record: mode 0644, mtime 0.
        let l = &bytes[2 * 512..3 * 512];
        assert_eq!(&l[..13], b"././@LongLink");
        assert_eq!(l[156], b'L');
        assert_eq!(&l[100..108], b"0000644\0");
        assert_eq!(&l[136..148], b"00000000000\0");
        let mut w = Writer::new(Vec::new());
        let err = w.append(
            "./short",
            0o644,
            MTIME,
            Kind::File {
                size: 10,
                data: Box::new(&b"abc"[..]),
            },
        );
        assert!(err.unwrap_err().to_string().contains("shrank"));
    }

    /// Byte for byte what GNU tar writes for the same tree, when a GNU tar
    /// is there to ask (it is on every Debian host and CI runner).
    #[test]
    fn matches_gnu_tar() {
        let gnu = Command::new("tar").arg("--version").output();
        if !gnu.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GNU tar")) {
            eprintln!("no GNU tar here; skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        sample_tree(&root);
        let out = d.path().join("t.tar");
        let st = Command::new("tar")
            .args([
                "--format=gnu",
                "--owner=root:0",
                "--group=root:0",
                "--sort=name",
                &format!("--mtime=@{MTIME}"),
                "-C",
            ])
            .arg(&root)
            .arg("-cf")
            .arg(&out)
            // Explicit members in our order (GNU's --sort=name puts ./hard
            // after the directory, where a hard link to a file not yet
            // stored would not be one).
            .args([
                "--no-recursion".to_string(),
                "./".to_string(),
                format!("./{}", long('d', 60)),
                format!("./{}/{}", long('d', 60), long('f', 60)),
                "./hard".to_string(),
                "./sym".to_string(),
            ])
            .env("TZ", "UTC")
            .status()
            .unwrap();
        assert!(st.success());
        let theirs = std::fs::read(&out).unwrap();
        let ours = ours();
        assert_eq!(ours.len(), theirs.len());
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a, b, "first difference at byte {i} (block {})", i / 512);
        }
    }
}
