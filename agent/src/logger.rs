//! Minimal `log` backend writing one line per record to stderr, which in init
//! mode has been pointed at /dev/console (the VM's serial console, captured to
//! the per-sandbox log on the host).

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);
static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        (metadata.level() as usize) <= LEVEL.load(Ordering::Relaxed)
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let uptime = uptime_secs();
        let line = format!(
            "[{uptime:>10.6}] kata-agent {} {}: {}\n",
            record.level(),
            record.target(),
            record.args()
        );
        // One write per line so that lines of concurrent threads don't interleave;
        // a console that went away must not take the agent down.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

fn uptime_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// Installs the logger (idempotent) and sets the level.
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    set_level(level);
}

pub fn set_level(level: LevelFilter) {
    LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}
