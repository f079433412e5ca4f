//! Outputs are written to a temp path next to the destination and renamed
//! into place, so a crash never leaves a half-written artifact (the helpers
//! are host-support's).

use anyhow::{bail, Result};
use std::fs::File;
use std::path::Path;

pub(crate) use host_support::fs::parent_dir;

/// [`host_support::fs::write_atomic_with`] without a check before the rename.
pub(crate) fn write_atomically(out: &Path, fill: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    host_support::fs::write_atomic_with(out, fill, |_| Ok(()))
}

/// Every existing directory above `rel` is a real directory of the tree
/// (lstat), not a symlink that would lead out of it. The first missing one
/// ends the check: whatever is created from there on is the builder's.
pub(crate) fn within_tree(root: &Path, rel: &str) -> Result<()> {
    let mut at = root.to_path_buf();
    let mut parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop();
    for part in parts {
        at.push(part);
        let meta = match std::fs::symlink_metadata(&at) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other,
        };
        if !meta.is_ok_and(|m| m.is_dir()) {
            bail!(
                "/{rel}: /{} above it is not a directory of the tree (a symlink?); nothing is written through it",
                at.strip_prefix(root).unwrap_or(&at).display()
            );
        }
    }
    Ok(())
}

/// Tests: runs a host tool that must succeed; its output. A failure names
/// the command and shows what it printed.
#[cfg(test)]
pub(crate) fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
