//! `[runtime] static_sandbox_resource_mgmt = true` (upstream's key): the VM
//! is sized once, when it starts, for the whole pod (no CPU or memory
//! hotplug later): the configured `default_vcpus` / `default_memory`, plus
//! what the pod's containers may use.
//!
//! Where the pod's limits come from (upstream's rules):
//! - a CRI pod sandbox: containerd (1.6.7 and later, 1.6.20 here) puts the
//!   sum of the pod's container limits, as kubelet (1.23 and later) gives
//!   them in `PodSandboxConfig.linux.resources`, on the sandbox container's
//!   spec as the annotations `io.kubernetes.cri.sandbox-cpu-quota`,
//!   `-cpu-period` and `-memory` (bytes). The sandbox spec's own
//!   `linux.resources` are the pause container's, not the pod's.
//! - anything else (a `ctr run` container, a sandbox without those
//!   annotations: an older containerd or kubelet): the container's own
//!   `linux.resources` (memory limit, CPU quota / period), as upstream does
//!   for a single container.
//!
//! vCPUs: ceil(quota / period); memory: the limit rounded up to MiB. No
//! limit (0, -1, absent) adds nothing.

use std::collections::HashMap;

use protocols::oci;

use crate::config::KataConfig;

pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// The most vCPUs and MiB the configuration schema allows.
const MAX_VCPUS: u32 = 240;
const MAX_MEMORY_MIB: u32 = 1_048_576;

/// What the workload adds to the configured VM size, and where it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSize {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub from: &'static str,
}

fn vcpus(quota: i64, period: u64) -> u32 {
    if quota <= 0 || period == 0 {
        return 0;
    }
    (quota as u64).div_ceil(period).min(MAX_VCPUS as u64) as u32
}

fn mib(bytes: i64) -> u32 {
    if bytes <= 0 {
        return 0;
    }
    (bytes as u64).div_ceil(1 << 20).min(MAX_MEMORY_MIB as u64) as u32
}

/// The pod's (or the lone container's) limits, read from `spec`.
pub fn workload_size(spec: &oci::Spec) -> Result<WorkloadSize, String> {
    let a = &spec.Annotations;
    if [SANDBOX_CPU_QUOTA, SANDBOX_CPU_PERIOD, SANDBOX_MEMORY]
        .iter()
        .any(|k| a.contains_key(*k))
    {
        return from_annotations(a);
    }
    let r = spec.Linux.as_ref().and_then(|l| l.Resources.as_ref());
    let (quota, period, memory) = match r {
        Some(r) => (
            r.CPU.as_ref().map_or(0, |c| c.Quota),
            r.CPU.as_ref().map_or(0, |c| c.Period),
            r.Memory.as_ref().map_or(0, |m| m.Limit),
        ),
        None => (0, 0, 0),
    };
    Ok(WorkloadSize {
        vcpus: vcpus(quota, period),
        memory_mib: mib(memory),
        from: "the container's linux.resources",
    })
}

fn from_annotations(a: &HashMap<String, String>) -> Result<WorkloadSize, String> {
    fn number<T: std::str::FromStr + Default>(
        a: &HashMap<String, String>,
        key: &str,
    ) -> Result<T, String> {
        match a.get(key) {
            None => Ok(T::default()),
            Some(v) => v.trim().parse().map_err(|_| {
                format!("annotation {key} is {v:?}: expected an integer (containerd writes one)")
            }),
        }
    }
    let quota: i64 = number(a, SANDBOX_CPU_QUOTA)?;
    let period: u64 = number(a, SANDBOX_CPU_PERIOD)?;
    let memory: i64 = number(a, SANDBOX_MEMORY)?;
    Ok(WorkloadSize {
        vcpus: vcpus(quota, period),
        memory_mib: mib(memory),
        from: "the io.kubernetes.cri.sandbox-* annotations",
    })
}

