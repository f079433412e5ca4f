//! Child reaping that does not steal exit statuses.
//!
//! As PID 1 (or a child subreaper) the agent inherits every orphan in the
//! guest and must reap them, but it also waits for its own children (debug
//! console now, container processes next). A plain `waitpid(-1)` loop would
//! swallow their statuses, and a `waitpid(pid)` elsewhere would race with it.
//! So one thread reaps everything, and children the agent cares about are
//! *tracked*: their status is kept until [`Reaper::wait`] collects it.
//!
//! Tracking is race-free because the lock that guards the table is held both
//! while spawning (from fork until the pid is in the table) and while reaping:
//! a child that dies immediately is reaped only after it is registered.
//!
//! SIGCHLD wakes the reaper thread through a self-pipe written by an
//! async-signal-safe handler, which works whatever the signal masks of the
//! other threads are.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a tracked child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The shell convention upstream's WaitProcess reports: the exit code,
    /// or 128 + signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

/// A child spawned through the reaper: its pid and pipes, deliberately
/// without `std::process::Child`'s wait methods (the reaper owns reaping).
#[derive(Debug)]
#[allow(dead_code)] // the pipes are for ExecProcess/ReadStdout (next issue)
pub struct TrackedChild {
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

#[derive(Default)]
struct Table {
    /// Tracked pid -> status once reaped.
    tracked: HashMap<i32, Option<ExitStatus>>,
}

struct Shared {
    table: Mutex<Table>,
    exited: Condvar,
}

#[derive(Clone)]
pub struct Reaper {
    shared: Arc<Shared>,
}

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 1u8;
        // A full pipe already holds a pending wake-up: nothing is lost.
        // SAFETY: write(2) is async-signal-safe; the pointer is to one live
        // byte on this stack and `fd` is the pipe's write end, which is never
        // closed (forgotten in Reaper::start).
        unsafe { libc::write(fd, &byte as *const u8 as *const libc::c_void, 1) };
    }
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts the reaping thread. Call once.
    pub fn start() -> io::Result<Reaper> {
        let (read_end, write_end) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(io::Error::from)?;
        let write_end: OwnedFd = write_end;
        WAKE_FD.store(write_end.as_raw_fd(), Ordering::SeqCst);
        std::mem::forget(write_end); // lives as long as the process

        let action = SigAction::new(
            SigHandler::Handler(on_sigchld),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
            SigSet::empty(),
        );
        // SAFETY: the handler only loads an atomic and calls write(2), both
        // async-signal-safe, and WAKE_FD is set before it is installed.
        unsafe { sigaction(Signal::SIGCHLD, &action) }.map_err(io::Error::from)?;

        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            exited: Condvar::new(),
        });
        let reaper = Reaper { shared };
        let thread_reaper = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || thread_reaper.run(read_end))?;
        Ok(reaper)
    }

    /// The one real reaper of a unit-test process (the SIGCHLD handler and
    /// `waitpid(-1)` are process-wide), started on first use.
    #[cfg(test)]
    pub fn for_tests() -> Reaper {
        static SHARED: std::sync::OnceLock<Reaper> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| Reaper::start().expect("start the test reaper"))
            .clone()
    }

    /// A reaper without a thread or signal handler, for unit tests of code
    /// that only needs a handle.
    #[cfg(test)]
    pub fn inert() -> Reaper {
        Reaper {
            shared: Arc::new(Shared {
                table: Mutex::new(Table::default()),
                exited: Condvar::new(),
            }),
        }
    }

    fn run(&self, wake: OwnedFd) {
        let mut buf = [0u8; 64];
        loop {
            self.reap_all();
            // Block until SIGCHLD; the timeout is a safety net in case a
            // wake-up is ever missed (e.g. a child that exited before start).
            let mut pfd = libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, on this stack, for the call's length.
            unsafe { libc::poll(&mut pfd, 1, 5_000) };
            // SAFETY: `buf` is a live, writable buffer of buf.len() bytes and
            // `wake` an open descriptor owned by this thread.
            while unsafe {
                libc::read(
                    wake.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            } > 0
            {}
        }
    }

    fn reap_all(&self) {
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut any_tracked = false;
        loop {
            let (pid, status) = match waitpid(
                Pid::from_raw(-1),
                // __WALL: libcontainer clones container processes with no
                // exit signal; plain waitpid would never see them
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, ExitStatus::Signaled(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => continue, // stopped/continued: not an exit
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid failed: {e}");
                    break;
                }
            };
            match table.tracked.get_mut(&pid.as_raw()) {
                Some(slot) => {
                    *slot = Some(status);
                    any_tracked = true;
                }
                None => log::debug!("reaped orphan pid {pid} ({status:?})"),
            }
        }
        if any_tracked {
            self.shared.exited.notify_all();
        }
    }

    /// Spawns `cmd` as a tracked child; collect its status with
    /// [`Reaper::wait`]`(child.pid)`.
    // The std Child is dropped without wait() on purpose: the reaper thread reaps it.
    #[allow(clippy::zombie_processes)]
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<TrackedChild> {
        self.track(|| {
            let mut child = cmd.spawn()?;
            let tracked = TrackedChild {
                pid: child.id() as i32,
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
            };
            Ok((tracked.pid, tracked))
        })
    }

    /// Runs `start`, which creates a child process and returns its pid, and
    /// tracks that pid. For children created by other means than `Command`
    /// (fork/clone for containers).
    pub fn track<T>(&self, start: impl FnOnce() -> io::Result<(i32, T)>) -> io::Result<T> {
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        let (pid, value) = start()?;
        table.tracked.insert(pid, None);
        Ok(value)
    }

    /// Sends `sig` to the process group led by tracked child `pid` (a
    /// session leader, e.g. the debug shell) unless the child was already
    /// reaped. Holding the table lock while signalling keeps this race-free:
    /// an unreaped pid cannot be reused. False when nothing was signalled.
    pub fn kill_group(&self, pid: i32, sig: Signal) -> bool {
        let table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        matches!(table.tracked.get(&pid), Some(None))
            && nix::sys::signal::killpg(Pid::from_raw(pid), sig).is_ok()
    }

    /// Waits for a tracked child to exit and forgets it. `None` if the pid is
    /// not tracked (never was, or was already collected).
    pub fn wait(&self, pid: i32) -> Option<ExitStatus> {
        self.wait_timeout(pid, None)
    }

    /// Like [`Reaper::wait`] with a limit; `None` on timeout too (the child
    /// stays tracked then).
    pub fn wait_timeout(&self, pid: i32, limit: Option<Duration>) -> Option<ExitStatus> {
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match table.tracked.get(&pid) {
                None => return None,
                Some(Some(status)) => {
                    let status = *status;
                    table.tracked.remove(&pid);
                    return Some(status);
                }
                Some(None) => {}
            }
            table = match deadline {
                None => self
                    .shared
                    .exited
                    .wait(table)
                    .unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        return None;
                    }
                    self.shared
                        .exited
                        .wait_timeout(table, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The reaper is process-global (SIGCHLD handler, reaps every child):
    // tests share Reaper::for_tests().
    #[test]
    #[allow(clippy::zombie_processes)] // the reaper under test does the waiting
    fn tracked_children_keep_their_status_and_orphans_are_reaped() {
        let reaper = Reaper::for_tests();
        let quick = reaper
            .spawn(Command::new("sh").args(["-c", "exit 7"]))
            .unwrap();
        let killed = reaper
            .spawn(Command::new("sh").args(["-c", "kill -9 $$"]))
            .unwrap();
        // an untracked child the reaper must collect by itself
        let untracked = Command::new("true").spawn().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(reaper.wait(quick.pid), Some(ExitStatus::Exited(7)));
        assert_eq!(reaper.wait(killed.pid).map(ExitStatus::code), Some(128 + 9));
        // collected once only
        assert_eq!(reaper.wait(quick.pid), None);
        let slow = reaper.spawn(Command::new("sleep").arg("5")).unwrap();
        assert_eq!(
            reaper.wait_timeout(slow.pid, Some(Duration::from_millis(100))),
            None
        );
        // `sleep` leads no process group of its own: killpg fails
        assert!(!reaper.kill_group(slow.pid, Signal::SIGKILL));
        // SAFETY: kill(2) takes no pointers; `slow` is our unreaped child,
        // so its pid cannot have been reused.
        unsafe { libc::kill(slow.pid, libc::SIGKILL) };
        assert_eq!(reaper.wait(slow.pid), Some(ExitStatus::Signaled(9)));
        // reaped and collected: never signalled again
        assert!(!reaper.kill_group(slow.pid, Signal::SIGKILL));
        // the untracked child is no zombie: it was reaped (no /proc entry left)
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::path::Path::new(&format!("/proc/{}", untracked.id())).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "untracked child was not reaped"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
