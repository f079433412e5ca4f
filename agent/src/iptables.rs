//! GetIPTables and SetIPTables: the guest's packet filter, read with
//! iptables-save and replaced with iptables-restore (ip6tables-save and
//! ip6tables-restore for IPv6).
//!
//! The agent links no netfilter code of its own (it is one static binary
//! with a size budget): it runs the tools of the guest image, which come
//! from the `packages` of the image's recipe. Every run is bounded in time
//! and in output, and the tool leads a process group of its own, so that a
//! run that overstays is killed together with whatever it started (iptables
//! may run modprobe).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use ttrpc::Code;

use crate::container::{Failure, Result};
use crate::reaper::{ExitStatus, Reaper};

/// Where the tools are looked for, in this order: Debian installs them in
/// /usr/sbin; /sbin covers images that keep them there.
pub const GUEST_TOOL_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];
/// How long one run of a tool may take. iptables-restore's own wait for
/// the xtables lock ([`LOCK_WAIT_SECONDS`]) fits well inside it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// `--wait` of iptables-restore: how long it waits for another writer's
/// xtables lock before giving up.
const LOCK_WAIT_SECONDS: &str = "5";
/// The most iptables-save may print: the reply must fit in one ttrpc frame
/// (4 MiB), with room for the envelope.
pub const MAX_OUTPUT: usize = protocols::requests::MAX_FRAME_PAYLOAD - 64 * 1024;
/// stderr is only read for the error message.
const MAX_STDERR: usize = 16 * 1024;
/// How long a killed tool gets to be reaped before it is left to the reaper.
const KILL_GRACE: Duration = Duration::from_secs(1);

