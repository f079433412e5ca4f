//! The OCI runtime spec as containerd writes it (the bundle's `config.json`,
//! exec's process JSON) converted to the agent API's `oci.Spec` /
//! `oci.Process`, and adapted to run in the guest.
//!
//! The JSON is read with the `oci-spec` crate's typed `Spec` (the version
//! the agent uses too), through `serde_path_to_error` so that a wrong type
//! names the field (`process.user.uid`). Fields this runtime does not carry
//! are not converted; fields the OCI spec requires (`process.user`,
//! `process.cwd`, a mount's `destination`, a namespace's `type`, ...) must
//! be there, and enumerated values (capabilities, rlimit types, namespace
//! types, seccomp actions) must be ones the spec defines.
//!
//! Guest adaptation ([`adapt_for_guest`]): the root path becomes the
//! container's directory on the shared filesystem as the guest sees it,
//! namespace paths are dropped (host namespaces mean nothing in the VM),
//! host hooks are dropped (they would run in the guest), and AppArmor /
//! SELinux labels are dropped (the guest kernel has neither).

use std::path::Path;

use oci_spec::runtime as spec;
use protocols::oci;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where the guest mounts the sandbox's shared directory (tag `kataShared`).
pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";

/// A container's rootfs in the guest.
pub fn guest_rootfs(container_id: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{container_id}/rootfs")
}

#[derive(Debug, thiserror::Error)]
#[error("OCI spec: {field}: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

type Result<T> = std::result::Result<T, SpecError>;

fn err(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
    }
}

/// Typed JSON: a data error names its field (`prefix.path`), a syntax
/// error the whole document (`whole`).
fn from_json<T: DeserializeOwned>(text: &[u8], whole: &str, prefix: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(text);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => {
            de.end().map_err(|e| err(whole, e.to_string()))?;
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let field = match (inner.is_data(), path.as_str(), prefix) {
                (true, ".", "") | (false, _, _) => whole.to_string(),
                (true, ".", p) => p.to_string(),
                (true, path, "") => path.to_string(),
                (true, path, p) => format!("{p}.{path}"),
            };
            Err(err(&field, inner.to_string()))
        }
    }
}

/// The name an OCI enumerated value has in the JSON (`CAP_CHOWN`,
/// `RLIMIT_NOFILE`, `network`, `SCMP_ACT_ERRNO`, ...).
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn opt_path(p: &Option<impl AsRef<Path>>) -> String {
    p.as_ref().map(|p| path_str(p.as_ref())).unwrap_or_default()
}

fn strings(v: &Option<Vec<String>>) -> Vec<String> {
    v.clone().unwrap_or_default()
}

fn names<T: Serialize>(v: &Option<Vec<T>>) -> Vec<String> {
    v.iter().flatten().map(name).collect()
}

/// A capability set (unordered in `oci-spec`), sorted.
fn caps(v: &Option<spec::Capabilities>) -> Vec<String> {
    let mut out: Vec<String> = v.iter().flatten().map(name).collect();
    out.sort();
    out
}

fn narrow<T: TryFrom<u64>>(v: u64, field: &str) -> Result<T> {
    T::try_from(v).map_err(|_| err(field, format!("{v} does not fit 32 bits")))
}

/// `config.json` text to `oci.Spec` (unadapted).
pub fn spec_from_json(text: &str) -> Result<oci::Spec> {
    let s: spec::Spec = from_json(text.as_bytes(), "config.json", "")?;
    spec_from_oci(&s)
}

