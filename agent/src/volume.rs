//! GetVolumeStats and ResizeVolume: the direct-assigned volumes the runtime
//! mounted below the agent's run directory (`blk` storages), seen from the
//! guest.
//!
//! Both take a path from the host; it is confined to the run directory so
//! that the host cannot probe or resize arbitrary guest filesystems.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::statvfs::{fstatvfs, statvfs};
use protocols::agent::{volume_usage::Unit, VolumeCondition, VolumeStatsResponse, VolumeUsage};
use ttrpc::Code;

use crate::container::{Failure, Result};

/// How long the guest kernel may take to notice that the host grew the
/// disk (QMP block_resize reaches the guest as an asynchronous config
/// change of the virtio-blk device).
pub const GROW_TIMEOUT: Duration = Duration::from_secs(30);
const GROW_POLL: Duration = Duration::from_millis(25);
/// sysfs reports block device sizes in 512-byte sectors, whatever the
/// device's logical block size.
const SECTOR_BYTES: u64 = 512;
const MOUNTINFO: &str = "/proc/self/mountinfo";

// EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64): grow a mounted ext4 to the
// given number of filesystem blocks.
nix::ioctl_write_ptr!(ext4_resize_fs, b'f', 16, u64);

fn fail(code: Code, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

/// The canonical form of `path`, which must lie strictly below `run_dir`,
/// before and after symbolic links are resolved. The lexical check comes
/// first so that NOT_FOUND never tells the host whether a path outside the
/// run directory exists.
fn check_volume_path(path: &str, run_dir: &Path) -> Result<PathBuf> {
    let invalid = |m: String| fail(Code::INVALID_ARGUMENT, m);
    if path.is_empty() {
        return Err(invalid(
            "volume_guest_path (field 1) is empty: give the volume's mount point in the guest"
                .into(),
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(format!(
            "volume_guest_path {path:?} must be an absolute path"
        )));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "volume_guest_path {path:?} must not contain '..'"
        )));
    }
    let outside = |shown: &Path| {
        invalid(format!(
            "volume_guest_path {path:?}{} is outside the agent's run directory {}: only volumes mounted below it can be inspected or resized",
            if shown == p {
                String::new()
            } else {
                format!(" (resolved to {})", shown.display())
            },
            run_dir.display()
        ))
    };
    let lexical: PathBuf = p.components().collect();
    if !lexical.starts_with(run_dir) || lexical == run_dir {
        return Err(outside(p));
    }
    let canonical = fs::canonicalize(p).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            fail(
                Code::NOT_FOUND,
                format!("volume_guest_path {path:?} does not exist"),
            )
        } else {
            fail(Code::INTERNAL, format!("resolve {path:?}: {e}"))
        }
    })?;
    let root = fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf());
    if !canonical.starts_with(&root) || canonical == root {
        return Err(outside(&canonical));
    }
    Ok(canonical)
}

/// A filesystem's figures as statvfs(2) reports them.
#[derive(Debug, Clone, Copy)]
struct Figures {
    blocks: u64,
    blocks_free: u64,
    fragment_size: u64,
    files: u64,
    files_free: u64,
}

/// The reply upstream agents give: bytes first, then inodes. Saturating
/// arithmetic, because a filesystem's figures can be inconsistent while
/// it changes.
fn stats_response(f: &Figures) -> VolumeStatsResponse {
    let usage = |unit: Unit, total: u64, available: u64| {
        let mut u = VolumeUsage::new();
        u.unit = unit.into();
        u.total = total;
        u.available = available;
        u.used = total.saturating_sub(available);
        u
    };
    let mut resp = VolumeStatsResponse::new();
    resp.usage = vec![
        usage(
            Unit::BYTES,
            f.blocks.saturating_mul(f.fragment_size),
            f.blocks_free.saturating_mul(f.fragment_size),
        ),
        usage(Unit::INODES, f.files, f.files_free),
    ];
    let mut condition = VolumeCondition::new();
    condition.abnormal = false;
    condition.message = "OK".into();
    resp.volume_condition = Some(condition).into();
    resp
}

