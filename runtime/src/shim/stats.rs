//! The agent's container statistics (cgroup v1-shaped, as upstream's API)
//! as containerd's cgroup v2 `Metrics`, which `ctr task metrics` and CRI
//! decode (type URL `io.containerd.cgroups.v2.Metrics`).

use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::MessageField;
use protocols::agent::StatsContainerResponse;

pub fn metrics_from_agent(r: &StatsContainerResponse) -> Metrics {
    let mut m = Metrics::new();
    let Some(cg) = r.cgroup_stats.as_ref() else {
        return m;
    };
    if let Some(p) = cg.pids_stats.as_ref() {
        let mut pids = PidsStat::new();
        pids.current = p.current;
        pids.limit = p.limit;
        m.pids = MessageField::some(pids);
    }
    if let Some(c) = cg.cpu_stats.as_ref() {
        let mut cpu = CPUStat::new();
        // The API counts nanoseconds; cgroup v2 metrics microseconds.
        if let Some(u) = c.cpu_usage.as_ref() {
            cpu.usage_usec = u.total_usage / 1000;
            cpu.user_usec = u.usage_in_usermode / 1000;
            cpu.system_usec = u.usage_in_kernelmode / 1000;
        }
        if let Some(t) = c.throttling_data.as_ref() {
            cpu.nr_periods = t.periods;
            cpu.nr_throttled = t.throttled_periods;
            cpu.throttled_usec = t.throttled_time / 1000;
        }
        m.cpu = MessageField::some(cpu);
    }
    if let Some(mem) = cg.memory_stats.as_ref() {
        let mut out = MemoryStat::new();
        if let Some(u) = mem.usage.as_ref() {
            out.usage = u.usage;
            out.usage_limit = u.limit;
            out.max_usage = u.max_usage;
        }
        if let Some(s) = mem.swap_usage.as_ref() {
            out.swap_usage = s.usage;
            out.swap_limit = s.limit;
            out.swap_max_usage = s.max_usage;
        }
        let get = |k: &str| mem.stats.get(k).copied().unwrap_or(0);
        out.anon = get("anon");
        out.file = get("file");
        out.kernel_stack = get("kernel_stack");
        out.slab = get("slab");
        out.sock = get("sock");
        out.shmem = get("shmem");
        out.file_mapped = get("file_mapped");
        out.file_dirty = get("file_dirty");
        out.inactive_anon = get("inactive_anon");
        out.active_anon = get("active_anon");
        out.inactive_file = get("inactive_file");
        out.active_file = get("active_file");
        out.unevictable = get("unevictable");
        out.pgfault = get("pgfault");
        out.pgmajfault = get("pgmajfault");
        m.memory = MessageField::some(out);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::agent::{CgroupStats, CpuStats, CpuUsage, MemoryData, MemoryStats, PidsStats};

    #[test]
    fn agent_stats_to_v2_metrics() {
        let mut usage = CpuUsage::new();
        usage.total_usage = 1_500_000;
        usage.usage_in_usermode = 1_000_000;
        usage.usage_in_kernelmode = 500_000;
        let mut cpu = CpuStats::new();
        cpu.cpu_usage = MessageField::some(usage);
        let mut md = MemoryData::new();
        md.usage = 4096;
        md.limit = u64::MAX;
        let mut mem = MemoryStats::new();
        mem.usage = MessageField::some(md);
        mem.stats.insert("anon".into(), 1024);
        let mut pids = PidsStats::new();
        pids.current = 2;
        let mut cg = CgroupStats::new();
        cg.cpu_stats = MessageField::some(cpu);
        cg.memory_stats = MessageField::some(mem);
        cg.pids_stats = MessageField::some(pids);
        let mut r = StatsContainerResponse::new();
        r.cgroup_stats = MessageField::some(cg);
        let m = metrics_from_agent(&r);
        assert_eq!(m.cpu.usage_usec, 1500);
        assert_eq!(m.cpu.user_usec, 1000);
        assert_eq!(m.cpu.system_usec, 500);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.anon, 1024);
        assert_eq!(m.pids.current, 2);
        assert!(metrics_from_agent(&StatsContainerResponse::new())
            .memory
            .is_none());
    }
}
