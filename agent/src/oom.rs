//! OOM kills in the containers' cgroups, for GetOOMEvent.
//!
//! Each container's cgroup v2 `memory.events` is watched with inotify (the
//! kernel signals a modification of the file whenever one of its counters
//! moves); one thread reads the notifications, re-reads the file and, when
//! `oom_kill` grew, queues the container id. GetOOMEvent takes ids from the
//! queue, blocking while it is empty: on its own ttrpc worker, as the sync
//! server starts another worker for the connection's next request.
//! The wait ends when the sandbox is destroyed ([`OomEvents::close`]), when
//! the caller's connection goes away, or at the request's deadline.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The cgroup v2 file whose `oom_kill` counter is watched.
pub const MEMORY_EVENTS: &str = "memory.events";
/// How often a blocked wait checks whether its caller is still there.
const CANCEL_POLL: Duration = Duration::from_millis(500);

/// The `oom_kill` counter of a `memory.events` text.
pub fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

struct Watched {
    container_id: String,
    events_file: PathBuf,
    oom_kills: u64,
}

#[derive(Default)]
struct State {
    /// By inotify watch descriptor.
    watched: HashMap<i32, Watched>,
    queue: VecDeque<String>,
    closed: bool,
}

struct Shared {
    inotify: Option<OwnedFd>,
    state: Mutex<State>,
    queued: Condvar,
}

/// Why [`OomEvents::next`] returned without an event.
#[derive(Debug, PartialEq, Eq)]
pub enum NoEvent {
    /// The sandbox is being destroyed.
    Closed,
    /// The caller went away.
    Cancelled,
    DeadlineExceeded,
    /// inotify could not be set up when the agent started.
    Unavailable,
}

#[derive(Clone)]
pub struct OomEvents {
    shared: Arc<Shared>,
}

