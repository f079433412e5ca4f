//! A minimal GNU-format tar writer with fully controlled headers.
//!
//! The `tar` crate normalises `./opt/kata` to `opt/kata`; upstream's static
//! tarball and every .deb list entries as `./...`, so headers are built here.
//! Names longer than 100 bytes use GNU `././@LongLink` records, as GNU tar does.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};

const BLOCK: usize = 512;

/// The type of a tar member.
pub(crate) enum TarKind<'a> {
    Dir,
    /// Regular file: contents are streamed from the reader, exactly `size` bytes.
    File {
        size: u64,
        data: Box<dyn Read + 'a>,
    },
    Symlink {
        target: &'a str,
    },
}

/// Writes tar members with uid/gid 0, owner names root/root and a fixed mtime.
pub(crate) struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W, mtime: u64) -> Self {
        Self { out, mtime }
    }

    /// Appends one member. Directory names get a trailing `/` as GNU tar writes them.
    pub(crate) fn append(&mut self, name: &str, mode: u32, kind: TarKind<'_>) -> Result<()> {
        let name = match kind {
            TarKind::Dir if !name.ends_with('/') => format!("{name}/"),
            _ => name.to_string(),
        };
        let (typeflag, size, link) = match &kind {
            TarKind::Dir => (b'5', 0, ""),
            TarKind::File { size, .. } => (b'0', *size, ""),
            TarKind::Symlink { target } => (b'2', 0, *target),
        };
        if link.len() > 100 {
            self.long_record(b'K', link.as_bytes())?;
        }
        if name.len() > 100 {
            self.long_record(b'L', name.as_bytes())?;
        }
        let header = self.header(&name, mode, size, typeflag, link)?;
        self.out.write_all(&header)?;
        if let TarKind::File { size, data } = kind {
            let copied = io::copy(&mut data.take(size), &mut self.out)
                .context("cannot copy file into tar")?;
            if copied != size {
                bail!("{name}: file shrank while archiving ({copied} of {size} bytes)");
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// Ends the archive with two zero blocks and returns the writer.
    pub(crate) fn finish(mut self) -> Result<W> {
        self.out.write_all(&[0u8; BLOCK * 2])?;
        Ok(self.out)
    }

    fn long_record(&mut self, typeflag: u8, value: &[u8]) -> Result<()> {
        let mut data = value.to_vec();
        data.push(0);
        let header = self.header("././@LongLink", 0o644, data.len() as u64, typeflag, "")?;
        self.out.write_all(&header)?;
        self.out.write_all(&data)?;
        self.pad(data.len() as u64)?;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&vec![0u8; BLOCK - rem])?;
        }
        Ok(())
    }

    fn header(
        &self,
        name: &str,
        mode: u32,
        size: u64,
        typeflag: u8,
        link: &str,
    ) -> Result<[u8; BLOCK]> {
        let mut h = [0u8; BLOCK];
        put_truncated(&mut h[0..100], name.as_bytes());
        put_octal(&mut h[100..108], mode as u64, name)?;
        put_octal(&mut h[108..116], 0, name)?;
        put_octal(&mut h[116..124], 0, name)?;
        put_octal(&mut h[124..136], size, name)?;
        put_octal(&mut h[136..148], self.mtime, name)?;
        h[156] = typeflag;
        put_truncated(&mut h[157..257], link.as_bytes());
        // GNU magic and version: "ustar  \0".
        h[257..265].copy_from_slice(b"ustar  \0");
        put_truncated(&mut h[265..297], b"root");
        put_truncated(&mut h[297..329], b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let field = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(field.as_bytes());
        Ok(h)
    }
}

fn put_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

fn put_octal(field: &mut [u8], value: u64, name: &str) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() > digits {
        bail!("{name}: value {value} does not fit a {digits}-digit tar header field");
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}
