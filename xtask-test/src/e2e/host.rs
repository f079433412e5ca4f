//! What the host is running and has mounted: /proc, mountinfo, sockets;
//! how the scenarios find leftovers and measure a sandbox.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// Clock ticks after boot (field 22 of /proc/PID/stat).
    pub start_ticks: u64,
    pub zombie: bool,
    pub argv: Vec<String>,
}

impl ProcInfo {
    pub fn program(&self) -> &str {
        self.argv
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a))
            .unwrap_or("")
    }

    pub fn cmdline(&self) -> String {
        self.argv.join(" ")
    }
}

pub fn read_proc(pid: u32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold ')' or spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = fields.first()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start_ticks = fields.get(19)?.parse().ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let argv = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Some(ProcInfo {
        pid,
        ppid,
        start_ticks,
        zombie: *state == "Z" || *state == "X",
        argv,
    })
}

pub fn all_procs() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect()
}

pub(super) fn environ_has(pid: u32, entry: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|&b| b == 0).any(|e| e == entry.as_bytes()),
        Err(_) => false,
    }
}

/// `pid` and all processes descending from it.
pub fn descendants(pid: u32, procs: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut out: Vec<ProcInfo> = procs.iter().filter(|p| p.pid == pid).cloned().collect();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent && p.pid != pid) {
            frontier.push(p.pid);
            out.push(p.clone());
        }
    }
    out
}

/// Proportional set size in KiB from /proc/PID/smaps_rollup.
pub fn pss_kib(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("read /proc/{pid}/smaps_rollup"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Pss:") {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib
                .parse()
                .with_context(|| format!("/proc/{pid}/smaps_rollup: bad Pss line {line:?}"));
        }
    }
    bail!("/proc/{pid}/smaps_rollup has no Pss line")
}

/// The resident size (KiB) of the mappings of process `pid` whose path
/// contains `name`, from /proc/PID/smaps.
pub fn mapping_rss_kib(pid: u32, name: &str) -> Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("read /proc/{pid}/smaps"))?;
    let mut in_mapping = false;
    let mut kib = 0;
    for line in smaps.lines() {
        // A mapping's header starts with its address range; its fields
        // ("Rss:", ...) follow.
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_mapping = line.contains(name);
        } else if in_mapping {
            if let Some(rest) = line.strip_prefix("Rss:") {
                kib += rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .with_context(|| format!("/proc/{pid}/smaps: bad Rss line {line:?}"))?;
            }
        }
    }
    Ok(kib)
}

pub(crate) fn signal(pid: u32, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
        .with_context(|| format!("kill -{sig} {pid}"))
}

/// Mount points (decoded) of the current mount namespace.
pub(super) fn mount_points() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(super) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// Every socket below `dir`, sorted; unreadable parts are passed over.
pub(super) fn sockets_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_socket())
        .map(|e| e.into_path())
        .collect();
    out.sort();
    out
}

pub(crate) use host_support::log::tail_lines;

#[cfg(test)]
mod tests {
    use super::{pss_kib, read_proc, unescape_mountinfo};

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }

    #[test]
    fn proc_of_self_is_read() {
        let me = read_proc(std::process::id()).expect("own /proc entry");
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
        assert!(!me.argv.is_empty());
        assert!(pss_kib(std::process::id()).unwrap() > 0);
    }
}
