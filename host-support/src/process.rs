//! Child processes: waits with a bound, and stops that escalate from a
//! polite signal to SIGKILL, so no caller can block forever on a child or
//! leave one running.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Polling interval of bounded waits: short enough that an exit is seen
/// promptly, long enough to be free.
pub const POLL: Duration = Duration::from_millis(20);

/// Waits for `child` to exit, for at most `timeout`; `None` if it still runs.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
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

/// Stops a child: sends `signal` (if any, usually SIGTERM), waits up to
/// `grace` for it to exit, then SIGKILLs and reaps it. Never blocks much
/// longer than `grace`.
pub fn stop_child(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Command;

    #[test]
    fn bounded_wait_then_term_then_kill() {
        let mut quick = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let st = wait_timeout(&mut quick, Duration::from_secs(10)).unwrap();
        assert_eq!(st.and_then(|s| s.code()), Some(3));

        let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(wait_timeout(&mut sleeper, Duration::from_millis(50))
            .unwrap()
            .is_none());
        let st = stop_child(&mut sleeper, Some(Signal::SIGTERM), Duration::from_secs(5)).unwrap();
        assert_eq!(st.signal(), Some(libc_sig(Signal::SIGTERM)));

        // A child that ignores TERM is killed once the grace is over.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stubborn.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let t = Instant::now();
        let st = stop_child(
            &mut stubborn,
            Some(Signal::SIGTERM),
            Duration::from_millis(200),
        )
        .unwrap();
        assert_eq!(st.signal(), Some(libc_sig(Signal::SIGKILL)));
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    fn libc_sig(s: Signal) -> i32 {
        s as i32
    }
}
