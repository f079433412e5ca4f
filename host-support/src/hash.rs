//! sha256 as lowercase hex: of bytes, of a file (streamed), of a stream.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Hex sha256 of `data`.
pub fn bytes_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Hex sha256 of the file at `path`, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut w = Sha256Writer::default();
    io::copy(&mut io::BufReader::with_capacity(1 << 20, f), &mut w)
        .with_context(|| format!("read {}", path.display()))?;
    Ok(w.hex())
}

/// A `Write` sink that hashes what is written to it.
#[derive(Default)]
pub struct Sha256Writer(Sha256);

impl Sha256Writer {
    /// Hex digest of everything written.
    pub fn hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

impl Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_answers_agree() {
        assert_eq!(bytes_sha256(b"abc"), ABC);
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p).unwrap(), ABC);
        let mut w = Sha256Writer::default();
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        assert_eq!(w.hex(), ABC);
        assert!(sha256_file(&d.path().join("absent")).is_err());
    }
}
