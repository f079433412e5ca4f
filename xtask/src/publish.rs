//! Moving step results from the cache into `target/dist/` under their
//! upstream names, atomically, and describing them for the manifest.
//!
//! Everything here runs under the dist dir's lock (`manifest::lock_dist`),
//! which also removes what a killed run left half-published.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::{remove_tree, Entry};
use crate::context::Ctx;
use crate::manifest::{Artifact, Kind};
use crate::tools::run_captured;

/// Copies a cached file to `dist/<name>` (temp + rename). A copy, not a hard
/// link: whatever a user does to dist must not reach into the cache. The
/// copy takes the cached file's mtime, so an unchanged rerun sees the same
/// size and mtime and skips copying (a user's edit changes the mtime).
pub fn file(ctx: &Ctx, src: &Path, name: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    let _lock = crate::manifest::lock_dist(&dist)?;
    let dest = dist.join(name);
    let src_meta = fs::metadata(src)?;
    if let Ok(m) = fs::symlink_metadata(&dest) {
        if m.is_file() && m.len() == src_meta.len() && m.modified().ok() == src_meta.modified().ok()
        {
            return Ok(dest);
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix(".publish")
        .tempfile_in(&dist)?;
    fs::copy(src, tmp.path())
        .with_context(|| format!("copy {} to {}", src.display(), dist.display()))?;
    tmp.as_file().set_modified(src_meta.modified()?)?;
    tmp.persist(&dest)
        .with_context(|| format!("rename into {}", dest.display()))?;
    Ok(dest)
}

/// `dist/<link> -> <target>` (relative), replaced atomically (by way of a
/// uniquely named temp link: concurrent runs never share a temp name).
pub fn symlink(ctx: &Ctx, target: &str, link: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    let _lock = crate::manifest::lock_dist(&dist)?;
    let dest = dist.join(link);
    let tmp = tempfile::Builder::new()
        .prefix(".link")
        .make_in(&dist, |p| std::os::unix::fs::symlink(target, p))
        .with_context(|| format!("create a link in {}", dist.display()))?;
    tmp.persist(&dest)
        .with_context(|| format!("rename into {}", dest.display()))?;
    Ok(dest)
}

/// Copies a cached tree (with its device nodes and owners) to `dist/<name>`,
/// under the dist dir's lock (a tree cannot be replaced in one rename).
pub fn tree(ctx: &Ctx, src: &Path, name: &str) -> Result<PathBuf> {
    let dist = ctx.dist();
    let _lock = crate::manifest::lock_dist(&dist)?;
    let dest = dist.join(name);
    let staging = tempfile::Builder::new().prefix(".tree").tempdir_in(&dist)?;
    let tmp = staging.path().join(name);
    run_captured(Command::new("cp").arg("-a").arg(src).arg(&tmp))?;
    // A tree built without root means nothing without its rootless record
    // (owners, modes, device nodes): it goes along, staged first and put
    // in place before the tree, and a stale one goes away before.
    let record = |tree: &Path| {
        rootfs_builder::rootless::record_path(tree).context("a tree has a directory name")
    };
    let (src_record, tmp_record, dest_record) = (record(src)?, record(&tmp)?, record(&dest)?);
    let rootless = src_record.exists();
    if rootless {
        fs::copy(&src_record, &tmp_record).with_context(|| {
            format!("copy {} to {}", src_record.display(), tmp_record.display())
        })?;
    }
    if dest_record.exists() {
        fs::remove_file(&dest_record)?;
    }
    if dest.exists() {
        remove_tree(&dest)?;
    }
    if rootless {
        fs::rename(&tmp_record, &dest_record)?;
    }
    fs::rename(&tmp, &dest)?;
    Ok(dest)
}

/// Describes a published file: `rel` of the step's `entry` was copied to
/// `path` (the entry's seal gives the digest without reading the file again;
/// the entry was verified against it when the run looked it up).
pub fn artifact(
    ctx: &Ctx,
    name: &str,
    kind: Kind,
    path: &Path,
    entry: &Entry,
    rel: &str,
    recipe: Option<&str>,
) -> Result<Artifact> {
    Ok(Artifact {
        name: name.to_string(),
        kind,
        path: ctx.rel(path),
        sha256: entry.sha256(rel)?,
        bytes: fs::metadata(path)?.len(),
        cache_key: entry.key.clone(),
        recipe: recipe.map(str::to_string),
        kernel_verity_params: None,
    })
}

/// Records one published artifact in the manifest, says where it is
/// (`<what>: <path> (<detail>)`), and prints it with `--json`.
pub fn report_one(ctx: &Ctx, what: &str, art: Artifact, detail: &str) -> Result<()> {
    crate::manifest::Manifest::record(
        &ctx.dist(),
        &ctx.versions.version,
        ctx.epoch,
        vec![art.clone()],
    )?;
    ctx.ui.info(&format!("{what}: {} ({detail})", art.path));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&art)?)?;
    }
    Ok(())
}

/// Publishes a guest asset the way upstream installs it: the versioned file
/// (`kata-minimal-0.1.0.initrd`) plus its well-known name as a symlink
/// (`kata-containers-initrd.img`), which also names the manifest entry.
pub fn guest_asset(
    ctx: &Ctx,
    entry: &Entry,
    rel: &str,
    versioned_name: &str,
    link: &str,
    kind: Kind,
    recipe: &str,
) -> Result<()> {
    let dest = file(ctx, &entry.path(rel), versioned_name)?;
    symlink(ctx, versioned_name, link)?;
    let art = artifact(ctx, link, kind, &dest, entry, rel, Some(recipe))?;
    let detail = format!("{} bytes, sha256 {}", art.bytes, art.sha256);
    report_one(ctx, link, art, &detail)
}
