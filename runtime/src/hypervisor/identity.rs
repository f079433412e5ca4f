//! Proof that a pid still names the process the runtime started.
//!
//! A shim that died leaves QEMU running; containerd's `delete` action, in
//! a new process, must stop it. A pid alone is not enough: the pid may have
//! been reused since, by anything. At spawn the runtime records the pid
//! with the process's start time (field 22 of `/proc/<pid>/stat`, in clock
//! ticks since boot), and a later signal goes out only if both still match.
//! The check and the signal are tied through a pidfd opened before the
//! check, so the process checked is the process signalled.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;

/// A process as started: its pid and its start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub pid: i32,
    pub start_ticks: u64,
}

/// What [`ProcessIdentity::signal`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    Sent,
    /// No process has that pid any more.
    Gone,
    /// The pid belongs to another process now: it was not signalled.
    Reused,
}

/// The start time of `pid`, from `/proc/<pid>/stat`.
pub fn start_ticks(pid: i32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_ticks(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat: no start time field"),
        )
    })
}

/// Field 22 of a stat line. The command (field 2) is in parentheses and may
/// itself hold spaces and parentheses, so fields are counted after the last
/// `)`: there, field 3 (the state) is the first.
fn parse_start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

impl ProcessIdentity {
    /// The identity of the running process `pid`.
    pub fn of(pid: i32) -> io::Result<Self> {
        Ok(ProcessIdentity {
            pid,
            start_ticks: start_ticks(pid)?,
        })
    }

    /// The record's text: `<pid> <start_ticks>\n`.
    pub fn to_record(self) -> String {
        format!("{} {}\n", self.pid, self.start_ticks)
    }

    pub fn from_record(text: &str) -> Result<Self, String> {
        let mut it = text.split_ascii_whitespace();
        let (Some(pid), Some(ticks), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("{text:?} is not \"<pid> <start time>\""));
        };
        let pid: i32 = pid
            .parse()
            .map_err(|_| format!("pid {pid:?} is not a number"))?;
        if pid <= 1 {
            return Err(format!("pid {pid} is not a process the runtime starts"));
        }
        let start_ticks = ticks
            .parse()
            .map_err(|_| format!("start time {ticks:?} is not a number"))?;
        Ok(ProcessIdentity { pid, start_ticks })
    }

    /// Send `signal` if, and only if, the pid still names this process.
    pub fn signal(self, signal: Signal) -> io::Result<SignalOutcome> {
        // SAFETY: pidfd_open takes a pid and a flags word and returns a new
        // file descriptor or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(SignalOutcome::Gone),
                _ => Err(e),
            };
        }
        // SAFETY: the syscall returned a new descriptor that nothing else
        // owns; OwnedFd closes it once.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pidfd pins the process it was opened for: if that process is
        // ours now, it is the one the signal reaches.
        match start_ticks(self.pid) {
            Ok(t) if t == self.start_ticks => {}
            Ok(_) => return Ok(SignalOutcome::Reused),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(SignalOutcome::Gone),
            Err(e) => return Err(e),
        }
        // SAFETY: pidfd_send_signal takes the pidfd (valid, owned above), a
        // signal number, a null siginfo (allowed: the kernel fills in a
        // default one) and flags 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ESRCH) => Ok(SignalOutcome::Gone),
                _ => Err(e),
            };
        }
        Ok(SignalOutcome::Sent)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names() {
        let fields: Vec<String> = (3..=30).map(|i| i.to_string()).collect();
        let line = format!("1234 (a) b (c)) {}", fields.join(" "));
        assert_eq!(parse_start_ticks(&line), Some(22));
        assert_eq!(parse_start_ticks("1 (x) S 1"), None);
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let id = ProcessIdentity {
            pid: 4242,
            start_ticks: 987654,
        };
        assert_eq!(ProcessIdentity::from_record(&id.to_record()).unwrap(), id);
        for bad in ["", "12", "12 x", "x 12", "1 5", "-5 5", "12 5 7"] {
            assert!(ProcessIdentity::from_record(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_reused_pid_is_not_signalled() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        let real = ProcessIdentity::of(pid).unwrap();
        // The same pid with another start time: what a reused pid looks like.
        let stale = ProcessIdentity {
            pid,
            start_ticks: real.start_ticks + 1,
        };
        assert_eq!(
            stale.signal(Signal::SIGKILL).unwrap(),
            SignalOutcome::Reused
        );
        assert_eq!(
            child.try_wait().unwrap(),
            None,
            "the process must still run"
        );
        assert_eq!(real.signal(Signal::SIGKILL).unwrap(), SignalOutcome::Sent);
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert_eq!(real.signal(Signal::SIGKILL).unwrap(), SignalOutcome::Gone);
    }
}
