//! The OCI runtime spec as containerd writes it (the bundle's `config.json`,
//! exec's process JSON) converted to the agent API's `oci.Spec` /
//! `oci.Process`, and adapted to run in the guest.
//!
//! The conversion reads the JSON by the OCI field names (camelCase) rather
//! than through typed structs, so that fields this runtime does not know are
//! simply not carried, and so that a wrong type names the field.
//!
//! Guest adaptation ([`adapt_for_guest`]): the root path becomes the
//! container's directory on the shared filesystem as the guest sees it,
//! namespace paths are dropped (host namespaces mean nothing in the VM),
//! host hooks are dropped (they would run in the guest), and AppArmor /
//! SELinux labels are dropped (the guest kernel has neither).

use std::collections::HashMap;

use protocols::oci;
use serde_json::{Map, Value};

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

/// Typed reads from one JSON object; `path` prefixes field names in errors.
struct Obj<'a> {
    path: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, v: Option<&'a Value>) -> Result<Obj<'a>> {
        match v {
            None | Some(Value::Null) => Ok(Obj {
                path: path.into(),
                map: None,
            }),
            Some(Value::Object(m)) => Ok(Obj {
                path: path.into(),
                map: Some(m),
            }),
            Some(other) => Err(err(path, format!("expected an object, found {other}"))),
        }
    }
    fn present(&self) -> bool {
        self.map.is_some()
    }
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
    fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }
    fn obj(&self, key: &str) -> Result<Obj<'a>> {
        Obj::new(&self.field(key), self.raw(key))
    }
    fn string(&self, key: &str) -> Result<String> {
        match self.raw(key) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(err(
                &self.field(key),
                format!("expected a string, found {v}"),
            )),
        }
    }
    fn bool(&self, key: &str) -> Result<bool> {
        match self.raw(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(err(
                &self.field(key),
                format!("expected a boolean, found {v}"),
            )),
        }
    }
    fn i64(&self, key: &str) -> Result<i64> {
        match self.raw(key) {
            None => Ok(0),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| err(&self.field(key), format!("expected an integer, found {v}"))),
        }
    }
    fn u64(&self, key: &str) -> Result<u64> {
        match self.raw(key) {
            None => Ok(0),
            Some(v) => v.as_u64().ok_or_else(|| {
                err(
                    &self.field(key),
                    format!("expected a non-negative integer, found {v}"),
                )
            }),
        }
    }
    fn u32(&self, key: &str) -> Result<u32> {
        let v = self.u64(key)?;
        u32::try_from(v).map_err(|_| err(&self.field(key), format!("{v} does not fit 32 bits")))
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(err(
                        &format!("{}[{i}]", self.field(key)),
                        format!("expected a string, found {other}"),
                    )),
                })
                .collect(),
            Some(v) => Err(err(
                &self.field(key),
                format!("expected an array, found {v}"),
            )),
        }
    }
    fn u32s(&self, key: &str) -> Result<Vec<u32>> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            err(
                                &format!("{}[{i}]", self.field(key)),
                                format!("expected a 32-bit unsigned integer, found {v}"),
                            )
                        })
                })
                .collect(),
            Some(v) => Err(err(
                &self.field(key),
                format!("expected an array, found {v}"),
            )),
        }
    }
    /// Each element of an array of objects.
    fn objs(&self, key: &str) -> Result<Vec<Obj<'a>>> {
        match self.raw(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| Obj::new(&format!("{}[{i}]", self.field(key)), Some(v)))
                .collect(),
            Some(v) => Err(err(
                &self.field(key),
                format!("expected an array, found {v}"),
            )),
        }
    }
    fn string_map(&self, key: &str) -> Result<HashMap<String, String>> {
        let o = self.obj(key)?;
        let mut out = HashMap::new();
        if let Some(m) = o.map {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    other => {
                        return Err(err(
                            &o.field(k),
                            format!("expected a string, found {other}"),
                        ))
                    }
                }
            }
        }
        Ok(out)
    }
}

