//! What the agent does as PID 1 of the VM: the early mounts, the console,
//! loopback networking, and the final power-off.
//!
//! Failures here are logged and the boot goes on: a guest with a missing
//! /dev/shm still serves the runtime, which then reports the real problem;
//! a PID 1 that exits panics the kernel and reports nothing.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One early mount.
struct EarlyMount {
    fstype: &'static str,
    source: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// The mounts every guest needs, in order (later targets live on earlier
/// mounts: /dev/pts and /dev/shm on devtmpfs, /sys/fs/cgroup on sysfs).
fn early_mounts() -> Vec<EarlyMount> {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    vec![
        EarlyMount {
            fstype: "proc",
            source: "proc",
            target: "/proc",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        EarlyMount {
            fstype: "sysfs",
            source: "sysfs",
            target: "/sys",
            flags: nosuid_nodev_noexec,
            data: None,
        },
        EarlyMount {
            fstype: "devtmpfs",
            source: "dev",
            target: "/dev",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        EarlyMount {
            fstype: "devpts",
            source: "devpts",
            target: "/dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            // gid 5 is "tty" in every distribution's base files
            data: Some("gid=5,mode=0620,ptmxmode=0666"),
        },
        EarlyMount {
            fstype: "tmpfs",
            source: "shm",
            target: "/dev/shm",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        EarlyMount {
            fstype: "tmpfs",
            source: "tmpfs",
            target: "/run",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        EarlyMount {
            fstype: "cgroup2",
            source: "cgroup2",
            target: "/sys/fs/cgroup",
            flags: nosuid_nodev_noexec,
            data: None,
        },
    ]
}

/// Mounts the early filesystems. Returns the problems, which the caller logs
/// once the console works (the logger needs /dev/console, which needs /dev).
pub fn mount_early_filesystems() -> Vec<String> {
    let mut problems = Vec::new();
    for m in early_mounts() {
        let target = Path::new(m.target);
        if !target.is_dir() {
            if let Err(e) = fs::create_dir_all(target) {
                problems.push(format!(
                    "cannot create mount point {}: {e} (the rootfs must provide it)",
                    m.target
                ));
                continue;
            }
        }
        match mount(Some(m.source), target, Some(m.fstype), m.flags, m.data) {
            Ok(()) => {}
            // the kernel may have mounted it already (CONFIG_DEVTMPFS_MOUNT)
            Err(Errno::EBUSY) => {}
            Err(e) => problems.push(format!("mount {} on {}: {e}", m.fstype, m.target)),
        }
    }
    problems
}

/// Points stdin/stdout/stderr at the console (/dev/console). The kernel does
/// so for init only when the initial rootfs has a /dev/console node; after
/// devtmpfs is mounted the node always exists.
pub fn attach_console(path: &Path) -> io::Result<()> {
    let console = fs::OpenOptions::new().read(true).write(true).open(path)?;
    for fd in 0..=2 {
        nix::unistd::dup2(console.as_raw_fd(), fd).map_err(io::Error::from)?;
    }
    Ok(())
}

/// Sets a sane PATH: the kernel starts init with almost no environment.
pub fn set_default_environment() {
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
}

/// Layout of `struct ifreq` as far as SIOC[GS]IFFLAGS use it (the union is
/// 24 bytes on 64-bit Linux; only its first short matters here).
#[repr(C)]
struct IfreqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Brings a network interface up with ioctls (no `ip` binary in the guest).
/// For `lo` the kernel then assigns 127.0.0.1/8 and ::1 itself.
pub fn bring_interface_up(name: &str) -> io::Result<()> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} too long"),
        ));
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sock` is a fresh, valid descriptor (checked above) that nothing
    // else owns, so the OwnedFd is its only owner and closes it once.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req = IfreqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS reads and writes one `struct ifreq`; IfreqFlags is
    // #[repr(C)] with the name, the flags and padding to ifreq's full size,
    // and `req` lives across the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    req.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS only reads the same full-size `struct ifreq`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes orphaned descendants re-parent to the agent (they would anyway when
/// it is PID 1; in service mode this keeps container processes ours).
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag, no pointers.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the hostname if the kernel left none.
pub fn set_boot_hostname() -> io::Result<()> {
    let current = nix::unistd::gethostname().map_err(io::Error::from)?;
    let current = current.to_string_lossy();
    if current.is_empty() || current == "(none)" {
        nix::unistd::sethostname("localhost").map_err(io::Error::from)?;
    }
    Ok(())
}

/// Ends the VM: asks every other process to stop, flushes filesystems and
/// powers off. Never returns.
pub fn power_off() -> ! {
    log::info!("powering off");
    // SIGTERM then SIGKILL to everything but ourselves (kill(-1) skips PID 1)
    // SAFETY: kill(2) takes no pointers; a failure (nobody left) is harmless.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(200));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    nix::unistd::sync();
    let err = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF).unwrap_err();
    // Only reachable without CAP_SYS_BOOT; PID 1 must not exit (kernel panic),
    // so park forever and let the host's timeout kill the VM.
    log::error!("reboot(RB_POWER_OFF) failed: {err}");
    loop {
        std::thread::park();
    }
}

/// Makes a panic in init mode end the VM cleanly. The agent is built with
/// `panic = "abort"`, and PID 1 dying turns into a kernel panic whose oops
/// buries the agent's own message and leaves the VM hanging on
/// `panic=`-less kernels; instead the hook reports the panic (message and
/// location) and powers off, so the host sees the VM stop and the console
/// log says why. Install it only when the agent is PID 1.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let text = describe_panic(info.payload(), info.location(), thread.name());
        // Before the logger is installed (the early mounts), log::error!
        // would go nowhere: write to stderr, which is the console.
        if log::log_enabled!(log::Level::Error) {
            log::error!("{text}");
        } else {
            eprintln!("kata-agent: {text}");
        }
        power_off();
    }));
}

/// The line a panic is reported with: thread, location and message.
fn describe_panic(
    payload: &(dyn std::any::Any + Send),
    location: Option<&std::panic::Location<'_>>,
    thread: Option<&str>,
) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    let location = location
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "an unknown location".into());
    format!(
        "PID 1 panicked in thread {} at {location}: {message}; powering off",
        thread.unwrap_or("<unnamed>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_report_names_thread_location_and_message() {
        let here = std::panic::Location::caller();
        let text = describe_panic(&"boom", Some(here), Some("reaper"));
        assert_eq!(
            text,
            format!(
                "PID 1 panicked in thread reaper at {}:{}:{}: boom; powering off",
                here.file(),
                here.line(),
                here.column()
            )
        );
        // panic!("{x}") carries a String, not a &str
        let owned = describe_panic(&String::from("formatted 7"), None, None);
        assert_eq!(
            owned,
            "PID 1 panicked in thread <unnamed> at an unknown location: formatted 7; powering off"
        );
        assert!(describe_panic(&42u8, None, None).contains("(no message)"));
    }

    #[test]
    fn ifreq_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<IfreqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfreqFlags, flags), libc::IFNAMSIZ);
    }

    #[test]
    fn interface_name_is_checked() {
        assert!(bring_interface_up("a-name-longer-than-ifnamsiz").is_err());
    }

    #[test]
    fn early_mount_order_puts_parents_first() {
        let mounts = early_mounts();
        for (i, m) in mounts.iter().enumerate() {
            for later in &mounts[i + 1..] {
                assert!(
                    !Path::new(m.target).starts_with(later.target),
                    "{} must come after {}",
                    m.target,
                    later.target
                );
            }
        }
        for needed in [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/run",
            "/sys/fs/cgroup",
        ] {
            assert!(
                mounts.iter().any(|m| m.target == needed),
                "{needed} missing"
            );
        }
    }
}
