//! From the protobuf OCI spec of the agent API (`grpc.Spec`, `grpc.Process`)
//! to the OCI runtime-spec JSON (`config.json`, `process.json`) that
//! libcontainer reads, through `oci-spec`'s typed `Spec`/`Process`.
//!
//! The conversion goes through JSON on purpose: the field names written here
//! are those of the runtime-spec document, so each line can be checked
//! against it, and `oci-spec`'s deserializer validates every enum-like string
//! (capability names, rlimit types, namespace types...) on the way.
//!
//! proto3 scalars have no presence: a zero number or empty string means
//! "not set" and is left out (as upstream's own conversions do), except where
//! zero is meaningful and the field is required (uid/gid, sizes).

use oci_spec::runtime::{Process as OciProcess, Spec as OciSpec};
use protocols::oci;
use serde_json::{json, Map, Value};

/// The OCI version written when the request leaves `Version` empty.
pub const DEFAULT_OCI_VERSION: &str = "1.0.2";

#[derive(Debug, thiserror::Error)]
#[error("OCI spec: {0}")]
pub struct SpecError(pub String);

/// Inserts `value` under `key` unless it is JSON null, "" or an empty array/object.
fn put(map: &mut Map<String, Value>, key: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        map.insert(key.to_string(), value);
    }
}

/// A number, or null when it is zero (proto3 "not set").
fn nonzero<T: Into<i128> + Copy>(n: T) -> Value {
    let v: i128 = n.into();
    if v == 0 {
        Value::Null
    } else {
        json!(v as i64)
    }
}

/// Like [`nonzero`] for unsigned 64-bit values that may not fit in i64.
fn nonzero_u64(n: u64) -> Value {
    if n == 0 {
        Value::Null
    } else {
        json!(n)
    }
}

pub fn process_json(p: &oci::Process) -> Value {
    let mut m = Map::new();
    if p.Terminal {
        m.insert("terminal".into(), json!(true));
    }
    if let Some(b) = p.ConsoleSize.as_ref() {
        if b.Height != 0 || b.Width != 0 {
            m.insert(
                "consoleSize".into(),
                json!({"height": b.Height, "width": b.Width}),
            );
        }
    }
    let user = p.User.as_ref().cloned().unwrap_or_default();
    let mut u = Map::new();
    u.insert("uid".into(), json!(user.UID));
    u.insert("gid".into(), json!(user.GID));
    put(&mut u, "additionalGids", json!(user.AdditionalGids));
    put(&mut u, "username", json!(user.Username));
    m.insert("user".into(), Value::Object(u));
    put(&mut m, "args", json!(p.Args));
    put(&mut m, "env", json!(p.Env));
    // runtime-spec: cwd is required and absolute
    let cwd = if p.Cwd.is_empty() {
        "/"
    } else {
        p.Cwd.as_str()
    };
    m.insert("cwd".into(), json!(cwd));
    if let Some(c) = p.Capabilities.as_ref() {
        let mut caps = Map::new();
        put(&mut caps, "bounding", json!(c.Bounding));
        put(&mut caps, "effective", json!(c.Effective));
        put(&mut caps, "inheritable", json!(c.Inheritable));
        put(&mut caps, "permitted", json!(c.Permitted));
        put(&mut caps, "ambient", json!(c.Ambient));
        // present even when empty: an empty set drops every capability
        m.insert("capabilities".into(), Value::Object(caps));
    }
    let rlimits: Vec<Value> = p
        .Rlimits
        .iter()
        .map(|r| json!({"type": r.Type, "hard": r.Hard, "soft": r.Soft}))
        .collect();
    put(&mut m, "rlimits", json!(rlimits));
    if p.NoNewPrivileges {
        m.insert("noNewPrivileges".into(), json!(true));
    }
    put(&mut m, "apparmorProfile", json!(p.ApparmorProfile));
    put(&mut m, "oomScoreAdj", nonzero(p.OOMScoreAdj));
    put(&mut m, "selinuxLabel", json!(p.SelinuxLabel));
    Value::Object(m)
}

