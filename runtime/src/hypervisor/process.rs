//! Child-process helpers: bounded waits and stop-with-escalation, so that no
//! path through the hypervisor layer can block forever on a child or leave
//! one running.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::identity::{start_ticks, ProcessIdentity};

/// Bounded waits, TERM→KILL stops and log tails are host-support's, shared
/// with the pipeline and the test harness.
pub(crate) use host_support::log::tail_lines as tail_file;
pub(crate) use host_support::process::{stop_child, wait_timeout, POLL};

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

/// Let the child keep `fds` open across exec under their own numbers (the
/// command line names them): they are close-on-exec in the parent, so no
/// other child inherits them.
pub(crate) fn inherit_fds(cmd: &mut Command, fds: Vec<std::os::fd::RawFd>) {
    // SAFETY: fcntl is async-signal-safe; it changes the flags of the
    // child's copies of descriptors the caller keeps open until the spawn
    // returns, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// [`stop_child`] for a child whose identity was recorded at spawn.
/// `Ok(Some(status))`: stopped and reaped here. `Ok(None)`: another waiter
/// had reaped it (the wait failed with ECHILD) and `/proc` shows that the
/// process is gone, so it is stopped, its status unknown. ECHILD while
/// `/proc` still shows the process (or without an identity to check) is
/// an error: nothing proves it stopped.
pub(crate) fn stop_identified_child(
    child: &mut Child,
    identity: Option<ProcessIdentity>,
    signal: Option<Signal>,
    grace: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    match stop_child(child, signal, grace) {
        Ok(status) => Ok(Some(status)),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => match identity {
            Some(id) if gone(id)? => Ok(None),
            Some(id) => Err(std::io::Error::other(format!(
                "{e}, yet /proc/{} is still the process started (start time {})",
                id.pid, id.start_ticks
            ))),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Whether the process `id` no longer exists: no `/proc/<pid>`, or the
/// pid names a process with another start time (reused).
pub(crate) fn gone(id: ProcessIdentity) -> std::io::Result<bool> {
    match start_ticks(id.pid) {
        Ok(t) => Ok(t != id.start_ticks),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a stray `waitpid(-1)` reaper does to a child of ours.
    fn reap_behind_its_back(child: &Child) {
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill and waitpid take a pid and, for waitpid, a pointer
        // to a local int.
        unsafe {
            assert_eq!(libc::kill(pid, libc::SIGKILL), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        }
    }

    #[test]
    fn a_child_reaped_elsewhere_and_gone_counts_as_stopped() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessIdentity::of(child.id() as i32).unwrap();
        reap_behind_its_back(&child);
        // What the teardown saw before: the wait fails with ECHILD.
        let e = stop_child(&mut child, None, Duration::ZERO).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECHILD));
        assert!(gone(id).unwrap());
        assert_eq!(
            stop_identified_child(&mut child, Some(id), None, Duration::ZERO).unwrap(),
            None
        );
        // Without an identity nothing proves it gone: still an error.
        let e = stop_identified_child(&mut child, None, None, Duration::ZERO).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ECHILD));
    }

    #[test]
    fn a_child_reaped_here_gives_its_status() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessIdentity::of(child.id() as i32).unwrap();
        let status = stop_identified_child(
            &mut child,
            Some(id),
            Some(Signal::SIGTERM),
            Duration::from_secs(10),
        )
        .unwrap()
        .expect("reaped here");
        assert!(!status.success());
    }

    #[test]
    fn a_live_process_is_not_gone() {
        // This process: alive, same start time.
        let me = ProcessIdentity::of(std::process::id() as i32).unwrap();
        assert!(!gone(me).unwrap());
        // Its pid with another start time: reused, i.e. the one meant is gone.
        let other = ProcessIdentity {
            pid: me.pid,
            start_ticks: me.start_ticks + 1,
        };
        assert!(gone(other).unwrap());
    }
}