/// `config.json` text to `oci.Spec` (unadapted).
pub fn spec_from_json(text: &str) -> Result<oci::Spec> {
    let v: Value = serde_json::from_str(text).map_err(|e| err("config.json", e.to_string()))?;
    spec_from_value(&v)
}

pub fn spec_from_value(v: &Value) -> Result<oci::Spec> {
    let o = Obj::new("", Some(v))?;
    let mut s = oci::Spec::new();
    s.Version = o.string("ociVersion")?;
    let p = o.obj("process")?;
    if p.present() {
        s.Process = protobuf::MessageField::some(process(&p)?);
    }
    let r = o.obj("root")?;
    if r.present() {
        let mut root = oci::Root::new();
        root.Path = r.string("path")?;
        root.Readonly = r.bool("readonly")?;
        s.Root = protobuf::MessageField::some(root);
    }
    s.Hostname = o.string("hostname")?;
    for m in o.objs("mounts")? {
        let mut mount = oci::Mount::new();
        mount.destination = m.string("destination")?;
        mount.source = m.string("source")?;
        mount.type_ = m.string("type")?;
        mount.options = m.strings("options")?;
        s.Mounts.push(mount);
    }
    let h = o.obj("hooks")?;
    if h.present() {
        let mut hooks = oci::Hooks::new();
        let list = |key: &str| -> Result<Vec<oci::Hook>> {
            h.objs(key)?
                .iter()
                .map(|x| {
                    let mut hook = oci::Hook::new();
                    hook.Path = x.string("path")?;
                    hook.Args = x.strings("args")?;
                    hook.Env = x.strings("env")?;
                    hook.Timeout = x.i64("timeout")?;
                    Ok(hook)
                })
                .collect()
        };
        hooks.Prestart = list("prestart")?;
        hooks.Poststart = list("poststart")?;
        hooks.Poststop = list("poststop")?;
        s.Hooks = protobuf::MessageField::some(hooks);
    }
    s.Annotations = o.string_map("annotations")?;
    let l = o.obj("linux")?;
    if l.present() {
        s.Linux = protobuf::MessageField::some(linux(&l)?);
    }
    Ok(s)
}

/// An OCI `process` object (also exec's process JSON) to `oci.Process`.
pub fn process_from_json(text: &[u8]) -> Result<oci::Process> {
    let v: Value = serde_json::from_slice(text).map_err(|e| err("process", e.to_string()))?;
    process(&Obj::new("process", Some(&v))?)
}

fn process(p: &Obj) -> Result<oci::Process> {
    let mut out = oci::Process::new();
    out.Terminal = p.bool("terminal")?;
    let cs = p.obj("consoleSize")?;
    if cs.present() {
        let mut b = oci::Box::new();
        b.Height = cs.u32("height")?;
        b.Width = cs.u32("width")?;
        out.ConsoleSize = protobuf::MessageField::some(b);
    }
    let u = p.obj("user")?;
    let mut user = oci::User::new();
    user.UID = u.u32("uid")?;
    user.GID = u.u32("gid")?;
    user.AdditionalGids = u.u32s("additionalGids")?;
    user.Username = u.string("username")?;
    out.User = protobuf::MessageField::some(user);
    out.Args = p.strings("args")?;
    out.Env = p.strings("env")?;
    out.Cwd = p.string("cwd")?;
    let c = p.obj("capabilities")?;
    if c.present() {
        let mut caps = oci::LinuxCapabilities::new();
        caps.Bounding = c.strings("bounding")?;
        caps.Effective = c.strings("effective")?;
        caps.Inheritable = c.strings("inheritable")?;
        caps.Permitted = c.strings("permitted")?;
        caps.Ambient = c.strings("ambient")?;
        out.Capabilities = protobuf::MessageField::some(caps);
    }
    for r in p.objs("rlimits")? {
        let mut rl = oci::POSIXRlimit::new();
        rl.Type = r.string("type")?;
        rl.Hard = r.u64("hard")?;
        rl.Soft = r.u64("soft")?;
        out.Rlimits.push(rl);
    }
    out.NoNewPrivileges = p.bool("noNewPrivileges")?;
    out.ApparmorProfile = p.string("apparmorProfile")?;
    out.OOMScoreAdj = p.i64("oomScoreAdj")?;
    out.SelinuxLabel = p.string("selinuxLabel")?;
    Ok(out)
}

