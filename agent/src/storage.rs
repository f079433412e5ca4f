//! The storages of CreateSandbox (shared filesystems, scratch space) and how
//! they are mounted in the guest.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use protocols::agent::Storage;

/// Upstream's driver names for what this agent handles.
pub const DRIVER_VIRTIOFS: &str = "virtio-fs";
pub const DRIVER_9P: &str = "9p";
pub const DRIVER_LOCAL: &str = "local";
pub const DRIVER_EPHEMERAL: &str = "ephemeral";
pub const DRIVER_BLK: &str = "blk";

/// Reported in GetGuestDetails (sorted).
pub const SUPPORTED_DRIVERS: &[&str] = &[
    DRIVER_9P,
    DRIVER_BLK,
    DRIVER_EPHEMERAL,
    DRIVER_LOCAL,
    DRIVER_VIRTIOFS,
];

/// How long a `blk` storage's device may take to show up: it is hot-plugged
/// (ACPI, behind a bridge) just before the request, and under TCG the guest
/// kernel can need seconds to enumerate it.
pub const BLK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often sysfs and /dev are looked at while waiting.
const BLK_POLL: Duration = Duration::from_millis(25);
/// Deeper PCI paths than this are not a real topology, only a typo.
const MAX_PCI_DEPTH: usize = 16;
/// The highest slot (device number) on a PCI bus.
const MAX_PCI_SLOT: u8 = 0x1f;

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
        // a hot-plugged virtio-blk disk: `source` is its PCI path
        DRIVER_BLK => prepare_blk(
            storage,
            run_dir,
            Path::new("/sys"),
            Path::new("/dev"),
            BLK_TIMEOUT,
        ),
        other => Err(StorageError::Unsupported {
            driver: other.to_string(),
            device: storage.source.clone(),
            supported: SUPPORTED_DRIVERS.join(", "),
        }),
    }
}

/// The slots of an upstream PCI path: "02/01" is slot 1 behind the bridge in
/// slot 2 of the root bus, "05" slot 5 of the root bus (function 0 always).
pub fn parse_pci_path(path: &str) -> Result<Vec<u8>, String> {
    let bad = || {
        format!(
            "source {path:?} is not a PCI path: expected 1 to {MAX_PCI_DEPTH} slash-separated \
             slots from the root bus, each two hex digits up to {MAX_PCI_SLOT:02x}, e.g. \"02/01\" or \"05\""
        )
    };
    let slots = path
        .split('/')
        .map(|c| {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u8::from_str_radix(c, 16)
                .ok()
                .filter(|slot| *slot <= MAX_PCI_SLOT)
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    if slots.len() > MAX_PCI_DEPTH {
        return Err(bad());
    }
    Ok(slots)
}

/// The slot and function of a sysfs PCI device directory name
/// (`<domain>:<bus>:<slot>.<function>`, e.g. "0000:01:1f.0").
fn pci_slot_function(name: &str) -> Option<(u8, u8)> {
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = name.split(':');
    let (domain, bus, dev) = (parts.next()?, parts.next()?, parts.next()?);
    let (slot, function) = dev.split_once('.')?;
    if parts.next().is_some()
        || domain.len() < 4
        || !hex(domain, domain.len())
        || !hex(bus, 2)
        || !hex(slot, 2)
        || !hex(function, 1)
    {
        return None;
    }
    Some((
        u8::from_str_radix(slot, 16).ok()?,
        u8::from_str_radix(function, 16).ok()?,
    ))
}

/// The sorted names of the entries of `dir` (none when it cannot be read:
/// sysfs directories come and go while a device is probed).
fn entry_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The block device name of the PCI device `slots` below `sysfs`, or what
/// was found on the way (for the timeout message).
fn lookup_block_device(sysfs: &Path, slots: &[u8]) -> Result<String, String> {
    let root = sysfs.join("devices/pci0000:00");
    let mut dir = root.join(format!("0000:00:{:02x}.0", slots[0]));
    if !dir.is_dir() {
        return Err(format!("{} does not exist", dir.display()));
    }
    // Below a bridge the bus number is the kernel's choice: match the slot.
    for slot in &slots[1..] {
        let child = entry_names(&dir)
            .into_iter()
            .find(|name| pci_slot_function(name) == Some((*slot, 0)) && dir.join(name).is_dir());
        match child {
            Some(name) => dir.push(name),
            None => {
                return Err(format!(
                    "{} has no device in slot {slot:02x} (no <domain>:<bus>:{slot:02x}.0 entry)",
                    dir.display()
                ))
            }
        }
    }
    let mut block_dirs = vec![dir.join("block")];
    block_dirs.extend(
        entry_names(&dir)
            .into_iter()
            .filter(|name| name.starts_with("virtio"))
            .map(|name| dir.join(name).join("block")),
    );
    for block in &block_dirs {
        if let Some(name) = entry_names(block).into_iter().next() {
            return Ok(name);
        }
    }
    Err(format!(
        "{} has no block device yet (no block/<name> nor virtio*/block/<name>)",
        dir.display()
    ))
}

/// Waits until the PCI device at `slots` has a block device in sysfs and
/// its node exists in `dev`; returns the node.
fn wait_for_block_device(
    sysfs: &Path,
    dev: &Path,
    pci_path: &str,
    slots: &[u8],
    timeout: Duration,
) -> Result<PathBuf, String> {
    let deadline = Instant::now() + timeout;
    let name = loop {
        match lookup_block_device(sysfs, slots) {
            Ok(name) => break name,
            Err(seen) if Instant::now() >= deadline => {
                return Err(format!(
                    "no block device at PCI path {pci_path:?} after {timeout:?}: {seen}; \
                     was the disk hot-plugged into this guest?"
                ))
            }
            Err(_) => std::thread::sleep(BLK_POLL),
        }
    };
    // devtmpfs creates the node shortly after sysfs shows the disk, and the
    // disk opens only once the kernel has finished adding it: until then an
    // open (and so a mount) fails with ENXIO. Seen on a hot-plug into the
    // systemd guest, whose slower boot-time load widens that window.
    let node = dev.join(&name);
    let mut said_enxio = false;
    loop {
        let why = match std::fs::File::open(&node) {
            Ok(_) => return Ok(node),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "did not appear".to_string(),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                if !said_enxio {
                    log::info!(
                        "{} is in sysfs but not ready yet (ENXIO); waiting for the kernel to finish adding it",
                        node.display()
                    );
                    said_enxio = true;
                }
                format!("did not open ({e})")
            }
            Err(e) => {
                return Err(format!(
                    "block device {name} at PCI path {pci_path:?}: cannot open {}: {e}",
                    node.display()
                ))
            }
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "block device {name} at PCI path {pci_path:?} is in sysfs, but {} {why} within {timeout:?}",
                node.display()
            ));
        }
        std::thread::sleep(BLK_POLL);
    }
}

