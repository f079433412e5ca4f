//! What kubelet relies on beyond one container: resizing a running
//! container (Task.Update), OOM kills reported as `/tasks/oom`, and a pod's
//! containers sharing the sandbox's VM, IPC, UTS and (on request) PID
//! namespaces, with CRI's /etc/hosts, /etc/hostname and /etc/resolv.conf
//! bind mounts in each.
//!
//! ctr 1.6 has no `task update`: the update goes to the shim's task API
//! (ttrpc on its socket) as containerd's tasks service forwards it, with
//! the `Any` every containerd client builds (JSON `LinuxResources`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use containerd_shim::protos::api::UpdateTaskRequest;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::TaskClient;

use super::bounded::{run_bounded, Running};
use super::scenarios::{expect_code, kill_and_delete, leftovers_now, Runner};

/// The memory limit the update scenario starts with, and the one it sets.
const LIMIT_BEFORE: u64 = 64 << 20;
const LIMIT_AFTER: u64 = 96 << 20;
/// Small enough for `tail /dev/zero` to reach it in moments under TCG.
const OOM_LIMIT: u64 = 32 << 20;

/// The output of `sh -c script` exec'd in a running task.
fn exec_sh(r: &Runner, id: &str, exec_id: &str, script: &str) -> Result<String> {
    let out = run_bounded(
        r.ctr().exec_command(id, exec_id, &["sh", "-c", script]),
        None,
        r.timeout,
    )?
    .require_success()
    .with_context(|| format!("exec {exec_id} in {id}: sh -c {script:?}"))?;
    Ok(out.stdout.trim().to_string())
}

/// The container's own `memory.max`, at the path its /proc/self/cgroup
/// names below its /sys/fs/cgroup (with a cgroup namespace or a bind
/// mount of its cgroup, the top of that mount). ctr's default spec mounts
/// no cgroupfs (CRI's does): [`CGROUP_MOUNT`] adds it.
const READ_MEMORY_MAX: &str = "p=$(busybox cut -d: -f3 /proc/self/cgroup); \
     cat /sys/fs/cgroup$p/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory.max";

/// The cgroup mount CRI puts in every container's spec (read-only).
const CGROUP_MOUNT: &str =
    "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev";

/// `Task.Update` of `id`, through the shim that serves `sandbox`.
fn shim_update(
    r: &Runner,
    sandbox: &str,
    id: &str,
    resources_json: &str,
) -> Result<std::result::Result<(), ttrpc::Error>> {
    let socket = r.env.containerd.shim_socket(sandbox);
    let client = ttrpc::Client::connect(&format!("unix://{}", socket.display()))
        .with_context(|| format!("connect to the shim of {sandbox} at {}", socket.display()))?;
    let mut any = Any::new();
    any.type_url = runtime::oci::LINUX_RESOURCES_TYPE_URL.into();
    any.value = resources_json.as_bytes().to_vec();
    let mut req = UpdateTaskRequest::new();
    req.id = id.into();
    req.resources = MessageField::some(any);
    let ctx = ttrpc::context::with_timeout(r.timeout.as_nanos() as i64);
    Ok(TaskClient::new(client).update(ctx, &req).map(drop))
}

pub(super) fn scenario_update(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(
        id,
        &[
            "-d",
            "--memory-limit",
            &LIMIT_BEFORE.to_string(),
            "--mount",
            CGROUP_MOUNT,
        ],
        &["sleep", "300"],
        None,
    )?
    .require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    let before = exec_sh(r, id, "m1", READ_MEMORY_MAX)?;
    if before != LIMIT_BEFORE.to_string() {
        bail!(
            "memory.max in the container is {before:?}, expected {LIMIT_BEFORE} (--memory-limit)"
        );
    }
    shim_update(
        r,
        id,
        id,
        &format!(r#"{{"memory":{{"limit":{LIMIT_AFTER}}},"pids":{{"limit":100}}}}"#),
    )?
    .map_err(|e| anyhow::anyhow!("Task.Update of {id}: {e}"))?;
    let after = exec_sh(r, id, "m2", READ_MEMORY_MAX)?;
    if after != LIMIT_AFTER.to_string() {
        bail!("after Task.Update memory.max in the container is {after:?}, expected {LIMIT_AFTER}");
    }
    let mut refusals = String::new();
    if r.kata() {
        // a bad value and an unknown container are refused, named
        let e = shim_update(r, id, id, r#"{"memory":{"limit":-5}}"#)?
            .err()
            .context("Task.Update with memory.limit -5 succeeded")?;
        let text = e.to_string();
        if !text.contains("InvalidArgument") && !text.contains("INVALID_ARGUMENT")
            || !text.contains("memory.limit")
        {
            bail!("Task.Update with memory.limit -5: expected INVALID_ARGUMENT naming resources.memory.limit, got {text}");
        }
        let e = shim_update(r, id, "nosuchcontainer", r#"{"pids":{"limit":5}}"#)?
            .err()
            .context("Task.Update of an unknown container succeeded")?;
        if !e.to_string().contains("not found") {
            bail!("Task.Update of an unknown container: expected NOT_FOUND, got {e}");
        }
        refusals =
            "; limit -5 refused naming resources.memory.limit, an unknown id NOT_FOUND".into();
    }
    kill_and_delete(r, id)?;
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "memory.max {before} -> Task.Update -> {after} seen in the container{refusals}"
    ))
}

pub(super) fn scenario_oom(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    // subscribed before the container exists
    let events = Running::spawn(r.ctr().command(&["events"]), None)?;
    std::thread::sleep(Duration::from_millis(500));
    let out = r.run(
        id,
        &["--rm", "--memory-limit", &OOM_LIMIT.to_string()],
        &["busybox", "tail", "/dev/zero"],
        None,
    );
    // the event may trail the exit by a moment
    std::thread::sleep(Duration::from_secs(2));
    let seen = events.wait(Duration::ZERO)?;
    let out = out?;
    expect_code(&out, 137)?;
    let oom: Vec<&str> = seen
        .stdout
        .lines()
        .filter(|l| l.contains("/tasks/oom"))
        .collect();
    if !oom.iter().any(|l| l.contains(id)) {
        bail!(
            "no /tasks/oom event for {id} (OOM events: {oom:?}); `ctr events` saw:\n{}",
            seen.stdout
        );
    }
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "`tail /dev/zero` under a {} MiB limit exited 137 and containerd published {}",
        OOM_LIMIT >> 20,
        oom.join(" | ")
    ))
}

