//! The storages of CreateSandbox (shared filesystems, scratch space) and how
//! they are mounted in the guest.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protocols::agent::Storage;

/// Upstream's driver names for what this agent handles.
pub const DRIVER_VIRTIOFS: &str = "virtio-fs";
pub const DRIVER_9P: &str = "9p";
pub const DRIVER_LOCAL: &str = "local";
pub const DRIVER_EPHEMERAL: &str = "ephemeral";

/// Reported in GetGuestDetails (sorted).
pub const SUPPORTED_DRIVERS: &[&str] =
    &[DRIVER_9P, DRIVER_EPHEMERAL, DRIVER_LOCAL, DRIVER_VIRTIOFS];

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage driver {driver:?} (source {device:?}) is not supported by this agent yet; supported: {supported}")]
    Unsupported {
        driver: String,
        device: String,
        supported: String,
    },
    #[error("storage {driver:?}: {reason}")]
    Invalid { driver: String, reason: String },
    #[error("storage {driver:?}: {what}: {err}")]
    Failed {
        driver: String,
        what: String,
        err: String,
    },
}

/// Something set up in the guest for a storage, undone at DestroySandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    Mounted(PathBuf),
    Directory(PathBuf),
}

/// The directory under the run directory for the sandbox's own storages
/// (upstream: /run/kata-containers/sandbox/...); the only place a `local`
/// storage may create and chmod a directory.
pub const SANDBOX_DIR: &str = "sandbox";

/// The first component of `path` below `root` that is a symbolic link (the
/// components that do not exist yet cannot be).
pub fn symlink_below(root: &Path, path: &Path) -> Option<PathBuf> {
    let rest = path.strip_prefix(root).ok()?;
    let mut current = root.to_path_buf();
    for c in rest.components() {
        current.push(c);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => return Some(current),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// A mount point the agent may mount on or create: absolute, without `..`,
/// strictly below the agent's run directory but not in its libcontainer
/// state, without a symbolic link below the run directory, and for `local`
/// storages below `run_dir/sandbox`.
fn check_mount_point(storage: &Storage, run_dir: &Path) -> Result<PathBuf, StorageError> {
    let path = Path::new(&storage.mount_point);
    let invalid = |reason: String| StorageError::Invalid {
        driver: storage.driver.clone(),
        reason,
    };
    if !path.is_absolute() {
        return Err(invalid(format!(
            "mount_point {:?} must be an absolute path",
            storage.mount_point
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "mount_point {:?} must not contain '..'",
            storage.mount_point
        )));
    }
    let path: PathBuf = path.components().collect();
    let root = if storage.driver == DRIVER_LOCAL {
        run_dir.join(SANDBOX_DIR)
    } else {
        run_dir.to_path_buf()
    };
    if !path.starts_with(&root) || path == root {
        return Err(invalid(format!(
            "mount_point {:?} is outside {}: storages are mounted below the agent's run directory{}",
            storage.mount_point,
            root.display(),
            if storage.driver == DRIVER_LOCAL {
                " (local ones below its sandbox directory)"
            } else {
                ""
            }
        )));
    }
    if path.starts_with(run_dir.join(crate::container::STATE_DIR)) {
        return Err(invalid(format!(
            "mount_point {:?} is in the agent's container state directory",
            storage.mount_point
        )));
    }
    if let Some(link) = symlink_below(run_dir, &path) {
        return Err(invalid(format!(
            "mount_point {:?}: {} is a symbolic link",
            storage.mount_point,
            link.display()
        )));
    }
    Ok(path)
}

/// Splits mount options into flags and the data string the filesystem gets.
pub fn parse_mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "defaults" | "" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

fn mount_fs(
    storage: &Storage,
    run_dir: &Path,
    source: &str,
    fstype: &str,
    extra: &[&str],
) -> Result<Prepared, StorageError> {
    let target = check_mount_point(storage, run_dir)?;
    let failed = |what: String, err: String| StorageError::Failed {
        driver: storage.driver.clone(),
        what,
        err,
    };
    fs::create_dir_all(&target).map_err(|e| {
        failed(
            format!("create mount point {}", target.display()),
            e.to_string(),
        )
    })?;
    let mut options: Vec<String> = storage.options.clone();
    options.extend(extra.iter().map(|s| s.to_string()));
    let (flags, data) = parse_mount_options(&options);
    let data = (!data.is_empty()).then_some(data);
    mount(Some(source), &target, Some(fstype), flags, data.as_deref()).map_err(|e| {
        failed(
            format!("mount {fstype} {source:?} on {}", target.display()),
            e.to_string(),
        )
    })?;
    Ok(Prepared::Mounted(target))
}

/// Sets up one storage, below the agent's run directory `run_dir`.
pub fn prepare(storage: &Storage, run_dir: &Path) -> Result<Prepared, StorageError> {
    match storage.driver.as_str() {
        // virtio-fs: `source` is the device tag (e.g. "kataShared")
        DRIVER_VIRTIOFS => {
            if storage.source.is_empty() {
                return Err(StorageError::Invalid {
                    driver: storage.driver.clone(),
                    reason: "source (the virtio-fs tag) is empty".into(),
                });
            }
            mount_fs(storage, run_dir, &storage.source, "virtiofs", &[])
        }
        // 9p over virtio: `source` is the mount tag
        DRIVER_9P => {
            if storage.source.is_empty() {
                return Err(StorageError::Invalid {
                    driver: storage.driver.clone(),
                    reason: "source (the 9p mount tag) is empty".into(),
                });
            }
            let has_trans = storage.options.iter().any(|o| o.starts_with("trans="));
            mount_fs(
                storage,
                run_dir,
                &storage.source,
                "9p",
                if has_trans { &[] } else { &["trans=virtio"] },
            )
        }
        // scratch space in guest memory
        DRIVER_EPHEMERAL => {
            let fstype = if storage.fstype.is_empty() {
                "tmpfs"
            } else {
                storage.fstype.as_str()
            };
            if fstype != "tmpfs" {
                return Err(StorageError::Invalid {
                    driver: storage.driver.clone(),
                    reason: format!("fstype {fstype:?}: only tmpfs is supported"),
                });
            }
            mount_fs(storage, run_dir, "tmpfs", "tmpfs", &[])
        }
        // a plain directory in the guest, shared by the sandbox's containers;
        // option "mode=0NNN" sets its permissions (default 0777 as upstream)
        DRIVER_LOCAL => {
            let target = check_mount_point(storage, run_dir)?;
            let mut mode = 0o777;
            for opt in &storage.options {
                if let Some(m) = opt.strip_prefix("mode=") {
                    mode = u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                        StorageError::Invalid {
                            driver: storage.driver.clone(),
                            reason: format!("option {opt:?}: mode must be octal, e.g. mode=0755"),
                        }
                    })?;
                }
            }
            let failed = |what: &str, e: std::io::Error| StorageError::Failed {
                driver: storage.driver.clone(),
                what: format!("{what} {}", target.display()),
                err: e.to_string(),
            };
            fs::create_dir_all(&target).map_err(|e| failed("create", e))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(|e| failed("chmod", e))?;
            Ok(Prepared::Directory(target))
        }
        other => Err(StorageError::Unsupported {
            driver: other.to_string(),
            device: storage.source.clone(),
            supported: SUPPORTED_DRIVERS.join(", "),
        }),
    }
}

