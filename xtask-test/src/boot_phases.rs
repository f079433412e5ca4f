//! Where a boot's time goes, from QEMU's spawn to the agent's SERVING.
//!
//! Two clocks are involved: the host's, which saw QEMU spawn, QMP answer
//! and Health.Check say SERVING, and the guest's `CLOCK_MONOTONIC`, which
//! starts when the guest kernel's timekeeping does and stamps every agent
//! log line (`[  1.234567] kata-agent INFO ...`) on the serial console.
//! They are tied together by one event seen on both: the agent's "agent
//! API ready" line, which the host sees appear in the console file (QEMU
//! writes the serial port's bytes there as the guest writes them; TCG's
//! guest clock runs at the host's rate). Its guest stamp, subtracted from
//! the host time it appeared, places the kernel's clock start on the host
//! timeline; the agent's first line then places init.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The agent's log line once its ttrpc server listens (agent/src/main.rs).
pub const AGENT_READY: &str = "agent API ready";
/// How often the console file is read while waiting for [`AGENT_READY`].
const POLL: Duration = Duration::from_millis(2);

/// Milliseconds since QEMU was spawned, per phase end.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct BootPhases {
    /// QMP answered: QEMU built the machine and runs the guest.
    pub qemu_up_ms: f64,
    /// The guest kernel's clock started: firmware, the kernel's load and
    /// its earliest set-up lie before it.
    pub kernel_clock_ms: f64,
    /// The agent's first log line: the kernel (or systemd) started it.
    pub agent_start_ms: f64,
    /// The agent's ttrpc server listens.
    pub agent_ready_ms: f64,
    /// The host's Health.Check answered SERVING.
    pub serving_ms: f64,
}

impl BootPhases {
    /// The phases from the host times (since spawn) of QMP, the ready line
    /// and SERVING, and the console text; None if the console lacks the
    /// agent's stamped lines.
    pub fn from_console(
        console: &str,
        qemu_up: Duration,
        ready_seen: Duration,
        serving: Duration,
    ) -> Option<BootPhases> {
        let (first, ready) = agent_stamps(console)?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let kernel_clock_ms = ms(ready_seen) - ready * 1000.0;
        Some(BootPhases {
            qemu_up_ms: ms(qemu_up),
            kernel_clock_ms,
            agent_start_ms: kernel_clock_ms + first * 1000.0,
            agent_ready_ms: ms(ready_seen),
            serving_ms: ms(serving),
        })
    }

    /// One line, e.g. `QEMU up 80, kernel clock 410, agent start 1210,
    /// agent ready 1500, SERVING 1560 ms`.
    pub fn describe(&self) -> String {
        format!(
            "QEMU up {:.0}, kernel clock {:.0}, agent start {:.0}, agent ready {:.0}, SERVING {:.0} ms",
            self.qemu_up_ms,
            self.kernel_clock_ms,
            self.agent_start_ms,
            self.agent_ready_ms,
            self.serving_ms
        )
    }
}

/// Each phase's median over boots; None without a sample.
pub fn median_phases(samples: &[BootPhases]) -> Option<BootPhases> {
    if samples.is_empty() {
        return None;
    }
    let m = |f: fn(&BootPhases) -> f64| crate::bench::median(samples.iter().map(f).collect());
    Some(BootPhases {
        qemu_up_ms: m(|p| p.qemu_up_ms),
        kernel_clock_ms: m(|p| p.kernel_clock_ms),
        agent_start_ms: m(|p| p.agent_start_ms),
        agent_ready_ms: m(|p| p.agent_ready_ms),
        serving_ms: m(|p| p.serving_ms),
    })
}

/// The guest-clock stamps (seconds) of the agent's first log line and of
/// its [`AGENT_READY`] line. Lines forwarded by journald carry their own
/// prefix before the agent's stamp; only the stamp right before
/// "] kata-agent " counts.
pub fn agent_stamps(console: &str) -> Option<(f64, f64)> {
    let stamp = |line: &str| -> Option<f64> {
        let end = line.find("] kata-agent ")?;
        let start = line[..end].rfind('[')?;
        line[start + 1..end].trim().parse().ok()
    };
    let first = console.lines().find_map(stamp)?;
    let ready = console
        .lines()
        .filter(|l| l.contains(AGENT_READY))
        .find_map(stamp)?;
    Some((first, ready))
}