fn id_mappings(l: &Obj, key: &str) -> Result<Vec<oci::LinuxIDMapping>> {
    l.objs(key)?
        .iter()
        .map(|m| {
            let mut x = oci::LinuxIDMapping::new();
            x.HostID = m.u32("hostID")?;
            x.ContainerID = m.u32("containerID")?;
            x.Size = m.u32("size")?;
            Ok(x)
        })
        .collect()
}

fn throttle(b: &Obj, key: &str) -> Result<Vec<oci::LinuxThrottleDevice>> {
    b.objs(key)?
        .iter()
        .map(|d| {
            let mut x = oci::LinuxThrottleDevice::new();
            x.Major = d.i64("major")?;
            x.Minor = d.i64("minor")?;
            x.Rate = d.u64("rate")?;
            Ok(x)
        })
        .collect()
}

fn resources(r: &Obj) -> Result<oci::LinuxResources> {
    let mut out = oci::LinuxResources::new();
    for d in r.objs("devices")? {
        let mut x = oci::LinuxDeviceCgroup::new();
        x.Allow = d.bool("allow")?;
        x.Type = d.string("type")?;
        // -1 (or absent) is the wildcard
        x.Major = if d.raw("major").is_some() {
            d.i64("major")?
        } else {
            -1
        };
        x.Minor = if d.raw("minor").is_some() {
            d.i64("minor")?
        } else {
            -1
        };
        x.Access = d.string("access")?;
        out.Devices.push(x);
    }
    let m = r.obj("memory")?;
    if m.present() {
        let mut x = oci::LinuxMemory::new();
        x.Limit = m.i64("limit")?;
        x.Reservation = m.i64("reservation")?;
        x.Swap = m.i64("swap")?;
        x.Kernel = m.i64("kernel")?;
        x.KernelTCP = m.i64("kernelTCP")?;
        x.Swappiness = m.u64("swappiness")?;
        x.DisableOOMKiller = m.bool("disableOOMKiller")?;
        out.Memory = protobuf::MessageField::some(x);
    }
    let c = r.obj("cpu")?;
    if c.present() {
        let mut x = oci::LinuxCPU::new();
        x.Shares = c.u64("shares")?;
        x.Quota = c.i64("quota")?;
        x.Period = c.u64("period")?;
        x.RealtimeRuntime = c.i64("realtimeRuntime")?;
        x.RealtimePeriod = c.u64("realtimePeriod")?;
        x.Cpus = c.string("cpus")?;
        x.Mems = c.string("mems")?;
        out.CPU = protobuf::MessageField::some(x);
    }
    let p = r.obj("pids")?;
    if p.present() {
        let mut x = oci::LinuxPids::new();
        x.Limit = p.i64("limit")?;
        out.Pids = protobuf::MessageField::some(x);
    }
    let b = r.obj("blockIO")?;
    if b.present() {
        let mut x = oci::LinuxBlockIO::new();
        x.Weight = b.u32("weight")?;
        x.LeafWeight = b.u32("leafWeight")?;
        for d in b.objs("weightDevice")? {
            let mut w = oci::LinuxWeightDevice::new();
            w.Major = d.i64("major")?;
            w.Minor = d.i64("minor")?;
            w.Weight = d.u32("weight")?;
            w.LeafWeight = d.u32("leafWeight")?;
            x.WeightDevice.push(w);
        }
        x.ThrottleReadBpsDevice = throttle(&b, "throttleReadBpsDevice")?;
        x.ThrottleWriteBpsDevice = throttle(&b, "throttleWriteBpsDevice")?;
        x.ThrottleReadIOPSDevice = throttle(&b, "throttleReadIOPSDevice")?;
        x.ThrottleWriteIOPSDevice = throttle(&b, "throttleWriteIOPSDevice")?;
        out.BlockIO = protobuf::MessageField::some(x);
    }
    for h in r.objs("hugepageLimits")? {
        let mut x = oci::LinuxHugepageLimit::new();
        x.Pagesize = h.string("pageSize")?;
        x.Limit = h.u64("limit")?;
        out.HugepageLimits.push(x);
    }
    let n = r.obj("network")?;
    if n.present() {
        let mut x = oci::LinuxNetwork::new();
        x.ClassID = n.u32("classID")?;
        for p in n.objs("priorities")? {
            let mut pr = oci::LinuxInterfacePriority::new();
            pr.Name = p.string("name")?;
            pr.Priority = p.u32("priority")?;
            x.Priorities.push(pr);
        }
        out.Network = protobuf::MessageField::some(x);
    }
    Ok(out)
}

