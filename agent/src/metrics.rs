//! `GetMetrics`: the agent's and the guest's figures from /proc, with
//! upstream's family names (`kata_agent_*`, `kata_guest_*`), as Prometheus
//! text (exposition format 0.0.4), which the shim merges into its
//! `/metrics`.
//!
//! The text is written here rather than with a metrics crate: the agent
//! has a size budget (4 MiB), and this is a handful of gauges read on each
//! call, with no registry to keep.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Calls so far (`kata_agent_scrape_count`).
static SCRAPES: AtomicU64 = AtomicU64::new(0);

/// Prometheus text being written: families, then their samples.
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"");
                for c in v.chars() {
                    match c {
                        '\\' => self.0.push_str("\\\\"),
                        '"' => self.0.push_str("\\\""),
                        '\n' => self.0.push_str("\\n"),
                        c => self.0.push(c),
                    }
                }
                self.0.push('"');
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A gauge family with one `item` label, if there is anything to say.
    fn items(&mut self, name: &str, help: &str, items: &[(String, u64)]) {
        if items.is_empty() {
            return;
        }
        self.family(name, "gauge", help);
        for (item, value) in items {
            self.sample(name, &[("item", item)], value);
        }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `Key: value [kB]` lines, kB in bytes, keys as `rename` gives them
/// (`None`: left out).
fn key_values(text: &str, rename: impl Fn(&str) -> Option<String>) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let mut words = rest.split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            let scale = if words.next() == Some("kB") { 1024 } else { 1 };
            Some((rename(key.trim())?, value.saturating_mul(scale)))
        })
        .collect()
}

/// `/proc/meminfo` keys the way upstream's agent names them:
/// `MemTotal` -> `mem_total`, `Active(anon)` -> `active_anon`,
/// `DirectMap4k` -> `direct_map_4k`, `KReclaimable` -> `k_reclaimable`.
fn snake_case(key: &str) -> String {
    let chars: Vec<char> = key.chars().filter(|c| *c != ')').collect();
    let mut out = String::with_capacity(key.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| chars[p]);
        let next = chars.get(i + 1).copied();
        let boundary = match prev {
            None => false,
            Some(p) if p == '_' || p == '(' => false,
            Some(p) => {
                (c.is_ascii_uppercase()
                    && (p.is_ascii_lowercase()
                        || p.is_ascii_digit()
                        || next.is_some_and(|n| n.is_ascii_lowercase())))
                    || (c.is_ascii_digit() && p.is_ascii_alphabetic())
            }
        };
        if boundary {
            out.push('_');
        }
        out.push(if c == '(' {
            '_'
        } else {
            c.to_ascii_lowercase()
        });
    }
    out
}