/// Watches a console file from another thread and notes when the agent's
/// ready line first appears in it.
pub struct ConsoleWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Option<Instant>>,
}

impl ConsoleWatch {
    pub fn start(path: &Path) -> ConsoleWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let path: PathBuf = path.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Only what QEMU appended since the last look is read, so the
            // watch costs little beside the TCG guest it is timing; the
            // tail kept from the last read catches a line split between two.
            let mut file = None;
            let mut seen: Vec<u8> = Vec::new();
            let keep = AGENT_READY.len() - 1;
            while !flag.load(Ordering::Relaxed) {
                if file.is_none() {
                    file = std::fs::File::open(&path).ok();
                }
                if let Some(f) = file.as_mut() {
                    if f.read_to_end(&mut seen).is_ok()
                        && seen
                            .windows(AGENT_READY.len())
                            .any(|w| w == AGENT_READY.as_bytes())
                    {
                        return Some(Instant::now());
                    }
                    let cut = seen.len().saturating_sub(keep);
                    seen.drain(..cut);
                }
                std::thread::sleep(POLL);
            }
            None
        });
        ConsoleWatch { stop, thread }
    }

    /// When the ready line appeared, if it did before now.
    pub fn finish(self) -> Option<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "[    0.512000] Run /init as init process\n\
        [    0.600100] kata-agent INFO kata_agent: kata-agent 3.2.0 starting in init mode, serving on vsock://-1:1024\n\
        [    0.700000] kata-agent INFO kata_agent: agent API ready on vsock://-1:1024\n";

    #[test]
    fn the_agent_stamps_are_read_from_its_own_lines() {
        assert_eq!(agent_stamps(CONSOLE), Some((0.6001, 0.7)));
        // journald's console forward puts its own stamp and name first.
        let journald = "[    3.100000] kata-agent[201]: [    3.050000] kata-agent INFO kata_agent: starting\n\
                        [    3.300000] kata-agent[201]: [    3.250000] kata-agent INFO kata_agent: agent API ready on vsock://-1:1024\n";
        assert_eq!(agent_stamps(journald), Some((3.05, 3.25)));
        assert_eq!(agent_stamps("[ 0.5] Run /init as init process\n"), None);
    }

    #[test]
    fn phases_place_the_guest_clock_on_the_host_timeline() {
        let p = BootPhases::from_console(
            CONSOLE,
            Duration::from_millis(90),
            Duration::from_millis(1500),
            Duration::from_millis(1560),
        )
        .unwrap();
        assert_eq!(p.kernel_clock_ms, 800.0);
        assert!((p.agent_start_ms - 1400.1).abs() < 1e-6, "{p:?}");
        assert_eq!(p.agent_ready_ms, 1500.0);
        assert_eq!(p.serving_ms, 1560.0);
        assert!(p
            .describe()
            .starts_with("QEMU up 90, kernel clock 800, agent start 1400"));
        assert_eq!(
            BootPhases::from_console("", Duration::ZERO, Duration::ZERO, Duration::ZERO),
            None
        );
        let later = BootPhases {
            qemu_up_ms: 110.0,
            ..p
        };
        let m = median_phases(&[p, later, later]).unwrap();
        assert_eq!(m.qemu_up_ms, 110.0);
        assert_eq!(median_phases(&[]), None);
    }

    #[test]
    fn the_watch_sees_the_ready_line_even_when_written_in_pieces() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let watch = ConsoleWatch::start(&path);
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"[ 0.1] kata-agent INFO x: starting\n[ 0.2] kata-agent INFO x: agent API ")
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let before = Instant::now();
        f.write_all(b"ready on vsock://-1:1024\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !watch.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let seen = watch.finish().expect("the ready line was written");
        assert!(seen >= before, "seen before the line was complete");
        // Without the line, the watch ends empty when told to.
        let quiet = ConsoleWatch::start(&dir.path().join("other.log"));
        assert_eq!(quiet.finish(), None);
    }
}