fn hooks_json(h: &oci::Hooks) -> Value {
    let list = |hooks: &[oci::Hook]| -> Value {
        json!(hooks
            .iter()
            .map(|k| {
                let mut m = Map::new();
                m.insert("path".into(), json!(k.Path));
                put(&mut m, "args", json!(k.Args));
                put(&mut m, "env", json!(k.Env));
                put(&mut m, "timeout", nonzero(k.Timeout));
                Value::Object(m)
            })
            .collect::<Vec<_>>())
    };
    let mut m = Map::new();
    put(&mut m, "prestart", list(&h.Prestart));
    put(&mut m, "poststart", list(&h.Poststart));
    put(&mut m, "poststop", list(&h.Poststop));
    Value::Object(m)
}

/// Device numbers: upstream encodes "any" (`*`) as -1.
fn device_number(n: i64) -> Value {
    if n < 0 {
        Value::Null
    } else {
        json!(n)
    }
}

fn resources_json(r: &oci::LinuxResources) -> Value {
    let mut m = Map::new();
    let devices: Vec<Value> = r
        .Devices
        .iter()
        .map(|d| {
            let mut e = Map::new();
            e.insert("allow".into(), json!(d.Allow));
            put(&mut e, "type", json!(d.Type));
            put(&mut e, "major", device_number(d.Major));
            put(&mut e, "minor", device_number(d.Minor));
            put(&mut e, "access", json!(d.Access));
            Value::Object(e)
        })
        .collect();
    put(&mut m, "devices", json!(devices));
    if let Some(mem) = r.Memory.as_ref() {
        let mut e = Map::new();
        put(&mut e, "limit", nonzero(mem.Limit));
        put(&mut e, "reservation", nonzero(mem.Reservation));
        put(&mut e, "swap", nonzero(mem.Swap));
        put(&mut e, "kernel", nonzero(mem.Kernel));
        put(&mut e, "kernelTCP", nonzero(mem.KernelTCP));
        put(&mut e, "swappiness", nonzero_u64(mem.Swappiness));
        if mem.DisableOOMKiller {
            e.insert("disableOOMKiller".into(), json!(true));
        }
        put(&mut m, "memory", Value::Object(e));
    }
    if let Some(cpu) = r.CPU.as_ref() {
        let mut e = Map::new();
        put(&mut e, "shares", nonzero_u64(cpu.Shares));
        put(&mut e, "quota", nonzero(cpu.Quota));
        put(&mut e, "period", nonzero_u64(cpu.Period));
        put(&mut e, "realtimeRuntime", nonzero(cpu.RealtimeRuntime));
        put(&mut e, "realtimePeriod", nonzero_u64(cpu.RealtimePeriod));
        put(&mut e, "cpus", json!(cpu.Cpus));
        put(&mut e, "mems", json!(cpu.Mems));
        put(&mut m, "cpu", Value::Object(e));
    }
    if let Some(p) = r.Pids.as_ref() {
        if p.Limit != 0 {
            m.insert("pids".into(), json!({"limit": p.Limit}));
        }
    }
    if let Some(b) = r.BlockIO.as_ref() {
        let mut e = Map::new();
        put(&mut e, "weight", nonzero(b.Weight));
        put(&mut e, "leafWeight", nonzero(b.LeafWeight));
        let weights: Vec<Value> = b
            .WeightDevice
            .iter()
            .map(|w| {
                let mut d = Map::new();
                d.insert("major".into(), json!(w.Major));
                d.insert("minor".into(), json!(w.Minor));
                put(&mut d, "weight", nonzero(w.Weight));
                put(&mut d, "leafWeight", nonzero(w.LeafWeight));
                Value::Object(d)
            })
            .collect();
        put(&mut e, "weightDevice", json!(weights));
        let throttle = |list: &[oci::LinuxThrottleDevice]| -> Value {
            json!(list
                .iter()
                .map(|t| json!({"major": t.Major, "minor": t.Minor, "rate": t.Rate}))
                .collect::<Vec<_>>())
        };
        put(
            &mut e,
            "throttleReadBpsDevice",
            throttle(&b.ThrottleReadBpsDevice),
        );
        put(
            &mut e,
            "throttleWriteBpsDevice",
            throttle(&b.ThrottleWriteBpsDevice),
        );
        put(
            &mut e,
            "throttleReadIOPSDevice",
            throttle(&b.ThrottleReadIOPSDevice),
        );
        put(
            &mut e,
            "throttleWriteIOPSDevice",
            throttle(&b.ThrottleWriteIOPSDevice),
        );
        put(&mut m, "blockIO", Value::Object(e));
    }
    let huge: Vec<Value> = r
        .HugepageLimits
        .iter()
        .map(|h| json!({"pageSize": h.Pagesize, "limit": h.Limit}))
        .collect();
    put(&mut m, "hugepageLimits", json!(huge));
    if let Some(n) = r.Network.as_ref() {
        let mut e = Map::new();
        put(&mut e, "classID", nonzero(n.ClassID));
        let prios: Vec<Value> = n
            .Priorities
            .iter()
            .map(|p| json!({"name": p.Name, "priority": p.Priority}))
            .collect();
        put(&mut e, "priorities", json!(prios));
        put(&mut m, "network", Value::Object(e));
    }
    Value::Object(m)
}