/// The agent's own process: upstream's `kata_agent_*` families.
fn agent_process(t: &mut Text) {
    let status = read("/proc/self/status");
    if let Some((_, threads)) = key_values(&status, |k| (k == "Threads").then(|| k.into())).pop() {
        t.family("kata_agent_threads", "gauge", "Agent process threads.");
        t.sample("kata_agent_threads", &[], threads);
    }
    const STATUS: [&str; 18] = [
        "VmPeak",
        "VmSize",
        "VmLck",
        "VmPin",
        "VmHWM",
        "VmRSS",
        "RssAnon",
        "RssFile",
        "RssShmem",
        "VmData",
        "VmStk",
        "VmExe",
        "VmLib",
        "VmPTE",
        "VmSwap",
        "HugetlbPages",
        "voluntary_ctxt_switches",
        "nonvoluntary_ctxt_switches",
    ];
    let items = key_values(&status, |k| {
        STATUS.contains(&k).then(|| k.to_ascii_lowercase())
    });
    t.items(
        "kata_agent_proc_status",
        "Agent process status (/proc/self/status, sizes in bytes).",
        &items,
    );

    const IO: [&str; 7] = [
        "rchar",
        "wchar",
        "syscr",
        "syscw",
        "read_bytes",
        "write_bytes",
        "cancelled_write_bytes",
    ];
    let items = key_values(&read("/proc/self/io"), |k| {
        IO.contains(&k).then(|| k.into())
    });
    t.items(
        "kata_agent_io_stat",
        "Agent process I/O (/proc/self/io).",
        &items,
    );

    let stat = read("/proc/self/stat");
    // Fields after the command name, which may hold spaces: field N is
    // fields[N - 3].
    let fields: Vec<u64> = stat
        .rfind(')')
        .map(|i| {
            stat[i + 1..]
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    if fields.len() > 21 {
        let field = |n: usize| fields[n - 3];
        let ticks = clock_ticks();
        let items: Vec<(String, u64)> = ["utime", "stime", "cutime", "cstime"]
            .iter()
            .zip(14..)
            .map(|(name, n)| (name.to_string(), field(n)))
            .collect();
        t.items(
            "kata_agent_proc_stat",
            "Agent process CPU time (/proc/self/stat, clock ticks).",
            &items,
        );
        t.family(
            "kata_agent_total_time",
            "gauge",
            "Agent process user and system time, in seconds.",
        );
        t.sample(
            "kata_agent_total_time",
            &[],
            (field(14) + field(15)) as f64 / ticks as f64,
        );
        t.family(
            "kata_agent_total_vm",
            "gauge",
            "Agent process virtual memory, in bytes.",
        );
        t.sample("kata_agent_total_vm", &[], field(23));
        t.family(
            "kata_agent_total_rss",
            "gauge",
            "Agent process resident memory, in bytes.",
        );
        t.sample("kata_agent_total_rss", &[], field(24) * page_size());
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a configuration value; no memory is involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// The guest: upstream's `kata_guest_*` families.
fn guest(t: &mut Text) {
    // "0.00 0.01 0.05 1/80 123"
    let loadavg = read("/proc/loadavg");
    let words: Vec<&str> = loadavg.split_whitespace().collect();
    if words.len() >= 4 {
        t.family(
            "kata_guest_load",
            "gauge",
            "Guest load averages (/proc/loadavg).",
        );
        for (item, value) in ["load1", "load5", "load15"].iter().zip(&words) {
            t.sample("kata_guest_load", &[("item", item)], value);
        }
        if let Some((cur, max)) = words[3].split_once('/') {
            t.family(
                "kata_guest_tasks",
                "gauge",
                "Guest tasks running and in all (/proc/loadavg).",
            );
            t.sample("kata_guest_tasks", &[("item", "cur")], cur);
            t.sample("kata_guest_tasks", &[("item", "max")], max);
        }
    }

    const CPU: [&str; 10] = [
        "user",
        "nice",
        "system",
        "idle",
        "iowait",
        "irq",
        "softirq",
        "steal",
        "guest",
        "guest_nice",
    ];
    let ms_per_tick = 1000 / clock_ticks().max(1);
    t.family(
        "kata_guest_cpu_time",
        "gauge",
        "Guest CPU time per CPU (/proc/stat), in milliseconds.",
    );
    for line in read("/proc/stat").lines().filter(|l| l.starts_with("cpu")) {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let cpu = if name == "cpu" { "total" } else { &name[3..] };
        for (item, value) in CPU.iter().zip(words) {
            let ms = value.parse::<u64>().unwrap_or(0) * ms_per_tick;
            t.sample("kata_guest_cpu_time", &[("cpu", cpu), ("item", item)], ms);
        }
    }

    let vmstat: Vec<(String, u64)> = read("/proc/vmstat")
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    t.items(
        "kata_guest_vm_stat",
        "Guest virtual memory statistics (/proc/vmstat).",
        &vmstat,
    );

    t.family(
        "kata_guest_netdev_stat",
        "gauge",
        "Guest network devices (/proc/net/dev).",
    );
    for line in read("/proc/net/dev").lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        for (item, value) in protocols::metrics::NETDEV_ITEMS
            .iter()
            .zip(counters.split_whitespace())
        {
            t.sample(
                "kata_guest_netdev_stat",
                &[("interface", name.trim()), ("item", item)],
                value,
            );
        }
    }

    const DISK: [&str; 17] = [
        "reads",
        "merged",
        "sectors_read",
        "time_reading",
        "writes",
        "writes_merged",
        "sectors_written",
        "time_writing",
        "in_progress",
        "time_in_progress",
        "weighted_time_in_progress",
        "discards",
        "discards_merged",
        "sectors_discarded",
        "time_discarding",
        "flushes",
        "time_flushing",
    ];
    t.family(
        "kata_guest_diskstat",
        "gauge",
        "Guest block devices (/proc/diskstats).",
    );
    for line in read("/proc/diskstats").lines() {
        // major minor name counters...
        let mut words = line.split_whitespace().skip(2);
        let Some(disk) = words.next() else { continue };
        for (item, value) in DISK.iter().zip(words) {
            t.sample(
                "kata_guest_diskstat",
                &[("disk", disk), ("item", item)],
                value,
            );
        }
    }

    let meminfo = key_values(&read("/proc/meminfo"), |k| Some(snake_case(k)));
    t.items(
        "kata_guest_meminfo",
        "Guest memory (/proc/meminfo, in bytes).",
        &meminfo,
    );
}

/// The text of one `GetMetrics` answer.
pub fn gather() -> String {
    let scrapes = SCRAPES.fetch_add(1, Ordering::Relaxed) + 1;
    let mut t = Text(String::with_capacity(16 * 1024));
    t.family(
        "kata_agent_scrape_count",
        "counter",
        "Metrics scrapes of the agent.",
    );
    t.sample("kata_agent_scrape_count", &[], scrapes);
    agent_process(&mut t);
    guest(&mut t);
    t.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_keys_read_as_upstreams() {
        for (key, want) in [
            ("MemTotal", "mem_total"),
            ("Active(anon)", "active_anon"),
            ("DirectMap4k", "direct_map_4k"),
            ("KReclaimable", "k_reclaimable"),
            ("SwapCached", "swap_cached"),
            ("NFS_Unstable", "nfs_unstable"),
            ("Percpu", "percpu"),
        ] {
            assert_eq!(snake_case(key), want, "{key}");
        }
    }

    #[test]
    fn the_text_has_upstreams_families_and_escapes_labels() {
        let text = gather();
        for family in [
            "kata_agent_scrape_count",
            "kata_agent_threads",
            "kata_agent_total_rss",
            "kata_agent_proc_status",
            "kata_guest_load",
            "kata_guest_cpu_time",
            "kata_guest_meminfo",
            "kata_guest_netdev_stat",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert!(
            text.contains("kata_guest_meminfo{item=\"mem_total\"} "),
            "{text}"
        );
        assert!(
            text.contains("kata_guest_cpu_time{cpu=\"total\",item=\"user\"} "),
            "{text}"
        );
        // Counted per call.
        let again = gather();
        let count = |t: &str| {
            t.lines()
                .find_map(|l| l.strip_prefix("kata_agent_scrape_count "))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        assert_eq!(count(&again), count(&text) + 1);

        let mut t = Text(String::new());
        t.sample("x", &[("a", "q\"b\\c\nd")], 1);
        assert_eq!(t.0, "x{a=\"q\\\"b\\\\c\\nd\"} 1\n");
    }
}
