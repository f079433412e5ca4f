//! Moving step results from the cache into `target/dist/` under their
//! upstream names, atomically, and describing them for the manifest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::remove_tree;
use crate::context::Ctx;
use crate::hash;
use crate::manifest::{Artifact, Kind};
use crate::tools::run_captured;

/// Copies a cached file to `dist/<name>` (temp + rename). A copy, not a hard
/// link: whatever a user does to dist must not reach into the cache.
pub fn file(ctx: &Ctx, src: &Path, name: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    fs::create_dir_all(&dist).with_context(|| format!("output dir {} is not writable", dist.display()))?;
    let dest = dist.join(name);
    let tmp = tempfile::Builder::new().prefix(".publish").tempfile_in(&dist)?;
    fs::copy(src, tmp.path()).with_context(|| format!("copy {} to {}", src.display(), dist.display()))?;
    tmp.persist(&dest).with_context(|| format!("rename into {}", dest.display()))?;
    Ok(dest)
}

/// `dist/<link> -> <target>` (relative), replaced atomically.
pub fn symlink(ctx: &Ctx, target: &str, link: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    let dest = dist.join(link);
    let tmp = dist.join(format!(".{link}.tmp"));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Copies a cached tree (with its device nodes and owners) to `dist/<name>`.
pub fn tree(ctx: &Ctx, src: &Path, name: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    fs::create_dir_all(&dist)?;
    let dest = dist.join(name);
    let tmp = dist.join(format!(".{name}.tmp"));
    if tmp.exists() {
        remove_tree(&tmp)?;
    }
    run_captured(Command::new("cp").arg("-a").arg(src).arg(&tmp))?;
    if dest.exists() {
        remove_tree(&dest)?;
    }
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

pub fn artifact(ctx: &Ctx, name: &str, kind: Kind, path: &Path, cache_key: &str, recipe: Option<&str>) -> Result<Artifact> {
    Ok(Artifact {
        name: name.to_string(),
        kind,
        path: ctx.rel(path),
        sha256: hash::file_sha256(path)?,
        bytes: fs::metadata(path)?.len(),
        cache_key: cache_key.to_string(),
        recipe: recipe.map(str::to_string),
    })
}