/// A typed OCI spec to `oci.Spec` (unadapted).
pub fn spec_from_oci(s: &spec::Spec) -> Result<oci::Spec> {
    let mut out = oci::Spec::new();
    out.Version = s.version().clone();
    if let Some(p) = s.process() {
        out.Process = protobuf::MessageField::some(process(p)?);
    }
    if let Some(r) = s.root() {
        let mut root = oci::Root::new();
        root.Path = path_str(r.path());
        root.Readonly = r.readonly().unwrap_or(false);
        out.Root = protobuf::MessageField::some(root);
    }
    out.Hostname = s.hostname().clone().unwrap_or_default();
    for m in s.mounts().iter().flatten() {
        let mut mount = oci::Mount::new();
        mount.destination = path_str(m.destination());
        mount.source = opt_path(m.source());
        mount.type_ = m.typ().clone().unwrap_or_default();
        mount.options = strings(m.options());
        out.Mounts.push(mount);
    }
    if let Some(h) = s.hooks() {
        let mut hooks = oci::Hooks::new();
        let list = |v: &Option<Vec<spec::Hook>>| -> Vec<oci::Hook> {
            v.iter()
                .flatten()
                .map(|x| {
                    let mut hook = oci::Hook::new();
                    hook.Path = path_str(x.path());
                    hook.Args = strings(x.args());
                    hook.Env = strings(x.env());
                    hook.Timeout = x.timeout().unwrap_or(0);
                    hook
                })
                .collect()
        };
        hooks.Prestart = list(h.prestart());
        hooks.Poststart = list(h.poststart());
        hooks.Poststop = list(h.poststop());
        out.Hooks = protobuf::MessageField::some(hooks);
    }
    out.Annotations = s.annotations().clone().unwrap_or_default();
    if let Some(l) = s.linux() {
        out.Linux = protobuf::MessageField::some(linux(l)?);
    }
    Ok(out)
}

/// An OCI `process` object (also exec's process JSON) to `oci.Process`.
pub fn process_from_json(text: &[u8]) -> Result<oci::Process> {
    let p: spec::Process = from_json(text, "process", "process")?;
    process(&p)
}

fn process(p: &spec::Process) -> Result<oci::Process> {
    let mut out = oci::Process::new();
    out.Terminal = p.terminal().unwrap_or(false);
    if let Some(cs) = p.console_size() {
        let mut b = oci::Box::new();
        b.Height = narrow(cs.height(), "process.consoleSize.height")?;
        b.Width = narrow(cs.width(), "process.consoleSize.width")?;
        out.ConsoleSize = protobuf::MessageField::some(b);
    }
    let u = p.user();
    let mut user = oci::User::new();
    user.UID = u.uid();
    user.GID = u.gid();
    user.AdditionalGids = u.additional_gids().clone().unwrap_or_default();
    user.Username = u.username().clone().unwrap_or_default();
    out.User = protobuf::MessageField::some(user);
    out.Args = strings(p.args());
    out.Env = strings(p.env());
    out.Cwd = path_str(p.cwd());
    if let Some(c) = p.capabilities() {
        let mut x = oci::LinuxCapabilities::new();
        x.Bounding = caps(c.bounding());
        x.Effective = caps(c.effective());
        x.Inheritable = caps(c.inheritable());
        x.Permitted = caps(c.permitted());
        x.Ambient = caps(c.ambient());
        out.Capabilities = protobuf::MessageField::some(x);
    }
    for r in p.rlimits().iter().flatten() {
        let mut rl = oci::POSIXRlimit::new();
        rl.Type = name(&r.typ());
        rl.Hard = r.hard();
        rl.Soft = r.soft();
        out.Rlimits.push(rl);
    }
    out.NoNewPrivileges = p.no_new_privileges().unwrap_or(false);
    out.ApparmorProfile = p.apparmor_profile().clone().unwrap_or_default();
    out.OOMScoreAdj = p.oom_score_adj().map(i64::from).unwrap_or(0);
    out.SelinuxLabel = p.selinux_label().clone().unwrap_or_default();
    Ok(out)
}

fn id_mappings(v: &Option<Vec<spec::LinuxIdMapping>>) -> Vec<oci::LinuxIDMapping> {
    v.iter()
        .flatten()
        .map(|m| {
            let mut x = oci::LinuxIDMapping::new();
            x.HostID = m.host_id();
            x.ContainerID = m.container_id();
            x.Size = m.size();
            x
        })
        .collect()
}

fn throttle(v: &Option<Vec<spec::LinuxThrottleDevice>>) -> Vec<oci::LinuxThrottleDevice> {
    v.iter()
        .flatten()
        .map(|d| {
            let mut x = oci::LinuxThrottleDevice::new();
            x.Major = d.major();
            x.Minor = d.minor();
            x.Rate = d.rate();
            x
        })
        .collect()
}

