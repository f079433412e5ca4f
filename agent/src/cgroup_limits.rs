//! UpdateContainer: new resource limits (the OCI `linux.resources` of the
//! agent API) written to a running container's cgroup v2 files.
//!
//! libcontainer applies the limits of the spec when it creates the
//! container; an update is kubelet resizing it (or `Task.Update`), and goes
//! straight to the files, as runc's `update` does on cgroup v2:
//! - `memory.limit` -> `memory.max`, `memory.reservation` -> `memory.low`,
//!   `memory.swap` (memory + swap, as in the OCI spec) -> `memory.swap.max`
//!   = swap - limit;
//! - `cpu.shares` -> `cpu.weight` (runc's conversion), `cpu.quota` and
//!   `cpu.period` -> `cpu.max`, `cpu.cpus` / `cpu.mems` -> `cpuset.*`;
//! - `pids.limit` -> `pids.max`; `hugepageLimits` -> `hugetlb.<size>.max`.
//!
//! proto3 has no presence: 0 (or "") is "leave as it is"; -1 is
//! "unlimited" (`max`). Device rules are not re-applied: libcontainer
//! installed them as an eBPF program at creation and kubelet's update
//! repeats the same list. What cgroup v2 cannot express (swappiness,
//! disabling the OOM killer, net_cls/net_prio) and block IO limits (host
//! device numbers mean nothing in the guest) are refused, naming the field.

use std::fs;
use std::path::Path;

use protocols::oci::LinuxResources;
use ttrpc::Code;

use crate::container::Failure;

/// One write of a cgroup interface file, and the request field it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: String,
    pub value: String,
    pub field: &'static str,
    /// The file may be absent (a controller the guest kernel lacks) when the
    /// value asks for nothing it could enforce.
    pub optional: bool,
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Failure {
    Failure {
        code: Code::INVALID_ARGUMENT,
        message: format!("resources.{field}: {message}"),
    }
}

fn write(file: impl Into<String>, value: impl Into<String>, field: &'static str) -> Write {
    Write {
        file: file.into(),
        value: value.into(),
        field,
        optional: false,
    }
}

/// A limit in bytes or a count: -1 is "max", 0 is "not set", other
/// negatives are invalid.
fn limit(field: &'static str, v: i64) -> Result<Option<String>, Failure> {
    match v {
        0 => Ok(None),
        -1 => Ok(Some("max".into())),
        n if n < 0 => Err(invalid(field, format!("{n}: use -1 for unlimited"))),
        n => Ok(Some(n.to_string())),
    }
}

/// runc's cpu.shares (2..=262144) to cpu.weight (1..=10000) conversion.
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.saturating_sub(2)) * 9999) / 262142
}