/// The `blk` driver with its roots and deadline as parameters (tests use a
/// directory tree for sysfs and /dev).
fn prepare_blk(
    storage: &Storage,
    run_dir: &Path,
    sysfs: &Path,
    dev: &Path,
    timeout: Duration,
) -> Result<Prepared, StorageError> {
    let invalid = |reason: String| StorageError::Invalid {
        driver: storage.driver.clone(),
        reason,
    };
    if storage.fstype.is_empty() {
        return Err(invalid(
            "fstype is empty: name the filesystem on the disk, e.g. \"ext4\"".into(),
        ));
    }
    let slots = parse_pci_path(&storage.source).map_err(invalid)?;
    // a bad mount point fails now, not after waiting for the disk
    check_mount_point(storage, run_dir)?;
    let node =
        wait_for_block_device(sysfs, dev, &storage.source, &slots, timeout).map_err(|err| {
            StorageError::Failed {
                driver: storage.driver.clone(),
                what: "wait for the disk".into(),
                err,
            }
        })?;
    mount_fs(
        storage,
        run_dir,
        &node.to_string_lossy(),
        &storage.fstype,
        &[],
    )
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
        let err = prepare(&storage("nvdimm", "/run/x"), run).unwrap_err();
        assert!(matches!(err, StorageError::Unsupported { .. }));
        assert!(err.to_string().contains("\"nvdimm\""), "{err}");
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

    /// A sysfs tree with a disk in slot 1 behind the bridge in slot 2 (bus
    /// 01, as the kernel numbered it) and one in slot 5 of the root bus,
    /// plus neighbours that must not match.
    fn fake_sysfs(root: &Path) {
        let pci = root.join("sys/devices/pci0000:00");
        for dir in [
            "0000:00:02.0/0000:01:01.0/virtio3/block/vdb",
            // another function of the same slot, another slot of the bridge
            "0000:00:02.0/0000:01:01.1/virtio4/block/vdx",
            "0000:00:02.0/0000:01:03.0/virtio5/block/vdy",
            // slot 1 of the root bus is not "02/01"
            "0000:00:01.0/virtio1/block/vdz",
            "0000:00:05.0/block/vdc",
        ] {
            fs::create_dir_all(pci.join(dir)).unwrap();
        }
        fs::create_dir_all(pci.join("0000:00:02.0/0000:01:01.0/driver")).unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        for node in ["vdb", "vdc"] {
            fs::write(root.join("dev").join(node), "").unwrap();
        }
    }

    #[test]
    fn pci_paths_are_parsed() {
        assert_eq!(parse_pci_path("02/01").unwrap(), vec![2, 1]);
        assert_eq!(parse_pci_path("05").unwrap(), vec![5]);
        assert_eq!(parse_pci_path("1f/0a/1F").unwrap(), vec![0x1f, 0x0a, 0x1f]);
        for bad in [
            "", "/", "02/", "/02", "2", "002", "02//01", "20", "0x02", "zz", "/dev/vda", "02:01",
        ] {
            let e = parse_pci_path(bad).unwrap_err();
            assert!(
                e.contains(&format!("{bad:?}")) && e.contains("e.g. \"02/01\""),
                "{e}"
            );
        }
        assert!(parse_pci_path(&["01"; MAX_PCI_DEPTH].join("/")).is_ok());
        assert!(parse_pci_path(&["01"; MAX_PCI_DEPTH + 1].join("/")).is_err());
        assert_eq!(pci_slot_function("0000:01:1f.0"), Some((0x1f, 0)));
        assert_eq!(pci_slot_function("10000:01:03.2"), Some((3, 2)));
        for bad in [
            "virtio3",
            "0000:01:1f",
            "000:01:1f.0",
            "0000:01:1f.0.1",
            "driver",
        ] {
            assert_eq!(pci_slot_function(bad), None, "{bad}");
        }
    }

    #[test]
    fn block_devices_are_found_through_bridges_and_on_the_root_bus() {
        let dir = tempfile::tempdir().unwrap();
        fake_sysfs(dir.path());
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        let short = Duration::from_millis(200);
        assert_eq!(
            wait_for_block_device(&sys, &dev, "02/01", &[2, 1], short).unwrap(),
            dev.join("vdb")
        );
        assert_eq!(
            wait_for_block_device(&sys, &dev, "05", &[5], short).unwrap(),
            dev.join("vdc")
        );
    }

    #[test]
    fn a_late_disk_is_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (sys, dev) = (root.join("sys"), root.join("dev"));
        fs::create_dir_all(&dev).unwrap();
        let plug = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            fake_sysfs(&root);
        });
        let node = wait_for_block_device(&sys, &dev, "02/01", &[2, 1], Duration::from_secs(10));
        plug.join().unwrap();
        assert_eq!(node.unwrap(), dev.join("vdb"));
    }

    #[test]
    fn a_missing_disk_times_out_saying_what_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        fake_sysfs(dir.path());
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        let short = Duration::from_millis(100);
        let started = Instant::now();
        let e = wait_for_block_device(&sys, &dev, "02/04", &[2, 4], short).unwrap_err();
        assert!(started.elapsed() >= short);
        assert!(
            e.contains("\"02/04\"") && e.contains("0000:00:02.0 has no device in slot 04"),
            "{e}"
        );
        let e = wait_for_block_device(&sys, &dev, "07", &[7], short).unwrap_err();
        assert!(e.contains("0000:00:07.0 does not exist"), "{e}");
        // in sysfs, but devtmpfs has no node
        fs::remove_file(dev.join("vdc")).unwrap();
        let e = wait_for_block_device(&sys, &dev, "05", &[5], short).unwrap_err();
        assert!(e.contains("vdc") && e.contains("did not appear"), "{e}");
        // a PCI device that is not a disk
        fs::create_dir_all(sys.join("devices/pci0000:00/0000:00:06.0/virtio6")).unwrap();
        let e = wait_for_block_device(&sys, &dev, "06", &[6], short).unwrap_err();
        assert!(e.contains("no block device yet"), "{e}");
    }

    #[test]
    fn blk_storages_are_checked_before_waiting() {
        let dir = tempfile::tempdir().unwrap();
        fake_sysfs(dir.path());
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        let run = dir.path().join("run");
        let blk = |source: &str, fstype: &str, mount_point: &Path| {
            let mut s = storage(DRIVER_BLK, mount_point.to_str().unwrap());
            s.source = source.into();
            s.fstype = fstype.into();
            prepare_blk(&s, &run, &sys, &dev, Duration::from_secs(30))
        };
        let inside = run.join("sandbox/storage/vol");
        let started = Instant::now();
        for (source, fstype, mount_point, expect) in [
            ("02/01", "", inside.as_path(), "fstype is empty"),
            ("/dev/vda", "ext4", inside.as_path(), "is not a PCI path"),
            ("02/01", "ext4", Path::new("/etc"), "is outside"),
        ] {
            match blk(source, fstype, mount_point) {
                Err(e @ StorageError::Invalid { .. }) => {
                    assert!(e.to_string().contains(expect), "{e}")
                }
                other => panic!("{source} {fstype}: {other:?}"),
            }
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        // the timeout is a failure naming the PCI path
        let mut s = storage(DRIVER_BLK, inside.to_str().unwrap());
        s.source = "03".into();
        s.fstype = "ext4".into();
        let e = prepare_blk(&s, &run, &sys, &dev, Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(e, StorageError::Failed { .. }) && e.to_string().contains("\"03\""),
            "{e}"
        );
        assert!(SUPPORTED_DRIVERS.contains(&DRIVER_BLK));
        assert!(SUPPORTED_DRIVERS.windows(2).all(|w| w[0] < w[1]));
    }
}