fn resources(r: &spec::LinuxResources) -> Result<oci::LinuxResources> {
    let mut out = oci::LinuxResources::new();
    for d in r.devices().iter().flatten() {
        let mut x = oci::LinuxDeviceCgroup::new();
        x.Allow = d.allow();
        x.Type = d.typ().map(|t| name(&t)).unwrap_or_default();
        // -1 (or absent) is the wildcard
        x.Major = d.major().unwrap_or(-1);
        x.Minor = d.minor().unwrap_or(-1);
        x.Access = d.access().clone().unwrap_or_default();
        out.Devices.push(x);
    }
    if let Some(m) = r.memory() {
        let mut x = oci::LinuxMemory::new();
        x.Limit = m.limit().unwrap_or(0);
        x.Reservation = m.reservation().unwrap_or(0);
        x.Swap = m.swap().unwrap_or(0);
        x.Kernel = m.kernel().unwrap_or(0);
        x.KernelTCP = m.kernel_tcp().unwrap_or(0);
        x.Swappiness = m.swappiness().unwrap_or(0);
        x.DisableOOMKiller = m.disable_oom_killer().unwrap_or(false);
        out.Memory = protobuf::MessageField::some(x);
    }
    if let Some(c) = r.cpu() {
        let mut x = oci::LinuxCPU::new();
        x.Shares = c.shares().unwrap_or(0);
        x.Quota = c.quota().unwrap_or(0);
        x.Period = c.period().unwrap_or(0);
        x.RealtimeRuntime = c.realtime_runtime().unwrap_or(0);
        x.RealtimePeriod = c.realtime_period().unwrap_or(0);
        x.Cpus = c.cpus().clone().unwrap_or_default();
        x.Mems = c.mems().clone().unwrap_or_default();
        out.CPU = protobuf::MessageField::some(x);
    }
    if let Some(p) = r.pids() {
        let mut x = oci::LinuxPids::new();
        x.Limit = p.limit();
        out.Pids = protobuf::MessageField::some(x);
    }
    if let Some(b) = r.block_io() {
        let mut x = oci::LinuxBlockIO::new();
        x.Weight = b.weight().map(u32::from).unwrap_or(0);
        x.LeafWeight = b.leaf_weight().map(u32::from).unwrap_or(0);
        for d in b.weight_device().iter().flatten() {
            let mut w = oci::LinuxWeightDevice::new();
            w.Major = d.major();
            w.Minor = d.minor();
            w.Weight = d.weight().map(u32::from).unwrap_or(0);
            w.LeafWeight = d.leaf_weight().map(u32::from).unwrap_or(0);
            x.WeightDevice.push(w);
        }
        x.ThrottleReadBpsDevice = throttle(b.throttle_read_bps_device());
        x.ThrottleWriteBpsDevice = throttle(b.throttle_write_bps_device());
        x.ThrottleReadIOPSDevice = throttle(b.throttle_read_iops_device());
        x.ThrottleWriteIOPSDevice = throttle(b.throttle_write_iops_device());
        out.BlockIO = protobuf::MessageField::some(x);
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let mut x = oci::LinuxHugepageLimit::new();
        x.Pagesize = h.page_size().clone();
        x.Limit = u64::try_from(h.limit()).map_err(|_| {
            err(
                &format!("linux.resources.hugepageLimits[{i}].limit"),
                format!("expected a non-negative integer, found {}", h.limit()),
            )
        })?;
        out.HugepageLimits.push(x);
    }
    if let Some(n) = r.network() {
        let mut x = oci::LinuxNetwork::new();
        x.ClassID = n.class_id().unwrap_or(0);
        for p in n.priorities().iter().flatten() {
            let mut pr = oci::LinuxInterfacePriority::new();
            pr.Name = p.name().clone();
            pr.Priority = p.priority();
            x.Priorities.push(pr);
        }
        out.Network = protobuf::MessageField::some(x);
    }
    Ok(out)
}