/// `cfg` with the VM sized for `size`: vCPUs up to the host's CPUs (never
/// below the configured default), memory up to the schema's maximum.
pub fn sized(cfg: &KataConfig, size: &WorkloadSize) -> KataConfig {
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let mut out = cfg.clone();
    let h = &mut out.hypervisor;
    let ceiling = host_cpus.max(h.default_vcpus).min(MAX_VCPUS);
    h.default_vcpus = (h.default_vcpus + size.vcpus).min(ceiling);
    h.default_memory = h
        .default_memory
        .saturating_add(size.memory_mib)
        .min(MAX_MEMORY_MIB);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: &[(&str, &str)], quota: i64, period: u64, memory: i64) -> oci::Spec {
        let mut s = oci::Spec::new();
        for (k, v) in annotations {
            s.Annotations.insert(k.to_string(), v.to_string());
        }
        let mut r = oci::LinuxResources::new();
        let mut c = oci::LinuxCPU::new();
        c.Quota = quota;
        c.Period = period;
        r.CPU = Some(c).into();
        let mut m = oci::LinuxMemory::new();
        m.Limit = memory;
        r.Memory = Some(m).into();
        let mut l = oci::Linux::new();
        l.Resources = Some(r).into();
        s.Linux = Some(l).into();
        s
    }

    #[test]
    fn a_cri_sandbox_is_sized_from_containerds_annotations() {
        // the pause container's own limits are not the pod's
        let s = spec(
            &[
                (SANDBOX_CPU_QUOTA, "220000"),
                (SANDBOX_CPU_PERIOD, "100000"),
                (SANDBOX_MEMORY, "178257920"),
            ],
            0,
            0,
            1 << 20,
        );
        let size = workload_size(&s).unwrap();
        assert_eq!((size.vcpus, size.memory_mib), (3, 170));
        assert!(size.from.contains("annotations"));
        // kubelet without pod resources: containerd writes zeros
        let s = spec(
            &[
                (SANDBOX_CPU_QUOTA, "0"),
                (SANDBOX_CPU_PERIOD, "100000"),
                (SANDBOX_MEMORY, "0"),
            ],
            50000,
            100000,
            1 << 30,
        );
        assert_eq!(workload_size(&s).unwrap().memory_mib, 0);
        let e = workload_size(&spec(&[(SANDBOX_MEMORY, "1G")], 0, 0, 0)).unwrap_err();
        assert!(e.contains(SANDBOX_MEMORY) && e.contains("\"1G\""), "{e}");
    }

    #[test]
    fn a_lone_container_is_sized_from_its_resources() {
        let size = workload_size(&spec(&[], 150_000, 100_000, (64 << 20) + 1)).unwrap();
        assert_eq!((size.vcpus, size.memory_mib), (2, 65));
        assert!(size.from.contains("linux.resources"));
        let none = workload_size(&spec(&[], -1, 100_000, -1)).unwrap();
        assert_eq!((none.vcpus, none.memory_mib), (0, 0));
        assert_eq!(workload_size(&oci::Spec::new()).unwrap().vcpus, 0);
    }

    #[test]
    fn the_vm_grows_by_the_workload_within_bounds() {
        let text = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_vcpus = 1\ndefault_memory = 512\n";
        let cfg = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let size = WorkloadSize {
            vcpus: 1,
            memory_mib: 32,
            from: "test",
        };
        let out = sized(&cfg, &size);
        assert_eq!(out.hypervisor.default_memory, 544);
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(out.hypervisor.default_vcpus, 2.min(host.max(1)));
        let huge = WorkloadSize {
            vcpus: 10_000,
            memory_mib: u32::MAX,
            from: "test",
        };
        let out = sized(&cfg, &huge);
        assert_eq!(out.hypervisor.default_vcpus, host.clamp(1, MAX_VCPUS));
        assert_eq!(out.hypervisor.default_memory, MAX_MEMORY_MIB);
    }
}
