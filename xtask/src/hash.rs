//! sha256 helpers shared by the cache, the fetcher and the manifest.

use std::path::{Path, PathBuf};

use anyhow::Result;
use sha2::{Digest, Sha256};

pub use host_support::hash::bytes_sha256;
pub use host_support::hash::sha256_file as file_sha256;

/// Digest of a source tree: every regular file's relative path and content,
/// in sorted order. Build outputs (`target/`) and VCS metadata are skipped so
/// that only what feeds the build counts.
pub fn tree_sha256(root: &Path) -> Result<String> {
    let mut files = collect(root)?;
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

/// Every non-directory below `root` (relative paths), skipping build
/// outputs and VCS metadata at any depth.
fn collect(root: &Path) -> Result<Vec<PathBuf>> {
    const SKIPPED: [&str; 4] = ["target", ".git", "corpus", "artifacts"];
    let mut out = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .filter_entry(|e| !SKIPPED.iter().any(|s| e.file_name() == *s));
    for e in walk {
        let e = e?;
        if !e.file_type().is_dir() {
            out.push(
                e.path()
                    .strip_prefix(root)
                    .expect("below root")
                    .to_path_buf(),
            );
        }
    }
    Ok(out)
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