fn linux(l: &Obj) -> Result<oci::Linux> {
    let mut out = oci::Linux::new();
    out.UIDMappings = id_mappings(l, "uidMappings")?;
    out.GIDMappings = id_mappings(l, "gidMappings")?;
    out.Sysctl = l.string_map("sysctl")?;
    let r = l.obj("resources")?;
    if r.present() {
        out.Resources = protobuf::MessageField::some(resources(&r)?);
    }
    out.CgroupsPath = l.string("cgroupsPath")?;
    for n in l.objs("namespaces")? {
        let mut x = oci::LinuxNamespace::new();
        x.Type = n.string("type")?;
        x.Path = n.string("path")?;
        out.Namespaces.push(x);
    }
    for d in l.objs("devices")? {
        let mut x = oci::LinuxDevice::new();
        x.Path = d.string("path")?;
        x.Type = d.string("type")?;
        x.Major = d.i64("major")?;
        x.Minor = d.i64("minor")?;
        x.FileMode = d.u32("fileMode")?;
        x.UID = d.u32("uid")?;
        x.GID = d.u32("gid")?;
        out.Devices.push(x);
    }
    let sc = l.obj("seccomp")?;
    if sc.present() {
        let mut x = oci::LinuxSeccomp::new();
        x.DefaultAction = sc.string("defaultAction")?;
        x.Architectures = sc.strings("architectures")?;
        x.Flags = sc.strings("flags")?;
        for s in sc.objs("syscalls")? {
            let mut sys = oci::LinuxSyscall::new();
            sys.Names = s.strings("names")?;
            sys.Action = s.string("action")?;
            if s.raw("errnoRet").is_some() {
                sys.set_errnoret(s.u32("errnoRet")?);
            }
            for a in s.objs("args")? {
                let mut arg = oci::LinuxSeccompArg::new();
                arg.Index = a.u64("index")?;
                arg.Value = a.u64("value")?;
                arg.ValueTwo = a.u64("valueTwo")?;
                arg.Op = a.string("op")?;
                sys.Args.push(arg);
            }
            x.Syscalls.push(sys);
        }
        out.Seccomp = protobuf::MessageField::some(x);
    }
    out.RootfsPropagation = l.string("rootfsPropagation")?;
    out.MaskedPaths = l.strings("maskedPaths")?;
    out.ReadonlyPaths = l.strings("readonlyPaths")?;
    out.MountLabel = l.string("mountLabel")?;
    let rdt = l.obj("intelRdt")?;
    if rdt.present() {
        let mut x = oci::LinuxIntelRdt::new();
        x.L3CacheSchema = rdt.string("l3CacheSchema")?;
        out.IntelRdt = protobuf::MessageField::some(x);
    }
    Ok(out)
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
        let done = adapt_for_guest(&mut s, "c1");
        assert_eq!(
            s.Root.Path,
            "/run/kata-containers/shared/containers/c1/rootfs"
        );
        assert!(s.Hooks.is_none());
        assert_eq!(done.dropped_hooks, 1);
        assert_eq!(done.dropped_namespace_paths, ["network=/proc/42/ns/net"]);
        let l = s.Linux.as_ref().unwrap();
        assert!(l.Namespaces.iter().all(|n| n.Path.is_empty()));
        assert_eq!(l.Namespaces.len(), 3, "namespaces are kept, only paths go");
        assert!(s.Process.ApparmorProfile.is_empty());
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