/// The writes for `r`, in order. `current_cpu_max` is the cgroup's
/// `cpu.max` (needed when only the period changes).
pub fn plan(r: &LinuxResources, current_cpu_max: Option<&str>) -> Result<Vec<Write>, Failure> {
    let mut out = Vec::new();
    if let Some(m) = r.Memory.as_ref() {
        let max = limit("memory.limit", m.Limit)?;
        if let Some(v) = limit("memory.reservation", m.Reservation)? {
            out.push(write("memory.low", v, "memory.reservation"));
        }
        // memory.max first: lowering it below the usage reclaims (or
        // OOM-kills) before swap limits change.
        if let Some(v) = &max {
            out.push(write("memory.max", v.clone(), "memory.limit"));
        }
        match (m.Swap, m.Limit) {
            (0, _) => {}
            (-1, _) => out.push(Write {
                optional: true,
                ..write("memory.swap.max", "max", "memory.swap")
            }),
            (s, _) if s < 0 => return Err(invalid("memory.swap", format!("{s}: use -1 for unlimited"))),
            (s, l) if l > 0 && s >= l => out.push(Write {
                // no swap at all (swap == limit, what CRI sends) is what a
                // guest without swap accounting gives anyway
                optional: s == l,
                ..write("memory.swap.max", (s - l).to_string(), "memory.swap")
            }),
            (s, l) => {
                return Err(invalid(
                    "memory.swap",
                    format!("{s} is memory + swap and needs memory.limit set and not above it (memory.limit is {l})"),
                ))
            }
        }
        if m.Swappiness != 0 {
            return Err(invalid(
                "memory.swappiness",
                "cgroup v2 has no per-cgroup swappiness; leave it unset",
            ));
        }
        if m.DisableOOMKiller {
            return Err(invalid(
                "memory.disableOOMKiller",
                "cgroup v2 cannot disable the OOM killer; leave it false",
            ));
        }
        // memory.kernel and memory.kernelTCP do not exist in cgroup v2
        // (runc ignores them too).
    }
    if let Some(c) = r.CPU.as_ref() {
        if c.Shares != 0 {
            if !(2..=262144).contains(&c.Shares) {
                return Err(invalid(
                    "cpu.shares",
                    format!("{} is outside 2..=262144", c.Shares),
                ));
            }
            out.push(write(
                "cpu.weight",
                shares_to_weight(c.Shares).to_string(),
                "cpu.shares",
            ));
        }
        if c.Period != 0 && !(1000..=1_000_000).contains(&c.Period) {
            return Err(invalid(
                "cpu.period",
                format!("{} µs is outside 1000..=1000000", c.Period),
            ));
        }
        let quota = match c.Quota {
            0 => None,
            q if q < 0 => Some("max".to_string()),
            q if q < 1000 => {
                return Err(invalid(
                    "cpu.quota",
                    format!("{q} µs is below the kernel's minimum of 1000; use -1 for unlimited"),
                ))
            }
            q => Some(q.to_string()),
        };
        match (quota, c.Period) {
            (None, 0) => {}
            (Some(q), 0) => out.push(write("cpu.max", q, "cpu.quota")),
            (Some(q), p) => out.push(write("cpu.max", format!("{q} {p}"), "cpu.quota")),
            (None, p) => {
                // cpu.max takes "$MAX $PERIOD": keep the current maximum
                let q = current_cpu_max
                    .and_then(|s| s.split_whitespace().next())
                    .unwrap_or("max");
                out.push(write("cpu.max", format!("{q} {p}"), "cpu.period"));
            }
        }
        if c.RealtimeRuntime != 0 || c.RealtimePeriod != 0 {
            return Err(invalid(
                "cpu.realtimeRuntime",
                "cgroup v2 has no real-time CPU limits; leave realtimeRuntime and realtimePeriod unset",
            ));
        }
        if !c.Cpus.is_empty() {
            out.push(write("cpuset.cpus", c.Cpus.clone(), "cpu.cpus"));
        }
        if !c.Mems.is_empty() {
            out.push(write("cpuset.mems", c.Mems.clone(), "cpu.mems"));
        }
    }
    if let Some(p) = r.Pids.as_ref() {
        if let Some(v) = limit("pids.limit", p.Limit)? {
            out.push(write("pids.max", v, "pids.limit"));
        }
    }
    if let Some(b) = r.BlockIO.as_ref() {
        let set = b.Weight != 0
            || b.LeafWeight != 0
            || !b.WeightDevice.is_empty()
            || !b.ThrottleReadBpsDevice.is_empty()
            || !b.ThrottleWriteBpsDevice.is_empty()
            || !b.ThrottleReadIOPSDevice.is_empty()
            || !b.ThrottleWriteIOPSDevice.is_empty();
        if set {
            return Err(Failure {
                code: Code::UNIMPLEMENTED,
                message: "resources.blockIO: block IO limits are not applied in the guest (the host's device numbers do not name the guest's disks); leave blockIO unset".into(),
            });
        }
    }
    for h in r.HugepageLimits.iter() {
        let size = h.Pagesize.as_str();
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid(
                "hugepageLimits.pageSize",
                format!("{size:?} is not a page size such as 2MB"),
            ));
        }
        out.push(Write {
            // a limit of 0 (CRI's "none") needs no controller to hold
            optional: h.Limit == 0,
            ..write(
                format!("hugetlb.{size}.max"),
                h.Limit.to_string(),
                "hugepageLimits.limit",
            )
        });
    }
    if let Some(n) = r.Network.as_ref() {
        if n.ClassID != 0 || !n.Priorities.is_empty() {
            return Err(invalid(
                "network",
                "cgroup v2 has no net_cls/net_prio controller; leave network unset",
            ));
        }
    }
    Ok(out)
}