fn fail(code: Code, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(is_ipv6: bool) -> Family {
        if is_ipv6 {
            Family::V6
        } else {
            Family::V4
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
}

/// SetIPTablesRequest.data must fit [`protocols::MAX_IPTABLES_DATA`];
/// checked before anything runs.
pub fn check_rules(rules: &[u8]) -> Result<()> {
    if rules.len() > protocols::MAX_IPTABLES_DATA {
        return Err(fail(
            Code::INVALID_ARGUMENT,
            format!(
                "data (field 2) is {} bytes, over the {} bytes one call takes: send the tables in separate calls (tables a call does not name are left alone)",
                rules.len(),
                protocols::MAX_IPTABLES_DATA
            ),
        ));
    }
    Ok(())
}

/// The tools and the bounds of their runs; the paths and bounds are
/// parameters so that tests can run stand-ins.
#[derive(Debug, Clone)]
pub struct Tools {
    pub dirs: Vec<PathBuf>,
    pub limit: Duration,
    pub max_output: usize,
}

impl Tools {
    /// The guest image's tools with the agent's bounds.
    pub fn guest() -> Tools {
        Tools {
            dirs: GUEST_TOOL_DIRS.iter().map(PathBuf::from).collect(),
            limit: RUN_TIMEOUT,
            max_output: MAX_OUTPUT,
        }
    }

    /// The first of the directories that holds an executable `name`.
    pub fn find(&self, name: &str) -> Result<PathBuf> {
        let mut broken = Vec::new();
        for dir in &self.dirs {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(path),
                Ok(_) => broken.push(format!("{} is not an executable file", path.display())),
                // a link whose target is missing (an alternatives link the
                // recipe made for a package it does not install)
                Err(_) if path.symlink_metadata().is_ok() => {
                    broken.push(format!("{} is a broken link", path.display()))
                }
                Err(_) => {}
            }
        }
        let looked: Vec<String> = self
            .dirs
            .iter()
            .map(|d| d.join(name).display().to_string())
            .collect();
        let broken = if broken.is_empty() {
            String::new()
        } else {
            format!(" ({})", broken.join(", "))
        };
        Err(fail(
            Code::FAILED_PRECONDITION,
            format!(
                "the guest image has no iptables: {name} is not at {}{broken}; add iptables to the `packages` of the image's recipe and rebuild the image",
                looked.join(" or ")
            ),
        ))
    }

    /// iptables-save's output (ip6tables-save for [`Family::V6`]).
    pub fn save(&self, reaper: &Reaper, family: Family) -> Result<Vec<u8>> {
        let tool = self.find(family.save())?;
        let run = self.run(reaper, &tool, &[], None)?;
        if run.status != ExitStatus::Exited(0) {
            return Err(fail(
                Code::INTERNAL,
                format!(
                    "{} failed ({}): {}",
                    tool.display(),
                    describe(run.status),
                    one_line(&run.stderr)
                ),
            ));
        }
        Ok(run.stdout)
    }

    /// Feeds `rules` to iptables-restore (ip6tables-restore for
    /// [`Family::V6`]) and returns what it printed.
    pub fn restore(&self, reaper: &Reaper, family: Family, rules: &[u8]) -> Result<Vec<u8>> {
        check_rules(rules)?;
        let tool = self.find(family.restore())?;
        let args = ["--wait", LOCK_WAIT_SECONDS];
        let run = self.run(reaper, &tool, &args, Some(rules))?;
        if run.status != ExitStatus::Exited(0) {
            let why = one_line(&run.stderr);
            let message = match failing_line(&why) {
                Some(line) => format!(
                    "{} rejected line {line} of the rules ({}): {why}",
                    family.restore(),
                    describe(run.status)
                ),
                None => format!(
                    "{} --wait {LOCK_WAIT_SECONDS} failed ({}): {why}",
                    tool.display(),
                    describe(run.status)
                ),
            };
            return Err(fail(Code::INTERNAL, message));
        }
        Ok(run.stdout)
    }

    fn run(
        &self,
        reaper: &Reaper,
        tool: &Path,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> Result<Run> {
        let what = || {
            let mut s = tool.display().to_string();
            for a in args {
                s.push(' ');
                s.push_str(a);
            }
            s
        };
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = reaper
            .spawn(&mut cmd)
            .map_err(|e| fail(Code::INTERNAL, format!("cannot run {}: {e}", what())))?;
        let deadline = Instant::now() + self.limit;
        let stdin = child
            .stdin
            .map(|s| (File::from(OwnedFd::from(s)), input.unwrap_or_default()));
        let (Some(stdout), Some(stderr)) = (child.stdout, child.stderr) else {
            stop(reaper, child.pid);
            return Err(fail(Code::INTERNAL, format!("{}: no output pipes", what())));
        };
        let pipes = [
            File::from(OwnedFd::from(stdout)),
            File::from(OwnedFd::from(stderr)),
        ];
        let (stdout, stderr) = match pump(stdin, pipes, deadline, self.max_output) {
            Ok(out) => out,
            Err(e) => {
                stop(reaper, child.pid);
                return Err(match e {
                    Stop::TimedOut => self.timed_out(&what()),
                    Stop::TooMuchOutput => fail(
                        Code::RESOURCE_EXHAUSTED,
                        format!(
                            "{} printed more than {} bytes, more than one reply can carry; it was stopped",
                            what(),
                            self.max_output
                        ),
                    ),
                    Stop::Io(e) => fail(Code::INTERNAL, format!("{}: {e}", what())),
                });
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match reaper.wait_timeout(child.pid, Some(left)) {
            Some(status) => Ok(Run {
                status,
                stdout,
                stderr,
            }),
            None => {
                stop(reaper, child.pid);
                Err(self.timed_out(&what()))
            }
        }
    }

    fn timed_out(&self, what: &str) -> Failure {
        fail(
            Code::DEADLINE_EXCEEDED,
            format!(
                "{what} did not finish within {:?} and was killed",
                self.limit
            ),
        )
    }
}

struct Run {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Kills the tool's process group and collects its status, so that the
/// reaper's table does not keep it.
fn stop(reaper: &Reaper, pid: i32) {
    reaper.kill_group(pid, Signal::SIGKILL);
    if reaper.wait_timeout(pid, Some(KILL_GRACE)).is_none() {
        log::warn!("iptables: pid {pid} not reaped {KILL_GRACE:?} after SIGKILL");
    }
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(c) => format!("exit status {c}"),
        ExitStatus::Signaled(s) => format!("killed by signal {s}"),
    }
}

/// stderr as one line: its lines joined with "; ", without iptables'
/// pointer to its own --help (of no use to a remote caller).
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect();
    if lines.is_empty() {
        "it printed no reason on stderr".into()
    } else {
        lines.join("; ")
    }
}

/// The line of the rules iptables-restore names in its complaint: legacy
/// prints "line N failed", nft "Error occurred at line: N".
fn failing_line(stderr: &str) -> Option<u64> {
    let number = |s: &str| {
        let digits: String = s
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    if let Some((_, rest)) = stderr.split_once("at line:") {
        return number(rest);
    }
    let (_, rest) = stderr.split_once("line ")?;
    let n = number(rest)?;
    rest.trim_start()
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .starts_with(" failed")
        .then_some(n)
}

enum Stop {
    TimedOut,
    TooMuchOutput,
    Io(io::Error),
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Writes `input` to the tool's stdin (then closes it) while reading its
/// stdout and stderr to their ends, all by `deadline`. One thread and
/// non-blocking pipes: a tool that neither reads nor exits cannot block
/// the agent past the deadline, and nothing is left running afterwards.
fn pump(
    mut stdin: Option<(File, &[u8])>,
    pipes: [File; 2],
    deadline: Instant,
    max_output: usize,
) -> std::result::Result<(Vec<u8>, Vec<u8>), Stop> {
    if let Some((file, _)) = &stdin {
        set_nonblocking(file).map_err(Stop::Io)?;
    }
    for p in &pipes {
        set_nonblocking(p).map_err(Stop::Io)?;
    }
    let mut open: [Option<File>; 2] = pipes.map(Some);
    let mut out = [Vec::new(), Vec::new()];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // all written: close stdin, the tool's end of input
        if stdin.as_ref().is_some_and(|(_, rest)| rest.is_empty()) {
            stdin = None;
        }
        if stdin.is_none() && open.iter().all(Option::is_none) {
            let [stdout, stderr] = out;
            return Ok((stdout, stderr));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Stop::TimedOut);
        }
        // index 0: stdin, 1 and 2: stdout and stderr
        let mut fds: Vec<(usize, libc::pollfd)> = Vec::with_capacity(3);
        if let Some((file, _)) = &stdin {
            fds.push((0, pollfd(file, libc::POLLOUT)));
        }
        for (i, f) in open.iter().enumerate() {
            if let Some(f) = f {
                fds.push((i + 1, pollfd(f, libc::POLLIN)));
            }
        }
        let mut raw: Vec<libc::pollfd> = fds.iter().map(|(_, p)| *p).collect();
        // round up, so that a last fraction of a millisecond is waited too
        let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `raw` is a live array of raw.len() pollfds for the call's
        // length; the descriptors are owned by `stdin` and `open`.
        let ready = unsafe { libc::poll(raw.as_mut_ptr(), raw.len() as libc::nfds_t, millis) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Stop::Io(e));
        }
        for ((which, _), p) in fds.iter().zip(&raw) {
            if p.revents == 0 {
                continue;
            }
            if *which == 0 {
                let Some((file, rest)) = &mut stdin else {
                    continue;
                };
                match file.write(rest) {
                    Ok(n) => *rest = &rest[n..],
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    // the tool stopped reading: its status and stderr say why
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => stdin = None,
                    Err(e) => return Err(Stop::Io(e)),
                }
                continue;
            }
            let i = which - 1;
            let Some(file) = &mut open[i] else {
                continue;
            };
            match file.read(&mut buf) {
                Ok(0) => open[i] = None,
                Ok(n) if i == 0 => {
                    if out[0].len() + n > max_output {
                        return Err(Stop::TooMuchOutput);
                    }
                    out[0].extend_from_slice(&buf[..n]);
                }
                Ok(n) => {
                    // stderr past its cap is read and dropped: the start
                    // says what went wrong
                    let room = MAX_STDERR.saturating_sub(out[1].len()).min(n);
                    out[1].extend_from_slice(&buf[..room]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(Stop::Io(e)),
            }
        }
    }
}

fn pollfd(file: &File, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: file.as_raw_fd(),
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory with stand-ins for the tools: shell scripts.
    fn tools(scripts: &[(&str, &str)]) -> (tempfile::TempDir, Tools) {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in scripts {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let t = Tools {
            dirs: vec![dir.path().to_owned()],
            limit: Duration::from_secs(10),
            max_output: MAX_OUTPUT,
        };
        (dir, t)
    }

    fn code_and_message<T: std::fmt::Debug>(r: Result<T>) -> (Code, String) {
        let f = r.unwrap_err();
        (f.code, f.message)
    }

    #[test]
    fn usr_sbin_is_preferred_and_sbin_is_the_fallback() {
        let root = tempfile::tempdir().unwrap();
        let usr_sbin = root.path().join("usr/sbin");
        let sbin = root.path().join("sbin");
        std::fs::create_dir_all(&usr_sbin).unwrap();
        std::fs::create_dir_all(&sbin).unwrap();
        let tools = Tools {
            dirs: vec![usr_sbin.clone(), sbin.clone()],
            ..Tools::guest()
        };
        let exe = |p: &Path| {
            std::fs::write(p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        exe(&sbin.join("iptables-save"));
        assert_eq!(
            tools.find("iptables-save").unwrap(),
            sbin.join("iptables-save")
        );
        exe(&usr_sbin.join("iptables-save"));
        assert_eq!(
            tools.find("iptables-save").unwrap(),
            usr_sbin.join("iptables-save")
        );
        // not executable, or a dangling alternatives link: not a tool
        std::fs::write(usr_sbin.join("ip6tables-save"), "").unwrap();
        std::os::unix::fs::symlink("/nonexistent/xtables", sbin.join("ip6tables-save")).unwrap();
        let (code, msg) = code_and_message(tools.find("ip6tables-save"));
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert!(
            msg.starts_with("the guest image has no iptables: ip6tables-save is not at "),
            "{msg}"
        );
        assert!(
            msg.contains("usr/sbin/ip6tables-save is not an executable file"),
            "{msg}"
        );
        assert!(
            msg.contains("sbin/ip6tables-save is a broken link"),
            "{msg}"
        );
        assert!(msg.contains("`packages` of the image's recipe"), "{msg}");
    }

    #[test]
    fn a_missing_tool_says_the_image_lacks_iptables() {
        let (_dir, tools) = tools(&[]);
        let reaper = Reaper::for_tests();
        for (r, name) in [
            (tools.save(&reaper, Family::V4), "iptables-save"),
            (tools.save(&reaper, Family::V6), "ip6tables-save"),
            (tools.restore(&reaper, Family::V4, b""), "iptables-restore"),
            (tools.restore(&reaper, Family::V6, b""), "ip6tables-restore"),
        ] {
            let (code, msg) = code_and_message(r);
            assert_eq!(code, Code::FAILED_PRECONDITION);
            assert!(
                msg.contains(&format!(
                    "the guest image has no iptables: {name} is not at"
                )),
                "{msg}"
            );
        }
    }

    #[test]
    fn save_returns_stdout_and_restore_feeds_stdin() {
        let (dir, tools) = tools(&[
            ("iptables-save", "echo '*filter'; echo COMMIT"),
            ("ip6tables-save", "echo v6 \"$#\""),
            // echoes its arguments, then its input
            ("iptables-restore", "echo \"$@\"; cat"),
            ("ip6tables-restore", "cat > \"$(dirname \"$0\")/got6\""),
        ]);
        let reaper = Reaper::for_tests();
        assert_eq!(
            tools.save(&reaper, Family::V4).unwrap(),
            b"*filter\nCOMMIT\n"
        );
        assert_eq!(tools.save(&reaper, Family::V6).unwrap(), b"v6 0\n");
        // bigger than a pipe's buffer both ways: writing and reading interleave
        let rules = "-A INPUT -j ACCEPT\n".repeat(20_000);
        let out = tools
            .restore(&reaper, Family::V4, rules.as_bytes())
            .unwrap();
        assert_eq!(out, format!("--wait 5\n{rules}").into_bytes());
        assert_eq!(tools.restore(&reaper, Family::V6, b"x\n").unwrap(), b"");
        assert_eq!(std::fs::read(dir.path().join("got6")).unwrap(), b"x\n");
    }

    #[test]
    fn failures_carry_the_tools_complaint() {
        let (_dir, tools) = tools(&[
            ("iptables-save", "echo 'iptables-save v1.8.9: Permission denied (you must be root)' >&2; exit 4"),
            // what legacy iptables-restore prints for a bad rule
            ("iptables-restore", "cat >/dev/null; echo 'iptables-restore: line 3 failed' >&2; exit 1"),
            // nft's wording, and a tool that does not read its input
            ("ip6tables-restore", "echo \"ip6tables-restore v1.8.9 (nf_tables): unknown option \\\"--bogus\\\"\" >&2; echo 'Error occurred at line: 2' >&2; echo \"Try \\`ip6tables-restore -h' for more information.\" >&2; exit 2"),
        ]);
        let reaper = Reaper::for_tests();
        let (code, msg) = code_and_message(tools.save(&reaper, Family::V4));
        assert_eq!(code, Code::INTERNAL);
        assert!(msg.ends_with("iptables-save failed (exit status 4): iptables-save v1.8.9: Permission denied (you must be root)"), "{msg}");
        let (code, msg) =
            code_and_message(tools.restore(&reaper, Family::V4, b"*filter\n-A X\nbad\n"));
        assert_eq!(code, Code::INTERNAL);
        assert_eq!(msg, "iptables-restore rejected line 3 of the rules (exit status 1): iptables-restore: line 3 failed");
        let big = "# comment\n".repeat(50_000);
        let (code, msg) = code_and_message(tools.restore(&reaper, Family::V6, big.as_bytes()));
        assert_eq!(code, Code::INTERNAL);
        assert_eq!(msg, "ip6tables-restore rejected line 2 of the rules (exit status 2): ip6tables-restore v1.8.9 (nf_tables): unknown option \"--bogus\"; Error occurred at line: 2");
    }

    #[test]
    fn runs_are_bounded_in_time_and_output() {
        let (_dir, mut tools) = tools(&[
            // a child of its own keeps the pipes open: the group is killed
            ("iptables-save", "sleep 30 & sleep 30"),
            (
                "ip6tables-save",
                "while :; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done",
            ),
            // neither reads its input nor exits
            ("iptables-restore", "sleep 30"),
        ]);
        tools.limit = Duration::from_millis(300);
        tools.max_output = 100_000;
        let reaper = Reaper::for_tests();
        let started = Instant::now();
        let (code, msg) = code_and_message(tools.save(&reaper, Family::V4));
        assert_eq!(code, Code::DEADLINE_EXCEEDED);
        assert!(
            msg.ends_with("iptables-save did not finish within 300ms and was killed"),
            "{msg}"
        );
        let (code, msg) =
            code_and_message(tools.restore(&reaper, Family::V4, &vec![b'#'; 1 << 20]));
        assert_eq!(code, Code::DEADLINE_EXCEEDED);
        assert!(
            msg.ends_with("iptables-restore --wait 5 did not finish within 300ms and was killed"),
            "{msg}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        tools.limit = Duration::from_secs(10);
        let (code, msg) = code_and_message(tools.save(&reaper, Family::V6));
        assert_eq!(code, Code::RESOURCE_EXHAUSTED);
        assert!(msg.contains("printed more than 100000 bytes"), "{msg}");
    }

    #[test]
    fn oversized_rules_are_refused_before_anything_runs() {
        let (_dir, tools) = tools(&[]);
        let rules = vec![b'#'; protocols::MAX_IPTABLES_DATA + 1];
        let (code, msg) = code_and_message(tools.restore(&Reaper::for_tests(), Family::V4, &rules));
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert_eq!(msg, "data (field 2) is 1048577 bytes, over the 1048576 bytes one call takes: send the tables in separate calls (tables a call does not name are left alone)");
        assert!(check_rules(&rules[1..]).is_ok());
    }

    #[test]
    fn the_failing_line_is_found_in_both_wordings() {
        assert_eq!(failing_line("iptables-restore: line 12 failed"), Some(12));
        assert_eq!(failing_line("x; Error occurred at line: 7; y"), Some(7));
        assert_eq!(failing_line("Couldn't load target `line 3'"), None);
        assert_eq!(failing_line("no line here"), None);
        assert_eq!(one_line(b"  a\n\nTry `x -h' for more\nb \n"), "a; b");
        assert_eq!(one_line(b""), "it printed no reason on stderr");
    }
}
