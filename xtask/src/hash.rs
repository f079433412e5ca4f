//! sha256 helpers shared by the cache, the fetcher and the manifest.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn bytes_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Digest of a source tree: every regular file's relative path and content,
/// in sorted order. Build outputs (`target/`) and VCS metadata are skipped so
/// that only what feeds the build counts.
pub fn tree_sha256(root: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect(root, root, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    for rel in files {
        let full = root.join(&rel);
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        let meta = std::fs::symlink_metadata(&full)?;
        if meta.file_type().is_symlink() {
            h.update(b"L");
            h.update(std::fs::read_link(&full)?.to_string_lossy().as_bytes());
        } else {
            h.update(file_sha256(&full)?.as_bytes());
        }
        h.update([0]);
    }
    Ok(hex::encode(h.finalize()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "target" || name == ".git" || name == "corpus" || name == "artifacts" {
            continue;
        }
        let ft = entry.file_type()?;
        let path = entry.path();
        if ft.is_dir() {
            collect(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root).expect("below root").to_path_buf());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        assert_eq!(
            bytes_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tree_digest_sees_content_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/x"), b"1").unwrap();
        let first = tree_sha256(d.path()).unwrap();
        std::fs::write(d.path().join("a/x"), b"2").unwrap();
        let second = tree_sha256(d.path()).unwrap();
        assert_ne!(first, second);
        std::fs::rename(d.path().join("a/x"), d.path().join("a/y")).unwrap();
        assert_ne!(second, tree_sha256(d.path()).unwrap());
        // build outputs do not count
        std::fs::create_dir(d.path().join("target")).unwrap();
        std::fs::write(d.path().join("target/junk"), b"x").unwrap();
        let third = tree_sha256(d.path()).unwrap();
        std::fs::write(d.path().join("target/junk"), b"y").unwrap();
        assert_eq!(third, tree_sha256(d.path()).unwrap());
    }
}