/// The files CRI bind-mounts into every container of a pod.
const POD_FILES: &[(&str, &str)] = &[
    ("hosts", "127.0.0.1 localhost\n10.1.2.3 pod-e2e\n"),
    ("hostname", "pod-e2e\n"),
    ("resolv.conf", "nameserver 10.96.0.10\nsearch e2e.svc\n"),
];

pub(super) fn scenario_pod(r: &mut Runner, ids: &[String]) -> Result<String> {
    let (sandbox, member) = (ids[0].as_str(), ids[1].as_str());
    let files = tempfile::Builder::new().prefix("kata-e2e-pod-").tempdir()?;
    let mut mounts = Vec::new();
    for (name, text) in POD_FILES {
        std::fs::write(files.path().join(name), text)?;
        mounts.push(format!(
            "type=bind,src={},dst=/etc/{name},options=rbind:ro",
            files.path().join(name).display()
        ));
    }
    let mut flags: Vec<String> = vec![
        "-d".into(),
        "--annotation".into(),
        "io.kubernetes.cri.container-type=sandbox".into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
    ];
    for m in &mounts {
        flags.extend(["--mount".into(), m.clone()]);
    }
    let run = |id: &str, flags: &[String], args: &[&str]| -> Result<()> {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        r.run(id, &f, args, None)?.require_success()?;
        r.ctr()
            .wait_task_status(id, "RUNNING", Duration::from_secs(60))
    };
    run(sandbox, &flags, &["sleep", "301"])?;
    // A pod container: CRI's annotations, and shareProcessNamespace (its
    // pid namespace names the sandbox's; the path is the host's, which the
    // shim does not use).
    let mut flags: Vec<String> = vec![
        "-d".into(),
        "--annotation".into(),
        "io.kubernetes.cri.container-type=container".into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
        "--with-ns".into(),
        "pid:/proc/1/ns/pid".into(),
    ];
    for m in &mounts {
        flags.extend(["--mount".into(), m.clone()]);
    }
    run(member, &flags, &["sleep", "302"])?;

    // busybox readlink takes one path at a time
    let probe = "for n in ipc uts; do busybox readlink /proc/self/ns/$n; done; cat /proc/sys/kernel/hostname";
    let in_sandbox = exec_sh(r, sandbox, "ns1", probe)?;
    let in_member = exec_sh(r, member, "ns2", probe)?;
    if !in_member.starts_with("ipc:[") || !in_member.contains("\nuts:[") {
        bail!("the namespace probe printed no ipc:[inode] and uts:[inode] lines: {in_member:?}");
    }
    if in_sandbox != in_member {
        bail!("the pod's containers do not share IPC and UTS: sandbox sees {in_sandbox:?}, member {in_member:?}");
    }
    // ctr 1.6 cannot set a spec hostname: the shim names the guest (and
    // so the sandbox container's new UTS namespace) after the sandbox
    if !in_member.ends_with(sandbox) {
        bail!("hostname in the pod is not the sandbox's {sandbox}: {in_member:?}");
    }
    let pid1 = exec_sh(r, member, "ns3", "busybox tr '\\0' ' ' < /proc/1/cmdline")?;
    if pid1 != "sleep 301" {
        bail!("with the sandbox's PID namespace the member's pid 1 is the sandbox's `sleep 301`, not {pid1:?}");
    }
    for (name, text) in POD_FILES {
        for id in [sandbox, member] {
            let seen = exec_sh(
                r,
                id,
                &format!("f{}", name.len()),
                &format!("cat /etc/{name}"),
            )?;
            if seen != text.trim() {
                bail!("/etc/{name} in {id} is {seen:?}, not the bind-mounted {text:?}");
            }
        }
    }
    kill_and_delete(r, member)?;
    kill_and_delete(r, sandbox)?;
    leftovers_now(&r.env.containerd)?;
    drop(files);
    Ok(format!(
        "one VM; both see {} ; the member's pid 1 is the sandbox's `sleep 301`; /etc/hosts, /etc/hostname, /etc/resolv.conf bind mounts in both",
        in_member.replace('\n', " ")
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_update_json_is_what_the_shim_decodes() {
        let json = format!(
            r#"{{"memory":{{"limit":{}}},"pids":{{"limit":100}}}}"#,
            super::LIMIT_AFTER
        );
        let r = runtime::oci::resources_from_any(
            runtime::oci::LINUX_RESOURCES_TYPE_URL,
            json.as_bytes(),
        )
        .unwrap();
        assert_eq!(r.Memory.Limit as u64, super::LIMIT_AFTER);
        assert_eq!(r.Pids.Limit, 100);
    }
}