/// `linux.seccomp`; crate::seccomp checks and translates it. A message
/// with neither a default action nor rules is no profile.
fn seccomp_json(s: &oci::LinuxSeccomp) -> Value {
    if s.DefaultAction.is_empty() && s.Syscalls.is_empty() {
        return Value::Null;
    }
    let mut m = Map::new();
    m.insert("defaultAction".into(), json!(s.DefaultAction));
    put(&mut m, "architectures", json!(s.Architectures));
    put(&mut m, "flags", json!(s.Flags));
    let syscalls: Vec<Value> = s
        .Syscalls
        .iter()
        .map(|c| {
            let mut e = Map::new();
            e.insert("names".into(), json!(c.Names));
            e.insert("action".into(), json!(c.Action));
            if let Some(oci::linux_syscall::ErrnoRet::Errnoret(n)) = c.ErrnoRet {
                e.insert("errnoRet".into(), json!(n));
            }
            let args: Vec<Value> = c
                .Args
                .iter()
                .map(|a| {
                    json!({"index": a.Index, "value": a.Value, "valueTwo": a.ValueTwo, "op": a.Op})
                })
                .collect();
            put(&mut e, "args", json!(args));
            Value::Object(e)
        })
        .collect();
    put(&mut m, "syscalls", json!(syscalls));
    Value::Object(m)
}

fn linux_json(l: &oci::Linux) -> Value {
    let mut m = Map::new();
    let idmap = |list: &[oci::LinuxIDMapping]| -> Value {
        json!(list
            .iter()
            .map(|i| json!({"containerID": i.ContainerID, "hostID": i.HostID, "size": i.Size}))
            .collect::<Vec<_>>())
    };
    put(&mut m, "uidMappings", idmap(&l.UIDMappings));
    put(&mut m, "gidMappings", idmap(&l.GIDMappings));
    put(&mut m, "sysctl", json!(l.Sysctl));
    if let Some(r) = l.Resources.as_ref() {
        put(&mut m, "resources", resources_json(r));
    }
    put(&mut m, "cgroupsPath", json!(l.CgroupsPath));
    let namespaces: Vec<Value> = l
        .Namespaces
        .iter()
        .map(|n| {
            let mut e = Map::new();
            e.insert("type".into(), json!(n.Type));
            put(&mut e, "path", json!(n.Path));
            Value::Object(e)
        })
        .collect();
    // present even when empty: no namespaces at all is a valid request
    m.insert("namespaces".into(), json!(namespaces));
    let devices: Vec<Value> = l
        .Devices
        .iter()
        .map(|d| {
            let mut e = Map::new();
            e.insert("path".into(), json!(d.Path));
            e.insert("type".into(), json!(d.Type));
            e.insert("major".into(), json!(d.Major));
            e.insert("minor".into(), json!(d.Minor));
            put(&mut e, "fileMode", nonzero(d.FileMode));
            e.insert("uid".into(), json!(d.UID));
            e.insert("gid".into(), json!(d.GID));
            Value::Object(e)
        })
        .collect();
    put(&mut m, "devices", json!(devices));
    if let Some(sc) = l.Seccomp.as_ref() {
        put(&mut m, "seccomp", seccomp_json(sc));
    }
    put(&mut m, "rootfsPropagation", json!(l.RootfsPropagation));
    put(&mut m, "maskedPaths", json!(l.MaskedPaths));
    put(&mut m, "readonlyPaths", json!(l.ReadonlyPaths));
    put(&mut m, "mountLabel", json!(l.MountLabel));
    if let Some(rdt) = l.IntelRdt.as_ref() {
        if !rdt.L3CacheSchema.is_empty() {
            m.insert(
                "intelRdt".into(),
                json!({"l3CacheSchema": rdt.L3CacheSchema}),
            );
        }
    }
    Value::Object(m)
}

