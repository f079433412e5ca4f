//! Files: atomic writes, sorted walks, removal of read-only trees.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use walkdir::WalkDir;

/// The directory `path` is in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes `data` to `path` atomically (see [`write_atomic_with`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |mut f| Ok(f.write_all(data)?), |_| Ok(()))
}

/// Writes `path` by way of a temp file in the same directory (created, like
/// the directory, if need be): `fill` writes the temp file, which then gets
/// the mode of the file it replaces (0644 for a new one; temp files are
/// created 0600), is fsynced, passes `check` (given the temp file's path)
/// and is renamed into place. An error, in `fill`, `check` or anywhere,
/// removes the temp file and leaves `path` as it was: a crash never leaves a
/// half-written output under its final name.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&File) -> Result<()>,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("create a temp file in {}", dir.display()))?;
    fill(tmp.as_file()).with_context(|| format!("write {}", path.display()))?;
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .with_context(|| format!("set the mode of {}", tmp.path().display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("sync {}", path.display()))?;
    check(tmp.path())?;
    tmp.persist(path)
        .with_context(|| format!("rename into {}", path.display()))?;
    Ok(())
}

/// Every non-directory below `dir` (symlinks are listed, not followed),
/// sorted by path.
pub fn files_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in WalkDir::new(dir).min_depth(1) {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        if !e.file_type().is_dir() {
            out.push(e.into_path());
        }
    }
    out.sort();
    Ok(out)
}

/// Total size in bytes of everything below `dir` but directories (symlinks
/// count their own length, not their target's).
pub fn tree_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in WalkDir::new(dir).min_depth(1) {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        if !e.file_type().is_dir() {
            total += e.metadata()?.len();
        }
    }
    Ok(total)
}

/// Removes a tree that may hold read-only directories (cargo's registry
/// sources and rootfs trees do): when a plain removal fails, every directory
/// is made 0755 and the removal tried again.
pub fn remove_tree(path: &Path) -> Result<()> {
    if let Err(first) = fs::remove_dir_all(path) {
        make_writable(path);
        fs::remove_dir_all(path).with_context(|| format!("remove {} ({first})", path.display()))?;
    }
    Ok(())
}

fn make_writable(path: &Path) {
    // A directory is yielded before it is read, so making it accessible
    // here is what lets the walk go into it.
    let mut walk = WalkDir::new(path).into_iter();
    while let Some(entry) = walk.next() {
        match entry {
            Ok(e) if e.file_type().is_dir() => {
                let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode(0o755));
            }
            Ok(_) => {}
            Err(_) => walk.skip_current_dir(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_keeps_the_mode_and_leaves_nothing_on_failure() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/out");
        write_atomic(&p, b"one").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&p), 0o644);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(mode(&p), 0o755);
        let err = write_atomic_with(
            &p,
            |mut f| Ok(f.write_all(b"three")?),
            |tmp| {
                assert_eq!(fs::read(tmp).unwrap(), b"three");
                anyhow::bail!("rejected")
            },
        );
        assert!(err.is_err());
        assert!(write_atomic_with(&p, |_| anyhow::bail!("no"), |_| Ok(())).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(files_below(d.path()).unwrap(), vec![p]);
    }

    #[test]
    fn walks_are_sorted_and_do_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("b/c")).unwrap();
        fs::write(r.join("b/c/z"), b"12").unwrap();
        fs::write(r.join("b/a"), b"1").unwrap();
        fs::write(r.join("a"), b"123").unwrap();
        std::os::unix::fs::symlink("b", r.join("link")).unwrap();
        let rel: Vec<PathBuf> = files_below(r)
            .unwrap()
            .into_iter()
            .map(|p| p.strip_prefix(r).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            rel,
            ["a", "b/a", "b/c/z", "link"].map(PathBuf::from).to_vec()
        );
        assert_eq!(tree_bytes(r).unwrap(), 3 + 1 + 2 + 1);
    }

    #[test]
    fn read_only_trees_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        fs::create_dir_all(t.join("ro/inner")).unwrap();
        fs::write(t.join("ro/inner/f"), b"x").unwrap();
        fs::set_permissions(t.join("ro/inner"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(t.join("ro"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&t).unwrap();
        assert!(!t.exists());
    }
}
