//! StatsContainer figures read from a container's cgroup v2 directory.
//!
//! Each controller's files exist only when that controller is enabled for
//! the cgroup; a missing file leaves its figures at zero rather than failing
//! the whole call (a guest kernel without, say, the io controller still
//! reports CPU and memory).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use protocols::agent::{
    BlkioStats, BlkioStatsEntry, CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats,
    PidsStats, ThrottlingData,
};

fn read(dir: &Path, file: &str) -> Option<String> {
    fs::read_to_string(dir.join(file)).ok()
}

/// A single-number file; "max" (no limit) reads as u64::MAX.
fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    let text = read(dir, file)?;
    let t = text.trim();
    if t == "max" {
        Some(u64::MAX)
    } else {
        t.parse().ok()
    }
}

/// `key value` lines (cpu.stat, memory.stat).
fn read_flat_keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    read(dir, file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn cpu(dir: &Path) -> CpuStats {
    let stat = read_flat_keyed(dir, "cpu.stat");
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    let mut usage = CpuUsage::new();
    // cgroup v2 counts microseconds; the API (like cgroup v1) nanoseconds
    usage.total_usage = get("usage_usec") * 1000;
    usage.usage_in_usermode = get("user_usec") * 1000;
    usage.usage_in_kernelmode = get("system_usec") * 1000;
    let mut throttling = ThrottlingData::new();
    throttling.periods = get("nr_periods");
    throttling.throttled_periods = get("nr_throttled");
    throttling.throttled_time = get("throttled_usec") * 1000;
    let mut stats = CpuStats::new();
    stats.cpu_usage = Some(usage).into();
    stats.throttling_data = Some(throttling).into();
    stats
}

fn memory(dir: &Path) -> MemoryStats {
    let mut stats = MemoryStats::new();
    let mut usage = MemoryData::new();
    usage.usage = read_u64(dir, "memory.current").unwrap_or(0);
    usage.max_usage = read_u64(dir, "memory.peak").unwrap_or(0);
    usage.limit = read_u64(dir, "memory.max").unwrap_or(0);
    usage.failcnt = read_flat_keyed(dir, "memory.events")
        .get("max")
        .copied()
        .unwrap_or(0);
    let mut swap = MemoryData::new();
    swap.usage = read_u64(dir, "memory.swap.current").unwrap_or(0);
    swap.limit = read_u64(dir, "memory.swap.max").unwrap_or(0);
    let detail = read_flat_keyed(dir, "memory.stat");
    stats.cache = detail.get("file").copied().unwrap_or(0);
    let mut kernel = MemoryData::new();
    kernel.usage = detail.get("kernel").copied().unwrap_or(0);
    stats.usage = Some(usage).into();
    stats.swap_usage = Some(swap).into();
    stats.kernel_usage = Some(kernel).into();
    stats.use_hierarchy = true; // always so in cgroup v2
    stats.stats = detail;
    stats
}

fn pids(dir: &Path) -> PidsStats {
    let mut stats = PidsStats::new();
    // pids.current counts tasks (threads); without the pids controller the
    // same number is the length of cgroup.threads
    stats.current = read_u64(dir, "pids.current").unwrap_or_else(|| {
        read(dir, "cgroup.threads")
            .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
            .unwrap_or(0)
    });
    stats.limit = read_u64(dir, "pids.max").unwrap_or(0);
    stats
}

/// io.stat: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N`.
fn blkio(dir: &Path) -> BlkioStats {
    let mut stats = BlkioStats::new();
    for line in read(dir, "io.stat").unwrap_or_default().lines() {
        let mut fields = line.split_whitespace();
        let Some((major, minor)) = fields.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse::<u64>(), minor.parse::<u64>()) else {
            continue;
        };
        for field in fields {
            let Some((key, value)) = field.split_once('=') else {
                continue;
            };
            let Ok(value) = value.parse::<u64>() else {
                continue;
            };
            let (op, list) = match key {
                "rbytes" => ("Read", &mut stats.io_service_bytes_recursive),
                "wbytes" => ("Write", &mut stats.io_service_bytes_recursive),
                "rios" => ("Read", &mut stats.io_serviced_recursive),
                "wios" => ("Write", &mut stats.io_serviced_recursive),
                _ => continue,
            };
            let mut entry = BlkioStatsEntry::new();
            entry.major = major;
            entry.minor = minor;
            entry.op = op.into();
            entry.value = value;
            list.push(entry);
        }
    }
    stats
}

/// All figures of the cgroup at `dir` (e.g. /sys/fs/cgroup/kata/c1).
pub fn collect(dir: &Path) -> std::io::Result<CgroupStats> {
    if !dir.join("cgroup.procs").exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a cgroup v2 directory", dir.display()),
        ));
    }
    let mut stats = CgroupStats::new();
    stats.cpu_stats = Some(cpu(dir)).into();
    stats.memory_stats = Some(memory(dir)).into();
    stats.pids_stats = Some(pids(dir)).into();
    stats.blkio_stats = Some(blkio(dir)).into();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cgroup_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("cgroup.procs"), "12\n").unwrap();
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 7\n",
        )
        .unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 100\nfile 200\n").unwrap();
        fs::write(d.join("cgroup.threads"), "12\n13\n").unwrap();
        fs::write(
            d.join("io.stat"),
            "8:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        )
        .unwrap();
        let s = collect(d).unwrap();
        let cpu = s.cpu_stats.cpu_usage.as_ref().unwrap();
        assert_eq!(cpu.total_usage, 1_500_000);
        assert_eq!(cpu.usage_in_kernelmode, 500_000);
        assert_eq!(s.cpu_stats.throttling_data.throttled_time, 7000);
        assert_eq!(s.memory_stats.usage.usage, 4096);
        assert_eq!(s.memory_stats.usage.limit, u64::MAX);
        assert_eq!(s.memory_stats.cache, 200);
        assert_eq!(s.pids_stats.current, 2);
        let io = &s.blkio_stats.io_service_bytes_recursive;
        assert_eq!(io.len(), 2);
        assert_eq!((io[1].op.as_str(), io[1].value), ("Write", 20));
        assert!(collect(&d.join("missing")).is_err());
    }
}