pub fn spec_json(s: &oci::Spec) -> Value {
    let mut m = Map::new();
    let version = if s.Version.is_empty() {
        DEFAULT_OCI_VERSION
    } else {
        s.Version.as_str()
    };
    m.insert("ociVersion".into(), json!(version));
    if let Some(p) = s.Process.as_ref() {
        m.insert("process".into(), process_json(p));
    }
    if let Some(r) = s.Root.as_ref() {
        let mut root = Map::new();
        root.insert("path".into(), json!(r.Path));
        if r.Readonly {
            root.insert("readonly".into(), json!(true));
        }
        m.insert("root".into(), Value::Object(root));
    }
    put(&mut m, "hostname", json!(s.Hostname));
    let mounts: Vec<Value> = s
        .Mounts
        .iter()
        .map(|mt| {
            let mut e = Map::new();
            e.insert("destination".into(), json!(mt.destination));
            put(&mut e, "source", json!(mt.source));
            put(&mut e, "type", json!(mt.type_));
            put(&mut e, "options", json!(mt.options));
            Value::Object(e)
        })
        .collect();
    put(&mut m, "mounts", json!(mounts));
    if let Some(h) = s.Hooks.as_ref() {
        put(&mut m, "hooks", hooks_json(h));
    }
    put(&mut m, "annotations", json!(s.Annotations));
    let linux = s.Linux.as_ref().cloned().unwrap_or_default();
    m.insert("linux".into(), linux_json(&linux));
    Value::Object(m)
}