/// Applies `r` to the cgroup directory `dir`.
pub fn apply(dir: &Path, r: &LinuxResources) -> Result<usize, Failure> {
    let current_cpu_max = fs::read_to_string(dir.join("cpu.max")).ok();
    let writes = plan(r, current_cpu_max.as_deref())?;
    for w in &writes {
        let path = dir.join(&w.file);
        if w.optional && !path.exists() {
            log::debug!("{}: absent, {} not needed", path.display(), w.value);
            continue;
        }
        // never create: a missing interface file is a missing controller
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, w.value.as_bytes()))
            .map_err(|e| {
                let code = match e.raw_os_error() {
                    // the kernel refused the value itself
                    Some(libc::EINVAL) | Some(libc::ERANGE) => Code::INVALID_ARGUMENT,
                    Some(libc::ENOENT) => Code::FAILED_PRECONDITION,
                    _ => Code::INTERNAL,
                };
                let hint = if e.raw_os_error() == Some(libc::ENOENT) {
                    " (the controller is not enabled for this cgroup in the guest kernel)"
                } else {
                    ""
                };
                Failure {
                    code,
                    message: format!(
                        "resources.{}: write {:?} to {}: {e}{hint}",
                        w.field,
                        w.value,
                        path.display()
                    ),
                }
            })?;
    }
    Ok(writes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::oci::{LinuxCPU, LinuxHugepageLimit, LinuxMemory, LinuxPids};

    fn files(r: &LinuxResources, cpu_max: Option<&str>) -> Vec<(String, String)> {
        plan(r, cpu_max)
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect()
    }

    fn pair(f: &str, v: &str) -> (String, String) {
        (f.into(), v.into())
    }

    #[test]
    fn limits_map_onto_cgroup_v2_files() {
        let mut r = LinuxResources::new();
        let mut m = LinuxMemory::new();
        m.Limit = 64 << 20;
        m.Swap = 64 << 20;
        m.Reservation = 32 << 20;
        r.Memory = Some(m).into();
        let mut c = LinuxCPU::new();
        c.Shares = 1024;
        c.Quota = 50_000;
        c.Period = 100_000;
        c.Cpus = "0".into();
        r.CPU = Some(c).into();
        let mut p = LinuxPids::new();
        p.Limit = -1;
        r.Pids = Some(p).into();
        let mut h = LinuxHugepageLimit::new();
        h.Pagesize = "2MB".into();
        r.HugepageLimits.push(h);
        assert_eq!(
            files(&r, None),
            [
                pair("memory.low", "33554432"),
                pair("memory.max", "67108864"),
                pair("memory.swap.max", "0"),
                pair("cpu.weight", "39"),
                pair("cpu.max", "50000 100000"),
                pair("cpuset.cpus", "0"),
                pair("pids.max", "max"),
                pair("hugetlb.2MB.max", "0"),
            ]
        );
        let optional: Vec<String> = plan(&r, None)
            .unwrap()
            .into_iter()
            .filter(|w| w.optional)
            .map(|w| w.file)
            .collect();
        assert_eq!(optional, ["memory.swap.max", "hugetlb.2MB.max"]);
    }

    #[test]
    fn unset_means_untouched_and_a_lone_period_keeps_the_quota() {
        let mut r = LinuxResources::new();
        r.Memory = Some(LinuxMemory::new()).into();
        r.Pids = Some(LinuxPids::new()).into();
        assert!(files(&r, None).is_empty());
        let mut c = LinuxCPU::new();
        c.Period = 20_000;
        r.CPU = Some(c.clone()).into();
        assert_eq!(
            files(&r, Some("30000 100000\n")),
            [pair("cpu.max", "30000 20000")]
        );
        assert_eq!(files(&r, None), [pair("cpu.max", "max 20000")]);
        c.Period = 0;
        c.Quota = -1;
        r.CPU = Some(c).into();
        assert_eq!(files(&r, None), [pair("cpu.max", "max")]);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262144), 10000);
    }

    #[test]
    fn bad_values_name_their_field() {
        let refused = |f: &dyn Fn(&mut LinuxResources)| {
            let mut r = LinuxResources::new();
            f(&mut r);
            plan(&r, None).unwrap_err()
        };
        let mem = |limit: i64, swap: i64| {
            move |r: &mut LinuxResources| {
                let mut m = LinuxMemory::new();
                m.Limit = limit;
                m.Swap = swap;
                r.Memory = Some(m).into();
            }
        };
        let e = refused(&mem(-5, 0));
        assert_eq!(e.code, Code::INVALID_ARGUMENT);
        assert!(
            e.message.starts_with("resources.memory.limit: -5"),
            "{}",
            e.message
        );
        let e = refused(&mem(64 << 20, 32 << 20));
        assert!(
            e.message.starts_with("resources.memory.swap"),
            "{}",
            e.message
        );
        let e = refused(&|r| {
            let mut c = LinuxCPU::new();
            c.Shares = 1;
            r.CPU = Some(c).into();
        });
        assert!(
            e.message.starts_with("resources.cpu.shares"),
            "{}",
            e.message
        );
        let e = refused(&|r| {
            let mut c = LinuxCPU::new();
            c.Quota = 10;
            r.CPU = Some(c).into();
        });
        assert!(
            e.message.starts_with("resources.cpu.quota"),
            "{}",
            e.message
        );
        let e = refused(&|r| {
            let mut c = LinuxCPU::new();
            c.Period = 10;
            r.CPU = Some(c).into();
        });
        assert!(
            e.message.starts_with("resources.cpu.period"),
            "{}",
            e.message
        );
        let e = refused(&|r| {
            let mut h = LinuxHugepageLimit::new();
            h.Pagesize = "../x".into();
            r.HugepageLimits.push(h);
        });
        assert!(
            e.message.starts_with("resources.hugepageLimits"),
            "{}",
            e.message
        );
        let e = refused(&|r| {
            let mut b = protocols::oci::LinuxBlockIO::new();
            b.Weight = 100;
            r.BlockIO = Some(b).into();
        });
        assert_eq!(e.code, Code::UNIMPLEMENTED);
    }

    #[test]
    fn apply_writes_the_files_and_names_a_missing_controller() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["memory.max", "cpu.max", "pids.max"] {
            fs::write(dir.path().join(f), "max\n").unwrap();
        }
        let mut r = LinuxResources::new();
        let mut m = LinuxMemory::new();
        m.Limit = 1 << 30;
        m.Swap = 1 << 30;
        r.Memory = Some(m).into();
        let mut p = LinuxPids::new();
        p.Limit = 42;
        r.Pids = Some(p).into();
        // memory.swap.max is absent: not needed for "no swap"
        assert_eq!(apply(dir.path(), &r).unwrap(), 3);
        let read = |f: &str| fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(read("memory.max"), "1073741824");
        assert_eq!(read("pids.max"), "42");
        let mut c = LinuxCPU::new();
        c.Cpus = "0-1".into();
        let mut r = LinuxResources::new();
        r.CPU = Some(c).into();
        let e = apply(dir.path(), &r).unwrap_err();
        assert_eq!(e.code, Code::FAILED_PRECONDITION);
        assert!(
            e.message.starts_with("resources.cpu.cpus") && e.message.contains("cpuset.cpus"),
            "{}",
            e.message
        );
    }
}
