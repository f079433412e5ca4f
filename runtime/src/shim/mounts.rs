//! Host mounts of a sandbox: the container root filesystems (and bind-mount
//! sources) placed in the directory virtiofsd shares with the guest, and
//! their removal.
//!
//! Removal goes through [`crate::state_fs`]: mounts are detached first,
//! then only what the shim created below its state root is removed, never
//! following a symlink and never entering a mount (a directory that still
//! holds one would otherwise lose the container's files).

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::state_fs;

/// The host directory virtiofsd shares for sandbox `sid`
/// (`<state_root>/shared/sandboxes/<sid>`, outside the VM's own state
/// directory, which is removed recursively on VM teardown).
pub fn shared_dir(state_root: &Path, sid: &str) -> PathBuf {
    state_root.join("shared/sandboxes").join(sid)
}

/// `shared/sandboxes/<sid>`, or a container's `shared/sandboxes/<sid>/<cid>`,
/// relative to the state root. Both ids must be valid ([`protocols::ids`]).
pub fn shared_rel(sid: &str, cid: Option<&str>) -> PathBuf {
    let p = Path::new("shared/sandboxes").join(sid);
    match cid {
        Some(c) => p.join(c),
        None => p,
    }
}

/// Detach every mount below `state_root/rel`, then remove what the shim
/// created there. Returns what could not be done.
pub fn unmount_and_remove(state_root: &Path, rel: &Path) -> Vec<String> {
    // The mount table has canonical paths.
    let root = std::fs::canonicalize(state_root).unwrap_or_else(|_| state_root.to_owned());
    let mut problems = unmount_all_under(&root.join(rel));
    if let Err(e) = state_fs::remove_below(&root, rel) {
        problems.push(format!("remove: {e}"));
    }
    problems
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
    if let Err(e) = mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    ) {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        anyhow::bail!("make {} a shared mount: {e}", dir.display());
    }
    Ok(())
}

/// Detach every mount at or below `dir` (lazily: a busy mount cannot block
/// the cleanup). Returns what could not be unmounted.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for m in state_fs::mounts_under(dir) {
        match umount2(&m, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => problems.push(format!("unmount {}: {e}", m.display())),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_dir_layout() {
        assert_eq!(
            shared_dir(Path::new("/run/kata-containers"), "sb1"),
            Path::new("/run/kata-containers/shared/sandboxes/sb1")
        );
        assert_eq!(shared_rel("sb1", None), Path::new("shared/sandboxes/sb1"));
        assert_eq!(
            shared_rel("sb1", Some("c1")),
            Path::new("shared/sandboxes/sb1/c1")
        );
    }
}