/// `text` behind a `BufReader<File>` (an anonymous memory file).
///
/// Why not `serde_json::from_str` or `from_value`: oci-spec's `Spec::load`
/// and libcontainer's process.json loader, which the helper half of this
/// binary runs, deserialize through `BufReader<File>`, and serde generates
/// every spec type's deserializer once per reader type. Reading through
/// the same type shares that code instead of linking a second and a third
/// copy of it (the stripped agent was 245,760 bytes larger with `from_str`
/// for the spec and `from_value` for the process).
fn json_reader(text: &str) -> std::io::Result<std::io::BufReader<std::fs::File>> {
    use std::io::{Seek, Write};
    use std::os::fd::FromRawFd;
    // SAFETY: a C string literal and a flag; the returned fd is checked
    // below and owned by the File from then on.
    let fd = unsafe { libc::memfd_create(c"kata-agent-oci-json".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created by memfd_create and nothing else owns it.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(text.as_bytes())?;
    file.rewind()?;
    Ok(std::io::BufReader::new(file))
}

/// The typed spec; a field oci-spec rejects becomes one error naming it.
pub fn to_oci_spec(s: &oci::Spec) -> Result<OciSpec, SpecError> {
    let value = spec_json(s);
    let text = value.to_string();
    let reader =
        json_reader(&text).map_err(|e| SpecError(format!("buffer the converted spec: {e}")))?;
    serde_json::from_reader::<_, OciSpec>(reader)
        .map_err(|e| SpecError(format!("{e} (in the converted spec {text})")))
}

pub fn to_oci_process(p: &oci::Process) -> Result<OciProcess, SpecError> {
    let text = process_json(p).to_string();
    let reader =
        json_reader(&text).map_err(|e| SpecError(format!("process: buffer the JSON: {e}")))?;
    serde_json::from_reader(reader).map_err(|e| SpecError(format!("process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> oci::Spec {
        let mut s = oci::Spec::new();
        let mut p = oci::Process::new();
        p.Args = vec!["sh".into(), "-c".into(), "exit 7".into()];
        p.Env = vec!["PATH=/bin".into()];
        p.Cwd = "/tmp".into();
        let mut u = oci::User::new();
        u.UID = 1000;
        u.GID = 100;
        u.AdditionalGids = vec![10, 11];
        p.User = Some(u).into();
        let mut caps = oci::LinuxCapabilities::new();
        caps.Bounding = vec!["CAP_KILL".into(), "CAP_CHOWN".into()];
        caps.Effective = vec!["CAP_KILL".into()];
        p.Capabilities = Some(caps).into();
        let mut rl = oci::POSIXRlimit::new();
        rl.Type = "RLIMIT_NOFILE".into();
        rl.Hard = 1024;
        rl.Soft = 512;
        p.Rlimits = vec![rl];
        p.NoNewPrivileges = true;
        p.OOMScoreAdj = 100;
        s.Process = Some(p).into();
        let mut r = oci::Root::new();
        r.Path = "/rootfs".into();
        r.Readonly = true;
        s.Root = Some(r).into();
        s.Hostname = "box".into();
        let mut mt = oci::Mount::new();
        mt.destination = "/proc".into();
        mt.source = "proc".into();
        mt.type_ = "proc".into();
        s.Mounts = vec![mt];
        let mut l = oci::Linux::new();
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = "pid".into();
        l.Namespaces = vec![ns.clone()];
        ns.Type = "network".into();
        ns.Path = "/proc/1/ns/net".into();
        l.Namespaces.push(ns);
        l.CgroupsPath = "/kata/c1".into();
        l.MaskedPaths = vec!["/proc/kcore".into()];
        l.ReadonlyPaths = vec!["/proc/sys".into()];
        let mut res = oci::LinuxResources::new();
        let mut mem = oci::LinuxMemory::new();
        mem.Limit = 64 << 20;
        res.Memory = Some(mem).into();
        let mut pids = oci::LinuxPids::new();
        pids.Limit = 50;
        res.Pids = Some(pids).into();
        let mut dev = oci::LinuxDeviceCgroup::new();
        dev.Allow = false;
        dev.Access = "rwm".into();
        dev.Major = -1;
        dev.Minor = -1;
        res.Devices = vec![dev];
        l.Resources = Some(res).into();
        s.Linux = Some(l).into();
        s
    }

    #[test]
    fn spec_fields_map_onto_oci_spec() {
        use oci_spec::runtime::{Capability, LinuxNamespaceType, PosixRlimitType};
        let spec = to_oci_spec(&sample()).unwrap();
        assert_eq!(spec.version(), DEFAULT_OCI_VERSION);
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap()[2], "exit 7");
        assert_eq!(p.cwd().to_str(), Some("/tmp"));
        assert_eq!(p.user().uid(), 1000);
        assert_eq!(p.user().gid(), 100);
        assert_eq!(p.user().additional_gids().as_ref().unwrap(), &vec![10, 11]);
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert!(caps
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::Kill));
        let rl = &p.rlimits().as_ref().unwrap()[0];
        assert_eq!(rl.typ(), PosixRlimitType::RlimitNofile);
        assert_eq!((rl.hard(), rl.soft()), (1024, 512));
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.oom_score_adj(), Some(100));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path().to_str(), Some("/rootfs"));
        assert_eq!(root.readonly(), Some(true));
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        let mounts = spec.mounts().as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ().as_deref(), Some("proc"));
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        assert_eq!(ns[0].typ(), LinuxNamespaceType::Pid);
        assert_eq!(ns[1].typ(), LinuxNamespaceType::Network);
        assert_eq!(
            ns[1].path().as_ref().unwrap().to_str(),
            Some("/proc/1/ns/net")
        );
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap().to_str(),
            Some("/kata/c1")
        );
        assert_eq!(linux.masked_paths().as_ref().unwrap()[0], "/proc/kcore");
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 50);
        let dev = &res.devices().as_ref().unwrap()[0];
        assert!(!dev.allow());
        assert_eq!(dev.major(), None);
    }

    #[test]
    fn bad_names_are_refused_with_the_field() {
        let mut s = sample();
        s.Process
            .as_mut()
            .unwrap()
            .Capabilities
            .as_mut()
            .unwrap()
            .Bounding = vec!["CAP_NOT_A_THING".into()];
        let e = to_oci_spec(&s).unwrap_err();
        assert!(e.to_string().contains("CAP_NOT_A_THING"), "{e}");
        let mut s = sample();
        s.Linux.as_mut().unwrap().Namespaces[0].Type = "bogus".into();
        assert!(to_oci_spec(&s).is_err());
    }

    #[test]
    fn exec_process_converts_alone() {
        let mut p = oci::Process::new();
        p.Args = vec!["cat".into()];
        p.Terminal = true;
        let out = to_oci_process(&p).unwrap();
        assert_eq!(out.terminal(), Some(true));
        assert_eq!(out.cwd().to_str(), Some("/"));
        assert_eq!(out.user().uid(), 0);
    }

    #[test]
    fn seccomp_profile_converts() {
        let mut s = sample();
        let mut call = oci::LinuxSyscall::new();
        call.Names = vec!["personality".into()];
        call.Action = "SCMP_ACT_ERRNO".into();
        call.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(38));
        let mut arg = oci::LinuxSeccompArg::new();
        arg.Index = 0;
        arg.Value = 0xffff;
        arg.ValueTwo = 8;
        arg.Op = "SCMP_CMP_MASKED_EQ".into();
        call.Args = vec![arg];
        let mut allow = oci::LinuxSyscall::new();
        allow.Names = vec!["read".into()];
        allow.Action = "SCMP_ACT_ALLOW".into();
        let mut profile = oci::LinuxSeccomp::new();
        profile.DefaultAction = "SCMP_ACT_KILL_PROCESS".into();
        profile.Architectures = vec!["SCMP_ARCH_X86_64".into()];
        profile.Flags = vec!["SECCOMP_FILTER_FLAG_LOG".into()];
        profile.Syscalls = vec![call, allow];
        s.Linux.as_mut().unwrap().Seccomp = Some(profile).into();
        let value = spec_json(&s);
        let sc = &value["linux"]["seccomp"];
        assert_eq!(sc["syscalls"][0]["errnoRet"], 38);
        assert_eq!(sc["syscalls"][0]["args"][0]["valueTwo"], 8);
        assert!(sc["syscalls"][1].get("errnoRet").is_none());
        // the typed spec takes it (what libcontainer reads) ...
        let spec = to_oci_spec(&s).unwrap();
        let typed = spec.linux().as_ref().unwrap().seccomp().as_ref().unwrap();
        assert_eq!(typed.syscalls().as_ref().unwrap().len(), 2);
        assert_eq!(typed.syscalls().as_ref().unwrap()[0].errno_ret(), Some(38));
        // ... and its JSON translates as the agent's own
        let reparsed = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            crate::seccomp::compile(reparsed.pointer("/linux/seccomp")).unwrap(),
            crate::seccomp::compile(Some(sc)).unwrap()
        );
        // an empty message is no profile
        s.Linux.as_mut().unwrap().Seccomp = Some(oci::LinuxSeccomp::new()).into();
        assert!(spec_json(&s)["linux"].get("seccomp").is_none());
    }
}