/// GetVolumeStats: usage of the filesystem at `path` (below `run_dir`).
pub fn stats(path: &str, run_dir: &Path) -> Result<VolumeStatsResponse> {
    let path = check_volume_path(path, run_dir)?;
    let st = statvfs(&path)
        .map_err(|e| fail(Code::INTERNAL, format!("statfs {}: {e}", path.display())))?;
    #[allow(clippy::useless_conversion)] // the field types differ between libcs
    let figures = Figures {
        blocks: u64::from(st.blocks()),
        blocks_free: u64::from(st.blocks_free()),
        fragment_size: u64::from(st.fragment_size()),
        files: u64::from(st.files()),
        files_free: u64::from(st.files_free()),
    };
    Ok(stats_response(&figures))
}

/// One line of /proc/self/mountinfo, the fields this module needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted device.
    pub device: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space, also tab, newline
/// and backslash); other bytes, UTF-8 or not, are there as they are.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field.get(i + 1..i + 4).filter(|d| {
            field[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// Parses one mountinfo line: `id parent major:minor root mount_point
/// options [optional fields...] - fstype source super_options`.
fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let fields: Vec<&[u8]> = line
        .split(|b| *b == b' ')
        .filter(|f| !f.is_empty())
        .collect();
    let dash = fields.iter().position(|f| *f == b"-")?;
    if dash < 6 || fields.len() < dash + 3 {
        return None;
    }
    let text = |f: &[u8]| String::from_utf8_lossy(&unescape(f)).into_owned();
    Some(MountEntry {
        device: text(fields[2]),
        mount_point: PathBuf::from(OsStr::from_bytes(&unescape(fields[4]))),
        fstype: text(fields[dash + 1]),
        source: text(fields[dash + 2]),
    })
}

/// The mount on `mount_point`: the last entry, because a later mount on the
/// same point hides the earlier ones.
pub fn find_mount(mountinfo: &[u8], mount_point: &Path) -> Option<MountEntry> {
    mountinfo
        .rsplit(|b| *b == b'\n')
        .filter_map(parse_mountinfo_line)
        .find(|m| m.mount_point == mount_point)
}

/// The sysfs `size` file of the mounted device: by its name when the source
/// is a /dev node, else by its device number (e.g. a source "/dev/root").
fn device_size_file(sysfs: &Path, mount: &MountEntry) -> Option<PathBuf> {
    let by_name = mount
        .source
        .strip_prefix("/dev/")
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .map(|name| sysfs.join("class/block").join(name).join("size"));
    let by_number = sysfs.join("dev/block").join(&mount.device).join("size");
    by_name
        .into_iter()
        .chain([by_number])
        .find(|file| file.is_file())
}

fn read_device_bytes(size_file: &Path) -> Result<u64> {
    let text = fs::read_to_string(size_file)
        .map_err(|e| fail(Code::INTERNAL, format!("read {}: {e}", size_file.display())))?;
    text.trim()
        .parse::<u64>()
        .ok()
        .and_then(|sectors| sectors.checked_mul(SECTOR_BYTES))
        .ok_or_else(|| {
            fail(
                Code::INTERNAL,
                format!(
                    "{}: {:?} is not a size in 512-byte sectors",
                    size_file.display(),
                    text.trim()
                ),
            )
        })
}

/// Online shrinking does not exist for ext4; a request below the device's
/// size is a mistake of the caller.
fn check_not_shrinking(device_bytes: u64, requested: u64) -> Result<()> {
    if requested < device_bytes {
        return Err(fail(
            Code::INVALID_ARGUMENT,
            format!(
                "shrinking is not supported: device is {device_bytes} bytes, asked {requested}"
            ),
        ));
    }
    Ok(())
}