fn linux(l: &spec::Linux) -> Result<oci::Linux> {
    let mut out = oci::Linux::new();
    out.UIDMappings = id_mappings(l.uid_mappings());
    out.GIDMappings = id_mappings(l.gid_mappings());
    out.Sysctl = l.sysctl().clone().unwrap_or_default();
    if let Some(r) = l.resources() {
        out.Resources = protobuf::MessageField::some(resources(r)?);
    }
    out.CgroupsPath = opt_path(l.cgroups_path());
    for n in l.namespaces().iter().flatten() {
        let mut x = oci::LinuxNamespace::new();
        x.Type = name(&n.typ());
        x.Path = opt_path(n.path());
        out.Namespaces.push(x);
    }
    for d in l.devices().iter().flatten() {
        let mut x = oci::LinuxDevice::new();
        x.Path = path_str(d.path());
        x.Type = name(&d.typ());
        x.Major = d.major();
        x.Minor = d.minor();
        x.FileMode = d.file_mode().unwrap_or(0);
        x.UID = d.uid().unwrap_or(0);
        x.GID = d.gid().unwrap_or(0);
        out.Devices.push(x);
    }
    if let Some(sc) = l.seccomp() {
        let mut x = oci::LinuxSeccomp::new();
        x.DefaultAction = name(&sc.default_action());
        x.Architectures = names(sc.architectures());
        x.Flags = names(sc.flags());
        for s in sc.syscalls().iter().flatten() {
            let mut sys = oci::LinuxSyscall::new();
            sys.Names = s.names().clone();
            sys.Action = name(&s.action());
            if let Some(e) = s.errno_ret() {
                sys.set_errnoret(e);
            }
            for a in s.args().iter().flatten() {
                let mut arg = oci::LinuxSeccompArg::new();
                arg.Index = a.index() as u64;
                arg.Value = a.value();
                arg.ValueTwo = a.value_two().unwrap_or(0);
                arg.Op = name(&a.op());
                sys.Args.push(arg);
            }
            x.Syscalls.push(sys);
        }
        out.Seccomp = protobuf::MessageField::some(x);
    }
    out.RootfsPropagation = l.rootfs_propagation().clone().unwrap_or_default();
    out.MaskedPaths = strings(l.masked_paths());
    out.ReadonlyPaths = strings(l.readonly_paths());
    out.MountLabel = l.mount_label().clone().unwrap_or_default();
    if let Some(rdt) = l.intel_rdt() {
        let mut x = oci::LinuxIntelRdt::new();
        x.L3CacheSchema = rdt.l3_cache_schema().clone().unwrap_or_default();
        out.IntelRdt = protobuf::MessageField::some(x);
    }
    Ok(out)
}

/// The type URL containerd gives the `resources` of `Task.Update` on Linux:
/// the runtime spec's `LinuxResources` as JSON (containerd's `typeurl`
/// encodes types that are not protobuf messages so; `ctr`, CRI's
/// UpdateContainerResources and nerdctl all send it).
pub const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

/// `Task.Update`'s resources (an `Any`) to the agent's `LinuxResources`.
pub fn resources_from_any(type_url: &str, value: &[u8]) -> Result<oci::LinuxResources> {
    if type_url != LINUX_RESOURCES_TYPE_URL {
        return Err(err(
            "resources",
            format!("type {type_url:?} is not {LINUX_RESOURCES_TYPE_URL} (JSON LinuxResources of the OCI runtime spec)"),
        ));
    }
    let r: spec::LinuxResources = from_json(value, "resources", "resources")?;
    resources(&r)
}

/// Whether a pod's container asks for the pod's PID namespace (CRI's
/// shareProcessNamespace: its `pid` namespace names the sandbox's by path,
/// a host path that means nothing in the guest). Read before
/// [`adapt_for_guest`] drops the paths.
pub fn shares_sandbox_pidns(spec: &oci::Spec) -> bool {
    spec.Linux.as_ref().is_some_and(|l| {
        l.Namespaces
            .iter()
            .any(|n| n.Type == "pid" && !n.Path.is_empty())
    })
}

/// What [`adapt_for_guest`] removed, for the shim's log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Adaptation {
    pub dropped_hooks: usize,
    pub dropped_namespace_paths: Vec<String>,
}

/// Adapt a spec to run in the guest as container `container_id` (see the
/// module doc).
pub fn adapt_for_guest(spec: &mut oci::Spec, container_id: &str) -> Adaptation {
    let mut done = Adaptation::default();
    let root = spec.Root.mut_or_insert_default();
    root.Path = guest_rootfs(container_id);
    if let Some(h) = spec.Hooks.take() {
        done.dropped_hooks = h.Prestart.len() + h.Poststart.len() + h.Poststop.len();
    }
    if let Some(p) = spec.Process.as_mut() {
        adapt_process(p);
    }
    if let Some(l) = spec.Linux.as_mut() {
        for ns in l.Namespaces.iter_mut() {
            if !ns.Path.is_empty() {
                done.dropped_namespace_paths
                    .push(format!("{}={}", ns.Type, ns.Path));
                ns.Path.clear();
            }
        }
        l.MountLabel.clear();
    }
    done
}

/// The pod's network namespace: the `network` namespace's path on the
/// host, if the spec joins one (read before [`adapt_for_guest`] drops it).
pub fn network_namespace_path(spec: &oci::Spec) -> Option<std::path::PathBuf> {
    spec.Linux
        .as_ref()?
        .Namespaces
        .iter()
        .find(|n| n.Type == "network" && !n.Path.is_empty())
        .map(|n| std::path::PathBuf::from(&n.Path))
}