impl OomEvents {
    /// Starts the watcher thread. Without inotify (it cannot fail in a sane
    /// guest) the agent still serves, and GetOOMEvent says why it cannot.
    pub fn start() -> OomEvents {
        // SAFETY: inotify_init1 takes flags only; a non-negative result is a
        // new fd owned here.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        let inotify = if fd < 0 {
            log::error!(
                "inotify_init1: {}: OOM events are not reported",
                io::Error::last_os_error()
            );
            None
        } else {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let events = OomEvents {
            shared: Arc::new(Shared {
                inotify,
                state: Mutex::new(State::default()),
                queued: Condvar::new(),
            }),
        };
        if events.shared.inotify.is_some() {
            let shared = events.shared.clone();
            std::thread::spawn(move || read_notifications(&shared));
        }
        events
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the cgroup `cgroup_dir` of `container_id`.
    pub fn watch(&self, container_id: &str, cgroup_dir: &Path) -> io::Result<()> {
        let Some(inotify) = &self.shared.inotify else {
            return Ok(());
        };
        let events_file = cgroup_dir.join(MEMORY_EVENTS);
        let path = CString::new(events_file.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut state = self.state();
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd =
            unsafe { libc::inotify_add_watch(inotify.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        let oom_kills = oom_kills(&fs::read_to_string(&events_file).unwrap_or_default());
        state.watched.insert(
            wd,
            Watched {
                container_id: container_id.to_string(),
                events_file,
                oom_kills,
            },
        );
        Ok(())
    }

    /// Stops watching `container_id` (its cgroup is about to go).
    pub fn unwatch(&self, container_id: &str) {
        let Some(inotify) = &self.shared.inotify else {
            return;
        };
        let mut state = self.state();
        let wds: Vec<i32> = state
            .watched
            .iter()
            .filter(|(_, w)| w.container_id == container_id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            state.watched.remove(&wd);
            // SAFETY: a valid inotify fd; a stale wd only fails EINVAL.
            unsafe { libc::inotify_rm_watch(inotify.as_raw_fd(), wd) };
        }
    }

    /// The next container with an OOM kill. `cancelled` is asked every
    /// [`CANCEL_POLL`] whether the caller is gone.
    pub fn next(
        &self,
        deadline: Option<Instant>,
        cancelled: impl Fn() -> bool,
    ) -> Result<String, NoEvent> {
        if self.shared.inotify.is_none() {
            return Err(NoEvent::Unavailable);
        }
        let mut state = self.state();
        loop {
            if let Some(id) = state.queue.pop_front() {
                return Ok(id);
            }
            if state.closed {
                return Err(NoEvent::Closed);
            }
            if cancelled() {
                return Err(NoEvent::Cancelled);
            }
            let mut wait = CANCEL_POLL;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(NoEvent::DeadlineExceeded);
                }
                wait = wait.min(left);
            }
            state = self
                .shared
                .queued
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Ends every wait, now and later: the sandbox is being destroyed.
    pub fn close(&self) {
        self.state().closed = true;
        self.shared.queued.notify_all();
    }
}

/// Re-reads the counter of watch `wd`; queues its container when it grew.
fn check(shared: &Shared, wd: i32) {
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(w) = state.watched.get_mut(&wd) else {
        return;
    };
    let now = oom_kills(&fs::read_to_string(&w.events_file).unwrap_or_default());
    if now <= w.oom_kills {
        return;
    }
    log::info!(
        "container {}: OOM kill in its cgroup (oom_kill {} -> {now})",
        w.container_id,
        w.oom_kills
    );
    w.oom_kills = now;
    let id = w.container_id.clone();
    state.queue.push_back(id);
    shared.queued.notify_all();
}

/// The watcher thread: inotify events are `struct inotify_event` (wd i32,
/// mask u32, cookie u32, len u32, then `len` bytes of name) back to back.
fn read_notifications(shared: &Shared) {
    let Some(fd) = shared.inotify.as_ref().map(|f| f.as_raw_fd()) else {
        return;
    };
    const HEADER: usize = 16;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reading into a buffer we own, of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("OOM watcher: read inotify: {e}; OOM events stop");
            return;
        }
        let mut at = 0;
        while at + HEADER <= n as usize {
            let field = |i: usize| {
                u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap_or_default())
            };
            let wd = field(0) as i32;
            let mask = field(4);
            let len = field(12) as usize;
            at += HEADER + len;
            if mask & libc::IN_IGNORED != 0 {
                // the cgroup was removed under the watch
                let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                state.watched.remove(&wd);
            } else {
                check(shared, wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_kill_counter_is_read() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(oom_kills(text), 2);
        assert_eq!(oom_kills("oom 1\n"), 0);
        assert_eq!(oom_kills(""), 0);
    }

    #[test]
    fn a_growing_counter_queues_its_container_once() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join(MEMORY_EVENTS);
        fs::write(&events, "oom 0\noom_kill 1\n").unwrap();
        let oom = OomEvents::start();
        oom.watch("c1", dir.path()).unwrap();
        // the baseline is not an event
        let soon = || Some(Instant::now() + Duration::from_millis(300));
        assert_eq!(oom.next(soon(), || false), Err(NoEvent::DeadlineExceeded));
        // inotify sees a write to a regular file as the kernel's
        // notification on the cgroup file
        fs::write(&events, "oom 1\noom_kill 2\n").unwrap();
        let deadline = Some(Instant::now() + Duration::from_secs(5));
        assert_eq!(oom.next(deadline, || false).as_deref(), Ok("c1"));
        assert_eq!(oom.next(soon(), || false), Err(NoEvent::DeadlineExceeded));
        // an unchanged counter is no event
        fs::write(&events, "oom 1\noom_kill 2\nmax 3\n").unwrap();
        assert_eq!(oom.next(soon(), || false), Err(NoEvent::DeadlineExceeded));
        // a gone caller ends the wait, so does the sandbox's end
        assert_eq!(oom.next(None, || true), Err(NoEvent::Cancelled));
        let waiter = {
            let oom = oom.clone();
            std::thread::spawn(move || oom.next(None, || false))
        };
        std::thread::sleep(Duration::from_millis(100));
        oom.close();
        assert_eq!(waiter.join().unwrap(), Err(NoEvent::Closed));
        // unwatched: nothing is queued any more
        oom.unwatch("c1");
        assert!(oom.state().watched.is_empty());
    }
}