/// Waits until the device is at least `requested` bytes; returns its size.
fn wait_for_capacity(size_file: &Path, requested: u64, timeout: Duration) -> Result<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let bytes = read_device_bytes(size_file)?;
        if bytes >= requested {
            return Ok(bytes);
        }
        if Instant::now() >= deadline {
            return Err(fail(
                Code::DEADLINE_EXCEEDED,
                format!(
                    "the device ({}) is still {bytes} bytes after {timeout:?}, asked {requested}: \
                     grow the disk on the host (QMP block_resize) before calling ResizeVolume",
                    size_file.display()
                ),
            ));
        }
        std::thread::sleep(GROW_POLL);
    }
}

/// The filesystem size in blocks for a device of `bytes` (a partial block
/// at the end is not usable).
fn block_count(bytes: u64, block_size: u64) -> Option<u64> {
    bytes.checked_div(block_size)
}

/// Grows the ext4 mounted on `mount_point` to `requested` bytes.
fn grow_ext4(mount_point: &Path, requested: u64) -> Result<()> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(mount_point)
        .map_err(|e| {
            fail(
                Code::INTERNAL,
                format!("open {}: {e}", mount_point.display()),
            )
        })?;
    let st = fstatvfs(&dir).map_err(|e| {
        fail(
            Code::INTERNAL,
            format!("statfs {}: {e}", mount_point.display()),
        )
    })?;
    #[allow(clippy::useless_conversion)] // the field types differ between libcs
    let (block_size, reported_blocks) = (u64::from(st.block_size()), u64::from(st.blocks()));
    let blocks = block_count(requested, block_size).ok_or_else(|| {
        fail(
            Code::INTERNAL,
            format!("statfs {}: block size is 0", mount_point.display()),
        )
    })?;
    // statfs counts the blocks minus ext4's metadata overhead, so it is at
    // most the real count; and the real count is at most `blocks`, the disk
    // having been no larger than the request (checked before). Not above
    // it therefore means "already this size": nothing to do. Between the
    // two the kernel itself treats an unchanged count as success.
    if blocks <= reported_blocks {
        log::info!(
            "{} already spans {requested} bytes ({blocks} blocks): nothing to grow",
            mount_point.display()
        );
        return Ok(());
    }
    // SAFETY: `dir` is an open descriptor for the whole call and the
    // pointer is to a live u64 the kernel only reads.
    unsafe { ext4_resize_fs(dir.as_raw_fd(), &blocks) }.map_err(|e| {
        let code = match e {
            nix::errno::Errno::EPERM => Code::PERMISSION_DENIED,
            nix::errno::Errno::ENOTTY | nix::errno::Errno::EOPNOTSUPP => {
                Code::FAILED_PRECONDITION
            }
            _ => Code::INTERNAL,
        };
        fail(
            code,
            format!(
                "EXT4_IOC_RESIZE_FS on {} to {blocks} blocks of {block_size} bytes: {e} (see the guest's kernel log)",
                mount_point.display()
            ),
        )
    })?;
    log::info!(
        "{} grown to {blocks} blocks of {block_size} bytes",
        mount_point.display()
    );
    Ok(())
}