/// Undoes `prepare`. Directories are left in place (they may hold data the
/// host shares); mounts are lazily detached so a busy one cannot block.
pub fn release(prepared: &Prepared) {
    if let Prepared::Mounted(path) = prepared {
        if let Err(e) = umount2(path, MntFlags::MNT_DETACH) {
            log::warn!("unmount {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, mount_point: &str) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.mount_point = mount_point.into();
        s
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = parse_mount_options(&[
            "ro".into(),
            "nodev".into(),
            "size=64m".into(),
            "trans=virtio".into(),
        ]);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
        assert_eq!(data, "size=64m,trans=virtio");
    }

    const RUN: &str = "/run/kata-containers";

    #[test]
    fn refuses_unsupported_and_bad_paths() {
        let run = Path::new(RUN);
        let err = prepare(&storage("blk", "/run/x"), run).unwrap_err();
        assert!(matches!(err, StorageError::Unsupported { .. }));
        assert!(err.to_string().contains("\"blk\""), "{err}");
        assert!(matches!(
            prepare(&storage("local", "relative/x"), run),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            prepare(&storage("local", "/tmp/../etc"), run),
            Err(StorageError::Invalid { .. })
        ));
        assert!(matches!(
            prepare(
                &storage("virtio-fs", "/run/kata-containers/shared/containers"),
                run
            ),
            Err(StorageError::Invalid { .. })
        ));
    }

    #[test]
    fn mount_points_stay_below_the_run_dir() {
        let run = Path::new(RUN);
        let invalid = |driver: &str, mount_point: &str| -> String {
            let mut s = storage(driver, mount_point);
            s.source = "tag".into();
            match prepare(&s, run) {
                Err(e @ StorageError::Invalid { .. }) => e.to_string(),
                other => panic!("{driver} on {mount_point}: {other:?}"),
            }
        };
        for (driver, mount_point) in [
            ("virtio-fs", "/etc"),
            ("virtio-fs", "/run/kata-containers"),
            ("virtio-fs", "/run/kata-containers/./"),
            ("9p", "/run/kata-containers-other/x"),
            ("ephemeral", "/run/kata-containers/.libcontainer/c1"),
            ("ephemeral", "/sys/fs/cgroup"),
            // local storages chmod: only below run/sandbox
            ("local", "/"),
            ("local", "/etc/ssh"),
            ("local", "/run/kata-containers"),
            ("local", "/run/kata-containers/shared/containers"),
            ("local", "/run/kata-containers/sandbox"),
            ("local", "/run/kata-containers/c1/rootfs"),
        ] {
            let msg = invalid(driver, mount_point);
            assert!(msg.contains(mount_point.trim_end_matches('/')), "{msg}");
        }
    }

    #[test]
    fn symlinked_mount_points_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        fs::create_dir_all(run.join("sandbox")).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, run.join("sandbox/link")).unwrap();
        let s = storage("local", run.join("sandbox/link/x").to_str().unwrap());
        let e = prepare(&s, &run).unwrap_err();
        assert!(
            matches!(e, StorageError::Invalid { .. }) && e.to_string().contains("symbolic link"),
            "{e}"
        );
        assert!(!outside.join("x").exists());
        assert_eq!(
            symlink_below(&run, &run.join("sandbox/link")),
            Some(run.join("sandbox/link"))
        );
        assert_eq!(symlink_below(&run, &run.join("sandbox/none/x")), None);
    }

    #[test]
    fn local_storage_creates_a_directory_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("sandbox/a/b");
        let mut s = storage("local", target.to_str().unwrap());
        s.options = vec!["mode=0750".into()];
        assert_eq!(
            prepare(&s, dir.path()).unwrap(),
            Prepared::Directory(target.clone())
        );
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        s.options = vec!["mode=9x".into()];
        assert!(matches!(
            prepare(&s, dir.path()),
            Err(StorageError::Invalid { .. })
        ));
    }
}
