//! Child-process helpers: bounded waits and stop-with-escalation, so that no
//! path through the hypervisor layer can block forever on a child or leave
//! one running.

use std::os::unix::process::CommandExt;
use std::process::Command;

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