/// Process fields that name host security modules.
pub fn adapt_process(p: &mut oci::Process) {
    p.ApparmorProfile.clear();
    p.SelinuxLabel.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like the config.json `ctr run` writes (containerd 1.6).
    const CTR_SPEC: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {
    "terminal": true,
    "consoleSize": {"height": 40, "width": 120},
    "user": {"uid": 0, "gid": 0, "additionalGids": [10]},
    "args": ["sh", "-c", "echo hi"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "cwd": "/",
    "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true,
    "apparmorProfile": "cri-containerd.apparmor.d",
    "oomScoreAdj": -998
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "box",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
  ],
  "hooks": {"prestart": [{"path": "/usr/bin/netns-hook", "args": ["netns-hook"], "timeout": 5}]},
  "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
  "linux": {
    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "sysctl": {"net.ipv4.ip_forward": "1"},
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
      "memory": {"limit": 268435456, "swappiness": 60},
      "cpu": {"shares": 1024, "quota": -1, "period": 100000, "cpus": "0-1"},
      "pids": {"limit": 100}
    },
    "cgroupsPath": "/default/c1",
    "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/42/ns/net"}, {"type": "mount"}],
    "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                             {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                              "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]}]},
    "maskedPaths": ["/proc/kcore"],
    "readonlyPaths": ["/proc/sys"]
  },
  "unknownTopLevel": {"ignored": true}
}"#;

    #[test]
    fn converts_a_ctr_spec() {
        let s = spec_from_json(CTR_SPEC).unwrap();
        assert_eq!(s.Version, "1.0.2-dev");
        let p = s.Process.as_ref().unwrap();
        assert!(p.Terminal);
        assert_eq!(p.ConsoleSize.Height, 40);
        assert_eq!(p.ConsoleSize.Width, 120);
        assert_eq!(p.User.AdditionalGids, [10]);
        assert_eq!(p.Args, ["sh", "-c", "echo hi"]);
        assert_eq!(p.Cwd, "/");
        assert_eq!(p.Capabilities.Bounding, ["CAP_CHOWN", "CAP_KILL"]);
        assert_eq!(p.Rlimits[0].Type, "RLIMIT_NOFILE");
        assert_eq!(p.Rlimits[0].Hard, 1024);
        assert!(p.NoNewPrivileges);
        assert_eq!(p.OOMScoreAdj, -998);
        assert_eq!(s.Root.Path, "rootfs");
        assert_eq!(s.Hostname, "box");
        assert_eq!(s.Mounts.len(), 2);
        assert_eq!(s.Mounts[1].destination, "/dev");
        assert_eq!(s.Mounts[1].type_, "tmpfs");
        assert_eq!(s.Mounts[1].options[2], "mode=755");
        assert_eq!(s.Hooks.Prestart[0].Timeout, 5);
        assert_eq!(s.Annotations["io.kubernetes.cri.container-type"], "sandbox");
        let l = s.Linux.as_ref().unwrap();
        assert_eq!(l.UIDMappings[0].HostID, 100000);
        assert_eq!(l.Sysctl["net.ipv4.ip_forward"], "1");
        let r = l.Resources.as_ref().unwrap();
        assert_eq!(
            (r.Devices[0].Major, r.Devices[0].Minor),
            (-1, -1),
            "wildcards"
        );
        assert_eq!((r.Devices[1].Major, r.Devices[1].Minor), (1, 3));
        assert_eq!(r.Memory.Limit, 268435456);
        assert_eq!(r.CPU.Quota, -1);
        assert_eq!(r.CPU.Cpus, "0-1");
        assert_eq!(r.Pids.Limit, 100);
        assert_eq!(l.CgroupsPath, "/default/c1");
        assert_eq!(l.Namespaces[1].Path, "/proc/42/ns/net");
        let sc = l.Seccomp.as_ref().unwrap();
        assert_eq!(sc.Syscalls[1].errnoret(), 1);
        assert!(!sc.Syscalls[0].has_errnoret());
        assert_eq!(sc.Syscalls[1].Args[0].Value, 16);
        assert_eq!(l.MaskedPaths, ["/proc/kcore"]);

        // And the encoding round-trips through the wire format.
        use protobuf::Message;
        let bytes = s.write_to_bytes().unwrap();
        assert_eq!(oci::Spec::parse_from_bytes(&bytes).unwrap(), s);
    }

    #[test]
    fn guest_adaptation() {
        let mut s = spec_from_json(CTR_SPEC).unwrap();
        assert_eq!(
            network_namespace_path(&s),
            Some(std::path::PathBuf::from("/proc/42/ns/net"))
        );
        let done = adapt_for_guest(&mut s, "c1");
        assert_eq!(
            s.Root.Path,
            "/run/kata-containers/shared/containers/c1/rootfs"
        );
        assert!(s.Hooks.is_none());
        assert_eq!(done.dropped_hooks, 1);
        assert_eq!(done.dropped_namespace_paths, ["network=/proc/42/ns/net"]);
        assert_eq!(
            network_namespace_path(&s),
            None,
            "adapted: no host path left"
        );
        let l = s.Linux.as_ref().unwrap();
        assert!(l.Namespaces.iter().all(|n| n.Path.is_empty()));
        assert_eq!(l.Namespaces.len(), 3, "namespaces are kept, only paths go");
        assert!(s.Process.ApparmorProfile.is_empty());
    }

    #[test]
    fn update_resources_decode_from_containerds_any() {
        // as containerd's typeurl.MarshalAny(&specs.LinuxResources{...})
        let json = br#"{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":134217728,"swap":134217728},"cpu":{"shares":512,"quota":20000,"period":100000},"pids":{"limit":64}}"#;
        let r = resources_from_any(LINUX_RESOURCES_TYPE_URL, json).unwrap();
        assert_eq!((r.Memory.Limit, r.Memory.Swap), (134217728, 134217728));
        assert_eq!(
            (r.CPU.Shares, r.CPU.Quota, r.CPU.Period),
            (512, 20000, 100000)
        );
        assert_eq!(r.Pids.Limit, 64);
        assert_eq!(r.Devices[0].Major, -1);
        let e = resources_from_any(
            "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources",
            b"{}",
        )
        .unwrap_err();
        assert_eq!(e.field, "resources");
        assert!(e.message.contains("WindowsResources"), "{e}");
        let e = resources_from_any(LINUX_RESOURCES_TYPE_URL, br#"{"memory":{"limit":"64M"}}"#)
            .unwrap_err();
        assert_eq!(e.field, "resources.memory.limit");
        let e = resources_from_any(LINUX_RESOURCES_TYPE_URL, b"\x08\x01").unwrap_err();
        assert_eq!(e.field, "resources");
    }

    #[test]
    fn a_named_pid_namespace_is_the_pods() {
        let mut s = spec_from_json(CRI_SPEC).unwrap();
        assert!(!shares_sandbox_pidns(&s), "pid without a path: its own");
        s.Linux.as_mut().unwrap().Namespaces[0].Path = "/proc/42/ns/pid".into();
        assert!(shares_sandbox_pidns(&s));
        adapt_for_guest(&mut s, "c1");
        assert!(!shares_sandbox_pidns(&s), "read it before the adaptation");
    }

    #[test]
    fn exec_process_json() {
        let p = process_from_json(
            br#"{"args":["ls","-l"],"env":["A=1"],"cwd":"/tmp","terminal":false,"user":{"uid":1000,"gid":1000}}"#,
        )
        .unwrap();
        assert_eq!(p.Args, ["ls", "-l"]);
        assert_eq!(p.User.UID, 1000);
        assert_eq!(p.Cwd, "/tmp");
    }

    /// Shaped like the config.json containerd's CRI plugin writes for a
    /// pod's container (containerd 1.7 / 2.0): CRI annotations, the
    /// RuntimeDefault seccomp profile, resources, devices, user namespaces.
    const CRI_SPEC: &str = r#"{
  "ociVersion": "1.1.0",
  "process": {
    "user": {"uid": 65534, "gid": 65534, "umask": 18, "additionalGids": [65534]},
    "args": ["/pause"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=web-0"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_SETUID", "CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_SYS_CHROOT"],
      "effective": ["CAP_CHOWN"],
      "permitted": ["CAP_CHOWN"]
    },
    "noNewPrivileges": true,
    "apparmorProfile": "cri-containerd.apparmor.d",
    "oomScoreAdj": -998,
    "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"
  },
  "root": {"path": "rootfs", "readonly": true},
  "hostname": "web-0",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/u1/etc-hosts", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s1/shm", "options": ["rbind", "ro"],
     "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}], "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}
  ],
  "hooks": {"createRuntime": [{"path": "/usr/bin/nri-hook"}], "poststop": [{"path": "/usr/bin/cleanup", "args": ["cleanup", "--all"], "env": ["A=1"]}]},
  "annotations": {
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.sandbox-id": "s1",
    "io.kubernetes.cri.container-name": "web"
  },
  "linux": {
    "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
    "sysctl": {"net.ipv4.ping_group_range": "0 2147483647"},
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}],
      "memory": {"limit": 536870912, "swap": 536870912, "disableOOMKiller": false},
      "cpu": {"shares": 102, "quota": 50000, "period": 100000, "cpus": "", "mems": ""},
      "pids": {"limit": 4096},
      "blockIO": {"weight": 500, "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
                  "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
      "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
      "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
      "unified": {"memory.oom.group": "1"}
    },
    "cgroupsPath": "kubepods-burstable-pod1.slice:cri-containerd:c1",
    "namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/7/ns/ipc"}, {"type": "uts", "path": "/proc/7/ns/uts"},
                   {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1234"}, {"type": "cgroup"}, {"type": "user"}],
    "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438, "uid": 0, "gid": 0}],
    "seccomp": {
      "defaultAction": "SCMP_ACT_ERRNO",
      "defaultErrnoRet": 1,
      "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
      "flags": ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
      "syscalls": [
        {"names": ["accept", "accept4"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 131072, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}
      ]
    },
    "rootfsPropagation": "rslave",
    "maskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    "mountLabel": "system_u:object_r:container_file_t:s0:c1,c2"
  }
}"#;

    #[test]
    fn converts_a_cri_spec() {
        let s = spec_from_json(CRI_SPEC).unwrap();
        assert_eq!(s.Version, "1.1.0");
        let p = s.Process.as_ref().unwrap();
        assert!(!p.Terminal);
        assert!(p.ConsoleSize.is_none());
        assert_eq!((p.User.UID, p.User.GID), (65534, 65534));
        assert_eq!(p.User.AdditionalGids, [65534]);
        assert_eq!(p.Capabilities.Bounding.len(), 14);
        assert!(
            p.Capabilities.Bounding.is_sorted(),
            "capability sets come out in one order"
        );
        assert!(p.Capabilities.Inheritable.is_empty());
        assert_eq!(p.OOMScoreAdj, -998);
        assert_eq!(p.SelinuxLabel, "system_u:system_r:container_t:s0:c1,c2");
        assert!(s.Root.Readonly);
        assert_eq!(s.Mounts.len(), 5);
        assert_eq!(s.Mounts[1].options[5], "gid=5");
        assert_eq!(s.Mounts[3].source, "/var/lib/kubelet/pods/u1/etc-hosts");
        assert_eq!(s.Hooks.Poststop[0].Args, ["cleanup", "--all"]);
        assert!(s.Hooks.Prestart.is_empty());
        assert_eq!(s.Annotations["io.kubernetes.cri.sandbox-id"], "s1");
        let l = s.Linux.as_ref().unwrap();
        assert_eq!(l.GIDMappings[0].ContainerID, 0);
        assert_eq!(l.GIDMappings[0].Size, 65536);
        let r = l.Resources.as_ref().unwrap();
        assert_eq!(r.Devices[0].Type, "", "absent type stays empty");
        assert_eq!(r.Devices[1].Type, "c");
        assert_eq!(r.Memory.Swap, 536870912);
        assert_eq!(
            (r.CPU.Shares, r.CPU.Quota, r.CPU.Period),
            (102, 50000, 100000)
        );
        assert_eq!(r.Pids.Limit, 4096);
        assert_eq!(r.BlockIO.Weight, 500);
        assert_eq!(r.BlockIO.WeightDevice[0].Weight, 200);
        assert_eq!(r.BlockIO.ThrottleReadBpsDevice[0].Rate, 1048576);
        assert_eq!(r.HugepageLimits[0].Pagesize, "2MB");
        assert_eq!(r.Network.ClassID, 1048577);
        assert_eq!(r.Network.Priorities[0].Name, "eth0");
        assert_eq!(
            l.CgroupsPath,
            "kubepods-burstable-pod1.slice:cri-containerd:c1"
        );
        let ns: Vec<(&str, &str)> = l
            .Namespaces
            .iter()
            .map(|n| (n.Type.as_str(), n.Path.as_str()))
            .collect();
        assert_eq!(
            ns,
            [
                ("pid", ""),
                ("ipc", "/proc/7/ns/ipc"),
                ("uts", "/proc/7/ns/uts"),
                ("mount", ""),
                ("network", "/var/run/netns/cni-1234"),
                ("cgroup", ""),
                ("user", "")
            ]
        );
        assert_eq!(l.Devices[0].Path, "/dev/fuse");
        assert_eq!(l.Devices[0].Type, "c");
        assert_eq!(l.Devices[0].FileMode, 438);
        let sc = l.Seccomp.as_ref().unwrap();
        assert_eq!(sc.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(
            sc.Architectures,
            ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        );
        assert_eq!(sc.Flags, ["SECCOMP_FILTER_FLAG_SPEC_ALLOW"]);
        assert_eq!(sc.Syscalls[2].Args[0].Op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(sc.Syscalls[2].Args[0].Value, 2114060288);
        assert_eq!(l.RootfsPropagation, "rslave");
        assert_eq!(l.ReadonlyPaths.len(), 5);
        assert_eq!(l.MountLabel, "system_u:object_r:container_file_t:s0:c1,c2");

        let mut s = s;
        let done = adapt_for_guest(&mut s, "c1");
        assert_eq!(
            done.dropped_namespace_paths,
            [
                "ipc=/proc/7/ns/ipc",
                "uts=/proc/7/ns/uts",
                "network=/var/run/netns/cni-1234"
            ]
        );
        assert_eq!(done.dropped_hooks, 1, "the poststop hook");
        assert!(s.Process.SelinuxLabel.is_empty());
        assert!(s.Linux.MountLabel.is_empty());
    }

    #[test]
    fn what_the_oci_spec_requires_or_enumerates_is_checked() {
        // process.user and process.cwd are REQUIRED by the OCI spec.
        let e = spec_from_json(r#"{"process": {"args": ["sh"], "cwd": "/"}}"#).unwrap_err();
        assert_eq!(e.field, "process");
        assert!(e.message.contains("user"), "{e}");
        let e =
            process_from_json(br#"{"args": ["sh"], "user": {"uid": 0, "gid": 0}}"#).unwrap_err();
        assert_eq!(e.field, "process");
        assert!(e.message.contains("cwd"), "{e}");
        let e = spec_from_json(r#"{"mounts": [{"type": "proc"}]}"#).unwrap_err();
        assert_eq!(e.field, "mounts[0]");
        assert!(e.message.contains("destination"), "{e}");
        let e = spec_from_json(
            r#"{"process": {"user": {"uid": 0}, "cwd": "/", "capabilities": {"bounding": ["CAP_CHOWN", "CAP_FLY"]}}}"#,
        )
        .unwrap_err();
        assert!(e.field.starts_with("process.capabilities.bounding"), "{e}");
        assert!(e.message.contains("CAP_FLY"), "{e}");
        let e = spec_from_json(r#"{"linux": {"namespaces": [{"type": "net"}]}}"#).unwrap_err();
        assert_eq!(e.field, "linux.namespaces[0].type");
        // Unknown fields are not errors, wherever they are.
        let s = spec_from_json(
            r#"{"ociVersion": "1.2.0", "future": 1, "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "future": [1]}}"#,
        )
        .unwrap();
        assert_eq!(s.Process.Cwd, "/");
        // The whole document: not JSON, or more than one value.
        assert_eq!(spec_from_json("{} {}").unwrap_err().field, "config.json");
        assert_eq!(process_from_json(b"nope").unwrap_err().field, "process");
    }

    #[test]
    fn bad_types_name_the_field() {
        let e = spec_from_json(r#"{"process": {"args": "sh"}}"#).unwrap_err();
        assert_eq!(e.field, "process.args");
        let e =
            spec_from_json(r#"{"linux": {"resources": {"memory": {"limit": "1G"}}}}"#).unwrap_err();
        assert_eq!(e.field, "linux.resources.memory.limit");
        let e = spec_from_json(r#"{"process": {"user": {"uid": -1}}}"#).unwrap_err();
        assert_eq!(e.field, "process.user.uid");
        let e = spec_from_json(r#"{"mounts": [{"options": [1]}]}"#).unwrap_err();
        assert_eq!(e.field, "mounts[0].options[0]");
        let e = spec_from_json("{").unwrap_err();
        assert_eq!(e.field, "config.json");
    }
}