/// ResizeVolume: waits for the disk mounted on `path` (below `run_dir`) to
/// reach `size` bytes, then grows its ext4 filesystem to match.
pub fn resize(path: &str, size: u64, run_dir: &Path, sysfs: &Path) -> Result<()> {
    if size == 0 {
        return Err(fail(
            Code::INVALID_ARGUMENT,
            "size (field 2) is 0: give the new size of the disk in bytes",
        ));
    }
    let path = check_volume_path(path, run_dir)?;
    let mountinfo =
        fs::read(MOUNTINFO).map_err(|e| fail(Code::INTERNAL, format!("read {MOUNTINFO}: {e}")))?;
    let mount = find_mount(&mountinfo, &path).ok_or_else(|| {
        fail(
            Code::INVALID_ARGUMENT,
            format!(
                "{} is not a mount point: give the mount point of the volume's storage",
                path.display()
            ),
        )
    })?;
    if mount.fstype != "ext4" {
        return Err(fail(
            Code::FAILED_PRECONDITION,
            format!(
                "{} is a {} filesystem ({}): only ext4 grows online",
                path.display(),
                mount.fstype,
                mount.source
            ),
        ));
    }
    let size_file = device_size_file(sysfs, &mount).ok_or_else(|| {
        fail(
            Code::FAILED_PRECONDITION,
            format!(
                "{} is mounted from {} (device {}), which has no size in {}/class/block nor {}/dev/block",
                path.display(),
                mount.source,
                mount.device,
                sysfs.display(),
                sysfs.display()
            ),
        )
    })?;
    check_not_shrinking(read_device_bytes(&size_file)?, size)?;
    wait_for_capacity(&size_file, size, GROW_TIMEOUT)?;
    grow_ext4(&path, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of<T: std::fmt::Debug>(r: Result<T>) -> (Code, String) {
        let f = r.unwrap_err();
        (f.code, f.message)
    }

    #[test]
    fn volume_paths_stay_below_the_run_dir() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let vol = run.join("sandbox/storage/vol");
        fs::create_dir_all(&vol).unwrap();
        fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), run.join("link")).unwrap();
        let vol_str = vol.to_str().unwrap();
        assert_eq!(check_volume_path(vol_str, &run).unwrap(), vol);
        let run_str = run.to_str().unwrap();
        for (path, code, expect) in [
            ("", Code::INVALID_ARGUMENT, "is empty".to_string()),
            ("relative/x", Code::INVALID_ARGUMENT, "absolute".into()),
            (
                &format!("{vol_str}/../../../../etc"),
                Code::INVALID_ARGUMENT,
                "'..'".into(),
            ),
            (
                "/etc",
                Code::INVALID_ARGUMENT,
                format!("run directory {run_str}"),
            ),
            // absent outside paths are refused the same way: no probing
            ("/nonexistent", Code::INVALID_ARGUMENT, "is outside".into()),
            (run_str, Code::INVALID_ARGUMENT, "is outside".into()),
            (
                &format!("{run_str}/link"),
                Code::INVALID_ARGUMENT,
                "resolved to".into(),
            ),
            (
                &format!("{vol_str}/none"),
                Code::NOT_FOUND,
                "does not exist".into(),
            ),
        ] {
            let (c, m) = code_of(check_volume_path(path, &run));
            assert_eq!(c, code, "{path}: {m}");
            assert!(m.contains(&expect), "{path}: {m}");
        }
    }

    #[test]
    fn stats_are_reported_as_upstream() {
        let r = stats_response(&Figures {
            blocks: 1000,
            blocks_free: 250,
            fragment_size: 4096,
            files: 64,
            files_free: 60,
        });
        let bytes = &r.usage[0];
        assert_eq!(bytes.unit.enum_value(), Ok(Unit::BYTES));
        assert_eq!(
            (bytes.total, bytes.available, bytes.used),
            (4_096_000, 1_024_000, 3_072_000)
        );
        let inodes = &r.usage[1];
        assert_eq!(inodes.unit.enum_value(), Ok(Unit::INODES));
        assert_eq!((inodes.total, inodes.available, inodes.used), (64, 60, 4));
        let condition = r.volume_condition.as_ref().unwrap();
        assert!(!condition.abnormal);
        assert_eq!(condition.message, "OK");
    }

    #[test]
    fn stats_of_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        let r = stats(vol.to_str().unwrap(), dir.path()).unwrap();
        assert_eq!(r.usage.len(), 2);
        assert!(r.usage[0].total > 0 && r.usage[0].used <= r.usage[0].total);
    }

    const MOUNTINFO_SAMPLE: &[u8] = b"\
22 1 0:21 / / rw,relatime - ext4 /dev/root rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
41 30 254:16 / /run/kata-containers/sandbox/storage/vol rw,relatime shared:9 master:2 - xfs /dev/vdb rw
42 41 254:32 / /run/kata-containers/sandbox/storage/vol rw,relatime - ext4 /dev/vdc rw
43 30 254:48 / /run/kata-containers/sandbox/storage/my\\040vol rw - ext4 /dev/vdd rw
bogus line
";

    #[test]
    fn mountinfo_is_parsed() {
        let vol = Path::new("/run/kata-containers/sandbox/storage/vol");
        assert_eq!(
            find_mount(MOUNTINFO_SAMPLE, vol).unwrap(),
            MountEntry {
                device: "254:32".into(),
                mount_point: vol.into(),
                fstype: "ext4".into(),
                source: "/dev/vdc".into(),
            }
        );
        let spaced = find_mount(
            MOUNTINFO_SAMPLE,
            Path::new("/run/kata-containers/sandbox/storage/my vol"),
        )
        .unwrap();
        assert_eq!(spaced.source, "/dev/vdd");
        assert_eq!(
            find_mount(MOUNTINFO_SAMPLE, Path::new("/run"))
                .unwrap()
                .fstype,
            "tmpfs"
        );
        assert!(find_mount(MOUNTINFO_SAMPLE, Path::new("/run/kata-containers")).is_none());
        assert_eq!(unescape(br"a\134b\011c\9"), b"a\\b\tc\\9");
    }

    #[test]
    fn size_arithmetic() {
        assert_eq!(block_count(10 << 30, 4096), Some(2_621_440));
        assert_eq!(block_count((10 << 30) + 4095, 4096), Some(2_621_440));
        assert_eq!(block_count(1 << 20, 0), None);
        assert!(check_not_shrinking(1 << 30, 2 << 30).is_ok());
        assert!(check_not_shrinking(1 << 30, 1 << 30).is_ok());
        let (c, m) = code_of(check_not_shrinking(2 << 30, 1 << 30));
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert_eq!(
            m,
            "shrinking is not supported: device is 2147483648 bytes, asked 1073741824"
        );
    }

    #[test]
    fn the_device_size_is_found_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let by_name = sys.join("class/block/vdc");
        let by_number = sys.join("dev/block/254:48");
        for d in [&by_name, &by_number] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("size"), "2048\n").unwrap();
        }
        let mut mount = find_mount(
            MOUNTINFO_SAMPLE,
            Path::new("/run/kata-containers/sandbox/storage/vol"),
        )
        .unwrap();
        assert_eq!(device_size_file(sys, &mount).unwrap(), by_name.join("size"));
        mount.source = "/dev/root".into();
        mount.device = "254:48".into();
        assert_eq!(
            device_size_file(sys, &mount).unwrap(),
            by_number.join("size")
        );
        mount.device = "254:99".into();
        assert_eq!(device_size_file(sys, &mount), None);

        let size = by_name.join("size");
        assert_eq!(read_device_bytes(&size).unwrap(), 1 << 20);
        let grown = size.clone();
        let host = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fs::write(grown, "4096\n").unwrap();
        });
        assert_eq!(
            wait_for_capacity(&size, 2 << 20, Duration::from_secs(10)).unwrap(),
            2 << 20
        );
        host.join().unwrap();
        let (c, m) = code_of(wait_for_capacity(&size, 3 << 20, Duration::from_millis(60)));
        assert_eq!(c, Code::DEADLINE_EXCEEDED);
        assert!(
            m.contains("2097152 bytes") && m.contains("asked 3145728"),
            "{m}"
        );
        fs::write(&size, "lots").unwrap();
        assert_eq!(code_of(read_device_bytes(&size)).0, Code::INTERNAL);
    }

    #[test]
    fn resize_refuses_what_it_cannot_grow() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        fs::create_dir_all(&vol).unwrap();
        let vol = vol.to_str().unwrap();
        let (c, m) = code_of(resize(vol, 0, dir.path(), Path::new("/sys")));
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(m.contains("size (field 2) is 0"), "{m}");
        let (c, m) = code_of(resize(vol, 1 << 30, dir.path(), Path::new("/sys")));
        assert_eq!(c, Code::INVALID_ARGUMENT);
        assert!(m.contains("is not a mount point"), "{m}");
    }
}
