//! Child-process helpers: bounded waits and stop-with-escalation, so that no
//! path through the hypervisor layer can block forever on a child or leave
//! one running.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Polling interval of bounded waits: short enough that a VM's exit is seen
/// promptly, long enough to be free.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// Ask the kernel to SIGKILL the child when the thread that spawned it dies.
/// This covers the one path Drop cannot: our own process being killed.
/// Caveat (documented on `QemuConfig::kill_on_parent_death`): the trigger is
/// the spawning *thread*, not the process.
pub(crate) fn kill_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Wait for `child` to exit, for at most `timeout`.
pub(crate) fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// Stop a child: send `signal` (if any), wait up to `grace` for it to exit,
/// then SIGKILL and reap. Never blocks much longer than `grace`.
pub(crate) fn stop_child(
    child: &mut Child,
    signal: Option<Signal>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if let Some(sig) = signal {
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
    }
    if !grace.is_zero() {
        if let Some(status) = wait_timeout(child, grace)? {
            return Ok(status);
        }
    }
    // SIGKILL cannot be refused: the following wait is bounded.
    let _ = child.kill();
    child.wait()
}

/// The last `lines` lines of a (log) file, lossily decoded; empty if missing.
pub(crate) fn tail_file(path: &Path, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}
