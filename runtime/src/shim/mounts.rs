//! Host mounts of a sandbox: the container root filesystems (and bind-mount
//! sources) placed in the directory virtiofsd shares with the guest, and
//! their removal.
//!
//! Removal never deletes recursively: a directory that still holds a mount
//! would otherwise lose the container's files. Mounts are detached first,
//! then only empty directories are removed.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// The host directory virtiofsd shares for sandbox `sid`
/// (`<state_root>/shared/sandboxes/<sid>`, outside the VM's own state
/// directory, which is removed recursively on VM teardown).
pub fn shared_dir(state_root: &Path, sid: &str) -> PathBuf {
    state_root.join("shared/sandboxes").join(sid)
}

/// Mount the rootfs containerd gives (usually one overlay mount) at
/// `target`; with no mounts (`ctr run --rootfs`), bind-mount `bundle/rootfs`.
pub fn mount_rootfs(rootfs: &[Mount], bundle: &Path, target: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(target)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", target.display()))?;
    match rootfs {
        [] => {
            let src = bundle.join("rootfs");
            bind(&src, target, false)
        }
        [m] => containerd_shim::mount::mount_rootfs(
            Some(m.type_.as_str()).filter(|t| !t.is_empty()),
            Some(m.source.as_str()),
            &m.options,
            target,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "mount rootfs ({} {} options {:?}) on {}: {e}",
                m.type_,
                m.source,
                m.options,
                target.display()
            )
        }),
        many => anyhow::bail!(
            "{} rootfs mounts given; this runtime supports one (an overlay or bind mount)",
            many.len()
        ),
    }
}

/// Bind-mount `src` (file or directory) at `target`, creating the target.
pub fn bind(src: &Path, target: &Path, readonly: bool) -> anyhow::Result<()> {
    let meta = std::fs::metadata(src)
        .map_err(|e| anyhow::anyhow!("bind mount source {}: {e}", src.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target)
    } else {
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map(drop)
    }
    .map_err(|e| anyhow::anyhow!("create {}: {e}", target.display()))?;
    mount(
        Some(src),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| anyhow::anyhow!("bind mount {} on {}: {e}", src.display(), target.display()))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| anyhow::anyhow!("remount {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

/// Bind-mounts `dir` onto itself and marks it MS_SHARED, so mounts made
/// below it later reach every mount namespace copied from this one.
pub fn make_shared_mountpoint(dir: &Path) -> anyhow::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| anyhow::anyhow!("bind-mount {} onto itself: {e}", dir.display()))?;
    if let Err(e) = mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>) {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        anyhow::bail!("make {} a shared mount: {e}", dir.display());
    }
    Ok(())
}

/// The mount points at or below `dir`, deepest first (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Detach every mount at or below `dir` (lazily: a busy mount cannot block
/// the cleanup). Returns what could not be unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for m in mounts_under(dir) {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => problems.push(format!("unmount {}: {e}", m.display())),
        }
    }
    problems
}

/// Remove `dir` and everything below it that is an empty directory or a
/// plain file we created as a bind target, never crossing into a mount
/// (mounts must be detached first). Missing is fine.
pub fn remove_tree_no_cross(dir: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(dir);
    }
    if !mounts_under(dir).is_empty() {
        return Err(std::io::Error::other(format!(
            "{} still holds mounts; not removing it",
            dir.display()
        )));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            remove_tree_no_cross(&p)?;
        } else {
            std::fs::remove_file(&p)?;
        }
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    }

    #[test]
    fn removal_keeps_out_of_mounts_and_removes_plain_trees() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("sb/c1/rootfs");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(dir.path().join("sb/c1/hosts"), b"").unwrap();
        remove_tree_no_cross(&dir.path().join("sb")).unwrap();
        assert!(!dir.path().join("sb").exists());
        remove_tree_no_cross(&dir.path().join("absent")).unwrap();
        // The real mount table: / is a mount, so removing it must refuse
        // without touching anything.
        let err = remove_tree_no_cross(Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("still holds mounts"), "{err}");
    }

    #[test]
    fn shared_dir_layout() {
        assert_eq!(
            shared_dir(Path::new("/run/kata-containers"), "sb1"),
            Path::new("/run/kata-containers/shared/sandboxes/sb1")
        );
    }
}
