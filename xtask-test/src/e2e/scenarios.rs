//! The container scenarios and fault injections, each a function over a
//! [`Runner`] that returns what it saw or fails saying what went wrong.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xtask::context::Ctx;

use super::bounded::{run_bounded, Outcome, Running};
use super::containerd::{Ctr, PrivateContainerd};
use super::host::{signal, ProcInfo};
use super::{sandbox_footprint, E2eEnv, KATA_CONF_ENV, KATA_RUNTIME, KATA_STATE_ROOT};

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub passed: bool,
    pub ms: u64,
    pub detail: String,
}

pub(super) struct Runner<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) env: &'a E2eEnv,
    pub(super) runtime: String,
    pub(super) timeout: Duration,
    pub(super) results: Vec<ScenarioResult>,
    pub(super) guest_kernel: Option<String>,
    /// `--scenario NAME`s: run only these (empty: all).
    pub(super) only: Vec<String>,
    /// Every scenario name offered to [`Runner::scenario`], run or not.
    pub(super) offered: Vec<String>,
}

impl Runner<'_> {
    pub(super) fn kata(&self) -> bool {
        self.runtime == KATA_RUNTIME
    }

    pub(super) fn ctr(&self) -> Ctr {
        self.env.ctr()
    }

    pub(super) fn run(
        &self,
        id: &str,
        flags: &[&str],
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Outcome> {
        let cmd = self
            .ctr()
            .run_command(&self.runtime, flags, &self.env.image.name, id, args);
        run_bounded(cmd, stdin.map(|s| s.to_vec()), self.timeout)
    }

    /// Runs one scenario; a failure carries the containerd (and so shim)
    /// log tail, and the containers it created are removed afterwards.
    pub(super) fn scenario(
        &mut self,
        name: &str,
        ids: &[&str],
        f: impl FnOnce(&mut Self, &[String]) -> Result<String>,
    ) {
        self.offered.push(name.into());
        if !self.only.is_empty() && !self.only.iter().any(|o| o == name) {
            return;
        }
        let ids: Vec<String> = ids.iter().map(|n| self.env.containerd.new_id(n)).collect();
        let t = Instant::now();
        let r = f(self, &ids);
        let ms = t.elapsed().as_millis() as u64;
        let (passed, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => {
                for id in &ids {
                    self.env.containerd.force_remove(id);
                }
                (
                    false,
                    format!(
                        "{e:#}\n--- containerd log tail ({}):\n{}",
                        self.env.containerd.log.display(),
                        self.env.containerd.log_tail()
                    ),
                )
            }
        };
        if passed {
            self.ctx
                .ui
                .info(&format!("PASS {name} ({ms} ms): {detail}"));
        } else {
            self.ctx
                .ui
                .info(&format!("FAIL {name} ({ms} ms): {detail}"));
        }
        self.results.push(ScenarioResult {
            name: name.into(),
            passed,
            ms,
            detail,
        });
    }
}

pub(super) fn host_kernel() -> Result<String> {
    Ok(nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned())
}

pub(super) fn expect_code(out: &Outcome, code: i32) -> Result<()> {
    if out.timed_out || out.code != Some(code) {
        bail!("expected exit status {code}: {}", out.describe());
    }
    Ok(())
}

pub(super) fn leftovers_now(cd: &PrivateContainerd) -> Result<()> {
    let left = cd.leftovers();
    if !left.is_empty() {
        bail!("left behind:\n  {}", left.join("\n  "));
    }
    Ok(())
}

/// Waits up to `within` for the leftover scan to come back empty (a shim
/// tears down after it reports an exit); `after` says what happened, for the
/// error that lists what is still there.
pub(crate) fn wait_no_leftovers(
    cd: &PrivateContainerd,
    within: Duration,
    after: &str,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = cd.leftovers();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{after}, left behind:\n  {}", left.join("\n  "));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(super) fn scenario_kernel(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = r
        .run(&ids[0], &["--rm"], &["uname", "-r"], None)?
        .require_success()?;
    let seen = out.stdout.trim().to_string();
    let host = host_kernel()?;
    if r.kata() {
        let want = &r.ctx.versions.kernel.version;
        if !seen.starts_with(want.as_str()) {
            bail!(
                "the container sees kernel {seen:?}, not the pipeline's {want} (host runs {host})"
            );
        }
        if seen == host {
            bail!("the container sees the host's kernel {host}: it did not run in a VM");
        }
        r.guest_kernel = Some(seen.clone());
        Ok(format!(
            "guest kernel {seen} (pipeline {want}, host {host}) in {} ms",
            out.took.as_millis()
        ))
    } else {
        // runc shares the host kernel: this proves the harness, not a VM.
        if seen != host {
            bail!("runc container sees kernel {seen:?} but the host runs {host}");
        }
        Ok(format!(
            "runc container sees the host kernel {seen} (kata asserts the guest kernel here)"
        ))
    }
}

pub(super) fn scenario_exit_code(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = r.run(&ids[0], &["--rm"], &["sh", "-c", "exit 7"], None)?;
    expect_code(&out, 7)?;
    Ok("`sh -c 'exit 7'` -> ctr exit status 7".into())
}

/// `ctr run` forwards its stdin's EOF to the task (CloseIO) only once the
/// task exists; an EOF read before that is lost (ctr 1.6), and `cat` would
/// wait forever. So the data goes in at once and EOF once the task runs,
/// which is also what a person typing into `ctr run` does.
pub(super) fn run_with_stdin(r: &Runner, id: &str, args: &[&str], data: &[u8]) -> Result<Outcome> {
    let cmd = r
        .ctr()
        .run_command(&r.runtime, &["--rm"], &r.env.image.name, id, args);
    let (mut running, mut pipe) = Running::spawn_with_stdin(cmd)?;
    pipe.write_all(data).context("write to ctr's stdin")?;
    let ctr = r.ctr();
    let t = Instant::now();
    while running.is_running() && t.elapsed() < r.timeout {
        if ctr.task_status(id)?.as_deref() == Some("RUNNING") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pipe);
    running.wait(r.timeout.saturating_sub(t.elapsed()))
}

pub(super) fn scenario_stdio(r: &mut Runner, ids: &[String]) -> Result<String> {
    let out = run_with_stdin(r, &ids[0], &["cat"], b"hello from stdin\n")?.require_success()?;
    if out.stdout != "hello from stdin\n" {
        bail!(
            "`cat` echoed {:?}, expected \"hello from stdin\\n\": {}",
            out.stdout,
            out.describe()
        );
    }
    let out = r
        .run(
            &ids[1],
            &["--rm"],
            &["sh", "-c", "echo out; echo err >&2"],
            None,
        )?
        .require_success()?;
    if out.stdout != "out\n" || out.stderr != "err\n" {
        bail!(
            "expected stdout \"out\\n\" and stderr \"err\\n\": {}",
            out.describe()
        );
    }
    Ok("stdin reached cat and came back; stdout and stderr stayed apart".into())
}

pub(super) fn scenario_detached_exec_kill(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(30))?;
    let sock_seen = r.env.containerd.shim_socket(id).exists();
    // The leftover scan must see a live sandbox, or its "nothing left" means nothing.
    let live = r.env.containerd.our_processes();
    if !live
        .iter()
        .any(|p| p.program().starts_with("containerd-shim"))
    {
        bail!(
            "the process scan finds no shim of ours while {id} runs (found: {:?})",
            live.iter().map(|p| p.program()).collect::<Vec<_>>()
        );
    }
    if r.kata() && !live.iter().any(|p| p.program() == "qemu-system-x86_64") {
        bail!("the process scan finds no QEMU of ours while {id} runs");
    }
    let footprint = sandbox_footprint(id)?;
    if footprint.total_pss_kib == 0
        || (r.kata()
            && !footprint
                .processes
                .iter()
                .any(|p| p.1 == "qemu-system-x86_64"))
    {
        bail!("implausible footprint of {id}: {footprint:?}");
    }
    let while_running = r.env.containerd.leftovers();
    if !while_running.iter().any(|l| l.starts_with("mount "))
        || !while_running.iter().any(|l| l.contains(id))
    {
        bail!("the leftover check does not see the running {id} (its rootfs mount and task): {while_running:?}");
    }
    exec_echo(r, id, "e1", "exec-ok")?;
    kill_and_delete(r, id)?;
    leftovers_now(&r.env.containerd)?;
    let procs: Vec<String> = footprint
        .processes
        .iter()
        .map(|(pid, name, kib)| format!("{name}[{pid}] {kib}"))
        .collect();
    Ok(format!(
        "run -d, exec e1 printed exec-ok, SIGKILL -> STOPPED, delete reported 137, container deleted, nothing left; \
         sandbox PSS {} KiB ({}){}",
        footprint.total_pss_kib,
        procs.join(", "),
        if sock_seen { "" } else { " (note: no shim socket seen at the expected /run/containerd/s path)" }
    ))
}

/// `ctr task exec` of `echo <word>` in a running task must succeed and
/// print exactly that word.
fn exec_echo(r: &Runner, id: &str, exec_id: &str, word: &str) -> Result<()> {
    let out = run_bounded(
        r.ctr()
            .exec_command(id, exec_id, &["sh", "-c", &format!("echo {word}")]),
        None,
        r.timeout,
    )?
    .require_success()?;
    if out.stdout.trim() != word {
        bail!(
            "exec {exec_id} printed {:?}, expected {word}: {}",
            out.stdout,
            out.describe()
        );
    }
    Ok(())
}

/// SIGKILLs a running task, waits for STOPPED, deletes the task (which
/// must report exit code 137) and the container.
pub(super) fn kill_and_delete(r: &Runner, id: &str) -> Result<()> {
    let ctr = r.ctr();
    run_bounded(
        ctr.command(&["tasks", "kill", "-s", "SIGKILL", id]),
        None,
        r.timeout,
    )?
    .require_success()?;
    ctr.wait_task_status(id, "STOPPED", Duration::from_secs(60))?;
    // ctr 1.6 reports the status of the deleted task as a warning
    // ("exit with non-zero exit code 137" = 128 + SIGKILL) and exits 0.
    let del =
        run_bounded(ctr.command(&["tasks", "delete", id]), None, r.timeout)?.require_success()?;
    if !del.stderr.contains("exit code 137") {
        bail!(
            "ctr tasks delete of a SIGKILLed task does not report exit code 137: {}",
            del.describe()
        );
    }
    run_bounded(ctr.command(&["containers", "delete", id]), None, r.timeout)?.require_success()?;
    Ok(())
}

pub(super) fn scenario_no_leftovers(r: &mut Runner, _ids: &[String]) -> Result<String> {
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "no shim/QEMU/virtiofsd/vsock process, mount, socket, bundle or kata state of {} containers left",
        r.env.containerd.ids().len()
    ))
}

/// With the shipped `accelerator = "auto"`: the KVM probe VM boots at most
/// once for all the run's sandboxes (none when a verdict for this host is
/// already recorded); every other sandbox takes the recorded verdict.
pub(super) fn scenario_probe_once(r: &mut Runner, _ids: &[String]) -> Result<String> {
    let log = std::fs::read_to_string(&r.env.containerd.log)?;
    let probes = log.matches("accel: KVM probe ran").count();
    let cached = log.matches("accel: KVM probe verdict from").count();
    let sandboxes = log.matches("configuration loaded from").count();
    if probes + cached < 2 {
        bail!(
            "{sandboxes} sandboxes, but only {} resolved the accelerator: nothing to compare (is accelerator = \"auto\" shipped?)",
            probes + cached
        );
    }
    if probes > 1 {
        bail!(
            "{sandboxes} sandboxes: {probes} KVM probe boots and {cached} recorded verdicts (want at most 1 boot)"
        );
    }
    Ok(format!(
        "{sandboxes} sandboxes with accelerator = \"auto\": {probes} KVM probe boot(s), {cached} took the recorded verdict"
    ))
}

/// QEMU of a running sandbox is killed: `ctr run` must end with an error
/// within its bound, and the shim must clean up everything.
pub(super) fn fault_qemu_killed(r: &mut Runner, ids: &[String]) -> Result<String> {
    fault_sandbox_process_killed(r, ids, "qemu-system-x86_64")
}

pub(super) fn fault_virtiofsd_killed(r: &mut Runner, ids: &[String]) -> Result<String> {
    fault_sandbox_process_killed(r, ids, "virtiofsd")
}

pub(super) fn fault_vsock_daemon_killed(r: &mut Runner, ids: &[String]) -> Result<String> {
    fault_sandbox_process_killed(r, ids, "vhost-device-vsock")
}

/// The exit status the shim reports for a container whose VM died
/// (`runtime::shim::VM_DIED_STATUS`), as `ctr run` passes it on.
const VM_DIED_STATUS: i32 = runtime::shim::VM_DIED_STATUS as i32;

/// SIGKILLs one process of a running sandbox (QEMU, virtiofsd or the vsock
/// daemon): the container must end with the VM-died status within a bound,
/// the shim must say in its log that the VM died and which process went,
/// and nothing may be left.
fn fault_sandbox_process_killed(r: &mut Runner, ids: &[String], program: &str) -> Result<String> {
    let id = ids[0].as_str();
    let log_before = std::fs::metadata(&r.env.containerd.log)
        .map(|m| m.len())
        .unwrap_or(0);
    let cmd = r.ctr().run_command(
        &r.runtime,
        &["--rm"],
        &r.env.image.name,
        id,
        &["sleep", "300"],
    );
    let mut running = Running::spawn(cmd, None)?;
    let ctr = r.ctr();
    let t = Instant::now();
    loop {
        if !running.is_running() {
            let out = running.wait(Duration::from_secs(1))?;
            bail!("ctr run ended before the container ran: {}", out.describe());
        }
        if ctr.task_status(id)?.as_deref() == Some("RUNNING") {
            break;
        }
        if t.elapsed() > r.timeout {
            let out = running.wait(Duration::ZERO)?;
            bail!("the container never reached RUNNING: {}", out.describe());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The process the shim started: virtiofsd forks a child of the same
    // name, which goes with its parent.
    let named: Vec<ProcInfo> = r
        .env
        .containerd
        .our_processes()
        .into_iter()
        .filter(|p| p.program() == program)
        .collect();
    let victims: Vec<ProcInfo> = named
        .iter()
        .filter(|p| !named.iter().any(|q| q.pid == p.ppid))
        .cloned()
        .collect();
    if victims.len() != 1 {
        let _ = signal(running.pid(), nix::sys::signal::Signal::SIGKILL);
        bail!(
            "expected one {program} of ours for {id}, found {}",
            victims.len()
        );
    }
    signal(victims[0].pid, nix::sys::signal::Signal::SIGKILL)?;
    let killed = Instant::now();
    let out = running.wait(Duration::from_secs(120))?;
    if out.timed_out {
        bail!(
            "ctr run did not end within 120 s of {program} being killed: {}",
            out.describe()
        );
    }
    if out.code != Some(VM_DIED_STATUS) {
        bail!(
            "expected exit status {VM_DIED_STATUS} (the VM died) after {program} was killed: {}",
            out.describe()
        );
    }
    let detected = killed.elapsed();
    // The shim tears down after reporting the exit; give it a moment.
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(30),
        &format!("after {program} was killed"),
    )?;
    let log = std::fs::read(&r.env.containerd.log).unwrap_or_default();
    let log = String::from_utf8_lossy(&log[(log_before as usize).min(log.len())..]).into_owned();
    let said = log
        .lines()
        .find(|l| l.contains("the VM died"))
        .with_context(|| {
            format!("the shim never logged that the VM died after {program} was killed")
        })?;
    // The runtime calls QEMU by its name; the daemons by their programs'.
    let name = if program == "qemu-system-x86_64" {
        "QEMU"
    } else {
        program
    };
    if !said.contains(name) {
        bail!("the shim's message does not name {name}: {said}");
    }
    Ok(format!(
        "ctr run ended with status {VM_DIED_STATUS} {} ms after {program} {} was killed; the shim said: {}; nothing left",
        detected.as_millis(),
        victims[0].pid,
        said.trim()
    ))
}

/// The bound of one agent call in the test's configuration.
pub(super) const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The guest stops answering (its QEMU is frozen with SIGSTOP): the next
/// call through the shim must fail with a clear error within the agent
/// request bound, and after the sandbox is killed nothing may be left.
pub(super) fn fault_agent_silent(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    let qemus: Vec<ProcInfo> = r
        .env
        .containerd
        .our_processes()
        .into_iter()
        .filter(|p| p.program() == "qemu-system-x86_64")
        .collect();
    if qemus.len() != 1 {
        bail!("expected one QEMU of ours for {id}, found {}", qemus.len());
    }
    let qemu = qemus[0].pid;
    signal(qemu, nix::sys::signal::Signal::SIGSTOP)?;
    let t = Instant::now();
    let bound = AGENT_REQUEST_TIMEOUT + Duration::from_secs(30);
    let out = run_bounded(
        ctr.exec_command(id, "silent", &["true"]),
        None,
        bound + Duration::from_secs(30),
    );
    let waited = t.elapsed();
    // Whatever happened, end the frozen sandbox the hard way.
    let _ = signal(qemu, nix::sys::signal::Signal::SIGKILL);
    let _ = signal(qemu, nix::sys::signal::Signal::SIGCONT);
    let out = out?;
    if out.success() {
        bail!(
            "exec succeeded although the guest was frozen: {}",
            out.describe()
        );
    }
    if out.timed_out || waited > bound {
        bail!("the error took {waited:?}, beyond the agent request bound {AGENT_REQUEST_TIMEOUT:?} (+30 s): {}", out.describe());
    }
    // A user's force-delete of a task whose VM was just killed must work
    // at once: its kill may reach the shim before QEMU's death is seen.
    let deleted = run_bounded(ctr.command(&["tasks", "delete", "-f", id]), None, r.timeout)?;
    if !deleted.success() {
        bail!(
            "`ctr tasks delete -f` of the task whose VM was killed failed: {}",
            deleted.describe()
        );
    }
    run_bounded(ctr.command(&["containers", "delete", id]), None, r.timeout)?.require_success()?;
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(60),
        "after the silent agent",
    )?;
    let first = out
        .stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    Ok(format!(
        "exec failed after {} ms with: {first}; nothing left",
        waited.as_millis()
    ))
}

/// Specs the runtime cannot honour must come back to ctr as an error and
/// leave nothing behind.
pub(super) fn fault_invalid_spec(r: &mut Runner, ids: &[String]) -> Result<String> {
    let mut seen = Vec::new();
    // (what, flags, args, what ctr's error must name)
    let cases: [(&str, &[&str], &[&str], &str); 2] = [
        (
            "a cwd under a regular file",
            &["--rm", "--cwd", "/bin/busybox/nowhere"],
            &["true"],
            "/bin/busybox/nowhere",
        ),
        (
            "a missing executable",
            &["--rm"],
            &["/does/not/exist"],
            "/does/not/exist",
        ),
    ];
    for ((what, flags, args, named), id) in cases.iter().zip(ids) {
        let out = r.run(id, flags, args, None)?;
        if out.timed_out || out.code != Some(1) {
            bail!(
                "{what}: expected ctr to fail with status 1: {}",
                out.describe()
            );
        }
        let said: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.contains("ctr:") || l.contains("error"))
            .collect();
        if !said.iter().any(|l| l.contains(named)) {
            bail!(
                "{what}: ctr's error does not name {named}: {}",
                out.describe()
            );
        }
        leftovers_now(&r.env.containerd).with_context(|| format!("after {what}"))?;
        if r.ctr().task_status(id)?.is_some() {
            bail!("{what}: task {id} is still listed");
        }
        let first = said.first().copied().unwrap_or("").trim().to_string();
        seen.push(format!("{what}: {} ({first})", out.status_text()));
    }
    Ok(seen.join("; "))
}

/// Hostile sandbox ids in CRI and CRI-O annotations (parent paths, an
/// absolute path): containerd must get a clear error naming the
/// annotation, a victim directory where those paths lead must stay as it
/// was, and nothing may be left behind. Before ids were validated, the
/// shim's cleanup removed such a directory recursively.
pub(super) fn fault_hostile_ids(r: &mut Runner, ids: &[String]) -> Result<String> {
    let victim = Path::new("/run").join(format!("kata-e2e-victim-{}", std::process::id()));
    std::fs::create_dir_all(victim.join("sub"))?;
    std::fs::write(victim.join("precious"), b"keep")?;
    std::fs::write(victim.join("sub/also"), b"keep")?;
    let result = (|| -> Result<String> {
        // From <state root>/shared/sandboxes/ (and from <state root>/).
        let up = format!(
            "../../../{}",
            victim.file_name().unwrap_or_default().to_string_lossy()
        );
        let abs = victim.display().to_string();
        let cases = [
            (
                "io.kubernetes.cri.container-type",
                "container",
                "io.kubernetes.cri.sandbox-id",
                up.as_str(),
            ),
            (
                "io.kubernetes.cri.container-type",
                "container",
                "io.kubernetes.cri.sandbox-id",
                abs.as_str(),
            ),
            (
                "io.kubernetes.cri.container-type",
                "sandbox",
                "io.kubernetes.cri.sandbox-id",
                up.as_str(),
            ),
            (
                "io.kubernetes.cri-o.ContainerType",
                "container",
                "io.kubernetes.cri-o.SandboxID",
                up.as_str(),
            ),
        ];
        let mut seen = Vec::new();
        for ((type_key, kind, id_key, sid), id) in cases.iter().zip(ids) {
            let what = format!("{id_key}={sid} ({kind})");
            let type_ann = format!("{type_key}={kind}");
            let id_ann = format!("{id_key}={sid}");
            let out = r.run(
                id,
                &["--rm", "--annotation", &type_ann, "--annotation", &id_ann],
                &["true"],
                None,
            )?;
            if out.success() || out.timed_out {
                bail!("{what}: expected ctr to fail: {}", out.describe());
            }
            if !(out.stderr.contains(id_key) && out.stderr.contains("is invalid")) {
                bail!(
                    "{what}: the error does not name the annotation and say it is invalid: {}",
                    out.describe()
                );
            }
            for f in ["precious", "sub/also"] {
                if std::fs::read(victim.join(f)).ok().as_deref() != Some(&b"keep"[..]) {
                    bail!(
                        "{what}: {} was changed or removed",
                        victim.join(f).display()
                    );
                }
            }
            // containerd keeps the container record of a failed `run --rm`.
            let _ = run_bounded(
                r.ctr().command(&["containers", "delete", id]),
                None,
                r.timeout,
            );
            leftovers_now(&r.env.containerd).with_context(|| format!("after {what}"))?;
            seen.push(what);
        }
        Ok(format!(
            "refused with the annotation named, victim {} intact, nothing left: {}",
            victim.display(),
            seen.join("; ")
        ))
    })();
    let _ = std::fs::remove_dir_all(&victim);
    result
}

/// One-character container ids work, as they do with runc, and leave
/// nothing behind (the shim and the agent apply one id rule).
pub(super) fn scenario_one_char_id(r: &mut Runner, _ids: &[String]) -> Result<String> {
    // Not registered with the harness: a one-letter id would make its
    // "names one of our ids on the command line" process scan match
    // unrelated processes. Ours are still found by the run marker.
    let id = "k";
    let out = r
        .run(id, &["--rm"], &["sh", "-c", "echo one-char-ok"], None)?
        .require_success()?;
    if out.stdout.trim() != "one-char-ok" {
        bail!("expected one-char-ok: {}", out.describe());
    }
    for p in [
        Path::new(KATA_STATE_ROOT).join(id),
        Path::new(KATA_STATE_ROOT).join("shared/sandboxes").join(id),
    ] {
        if p.symlink_metadata().is_ok() {
            bail!("{} is left behind", p.display());
        }
    }
    leftovers_now(&r.env.containerd)?;
    Ok(format!(
        "ctr run {id} ran and printed one-char-ok; nothing left"
    ))
}

/// The shim of a running sandbox is SIGKILLed: containerd notices, runs the
/// shim binary's `delete` action, and that must stop QEMU and its daemons
/// (proven to be the ones started) and remove the sandbox's mounts and
/// directories. The task must leave RUNNING and nothing may be left.
pub(super) fn fault_shim_killed(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    let ours = r.env.containerd.our_processes();
    let shims: Vec<&ProcInfo> = ours
        .iter()
        .filter(|p| p.program().starts_with("containerd-shim"))
        .collect();
    let vm: Vec<String> = ours
        .iter()
        .filter(|p| !p.program().starts_with("containerd-shim"))
        .map(|p| format!("{}[{}]", p.program(), p.pid))
        .collect();
    if shims.len() != 1 || !vm.iter().any(|p| p.starts_with("qemu-system-x86_64[")) {
        bail!(
            "expected one shim and a QEMU of ours for {id}, found shims {:?} and {vm:?}",
            shims.iter().map(|p| p.pid).collect::<Vec<_>>()
        );
    }
    let shim = shims[0].pid;
    signal(shim, nix::sys::signal::Signal::SIGKILL)?;
    let killed = Instant::now();
    // containerd's delete action runs when it sees the shim's connection go.
    let deadline = killed + Duration::from_secs(60);
    loop {
        match ctr.task_status(id)? {
            Some(s) if s == "RUNNING" => {}
            _ => break,
        }
        if Instant::now() > deadline {
            bail!("task {id} still RUNNING 60 s after its shim {shim} was killed");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let noticed = killed.elapsed();
    let _ = run_bounded(ctr.command(&["tasks", "delete", id]), None, r.timeout);
    run_bounded(ctr.command(&["containers", "delete", id]), None, r.timeout)?.require_success()?;
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(60),
        &format!("after shim {shim} was SIGKILLed and containerd cleaned up"),
    )?;
    Ok(format!(
        "shim {shim} SIGKILLed; task left RUNNING after {} ms; containerd's delete stopped {} and nothing is left",
        noticed.as_millis(),
        vm.join(", ")
    ))
}

/// containerd restarted under a running sandbox (as on an upgrade): the
/// task must still be listed as running, `ctr task exec` must work through
/// the reconnected shim, and a later kill and delete must leave nothing.
pub(super) fn fault_containerd_restarted(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let ctr = r.ctr();
    r.run(id, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    ctr.wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    let shims = || -> Vec<u32> {
        r.env
            .containerd
            .our_processes()
            .into_iter()
            .filter(|p| p.program().starts_with("containerd-shim"))
            .map(|p| p.pid)
            .collect()
    };
    let shims_before = shims();
    let old_pid = r.env.containerd.pid.get();
    r.env.containerd.restart()?;
    let status = ctr.task_status(id)?;
    if status.as_deref() != Some("RUNNING") {
        bail!("after containerd restarted, task {id} is {status:?}, not RUNNING");
    }
    let shims_after = shims();
    if shims_after != shims_before {
        bail!("the shims changed across the restart: {shims_before:?} -> {shims_after:?}");
    }
    exec_echo(r, id, "after-restart", "still-here")?;
    kill_and_delete(r, id)?;
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(30),
        "after the restart and delete",
    )?;
    Ok(format!(
        "containerd {old_pid} -> {}: {id} still RUNNING under the same shim {shims_before:?}, exec printed still-here, SIGKILL -> delete reported 137, nothing left",
        r.env.containerd.pid.get()
    ))
}

/// An OCI seccomp profile that denies mkdir with EPERM.
const DENY_MKDIR_PROFILE: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "architectures": ["SCMP_ARCH_X86_64"],
  "syscalls": [
    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
  ]
}"#;

/// A container's seccomp profile through containerd: with a profile that
/// denies mkdir, mkdir fails with EPERM where the profile is enforced (runc,
/// and kata with `disable_guest_seccomp = false`) and works where
/// upstream's default `disable_guest_seccomp = true` leaves it out of the
/// VM; without a profile mkdir works.
pub(super) fn scenario_seccomp(r: &mut Runner, ids: &[String]) -> Result<String> {
    let enforced = match &r.env.kata_config {
        Some(path) if r.kata() => {
            let cfg = runtime::config::load_file(path)
                .with_context(|| format!("read {}", path.display()))?;
            !cfg.runtime.disable_guest_seccomp
        }
        _ => true,
    };
    let profile = r.env.containerd.layout.dir.join("deny-mkdir.json");
    std::fs::write(&profile, DENY_MKDIR_PROFILE)?;
    let profile = profile.display().to_string();
    let script = ["sh", "-c", "mkdir /tmp/seccomp-probe && echo made"];
    let with = r.run(
        &ids[0],
        &["--rm", "--seccomp", "--seccomp-profile", &profile],
        &script,
        None,
    )?;
    if enforced {
        if with.success() || !with.stderr.contains("Operation not permitted") {
            bail!(
                "with the deny-mkdir profile enforced, mkdir must fail with EPERM: {}",
                with.describe()
            );
        }
    } else if !with.success() || with.stdout.trim() != "made" {
        bail!(
            "with disable_guest_seccomp = true the profile stays out of the VM, so mkdir must work: {}",
            with.describe()
        );
    }
    let without = r
        .run(&ids[1], &["--rm"], &script, None)?
        .require_success()?;
    if without.stdout.trim() != "made" {
        bail!("without a profile mkdir must work: {}", without.describe());
    }
    Ok(if enforced {
        format!(
            "deny-mkdir profile: mkdir failed ({}); without it mkdir worked",
            with.stderr.lines().next().unwrap_or("").trim()
        )
    } else {
        "disable_guest_seccomp = true: the deny-mkdir profile stayed out of the VM (mkdir worked), as without one".into()
    })
}

/// `kata-runtime` next to the shim (the runtime-bins step and the release
/// ship both).
pub(super) fn kata_runtime_binary(r: &Runner) -> Result<std::path::PathBuf> {
    let shim = r
        .env
        .shim
        .as_ref()
        .context("no shim: the kata runtime is not set up")?;
    let bin = shim.with_file_name("kata-runtime");
    if !bin.is_file() {
        bail!(
            "no kata-runtime next to the shim {} (with --shim, put the built kata-runtime beside it)",
            shim.display()
        );
    }
    Ok(bin)
}

/// `KATA_CONF_FILE=<config> kata-runtime exec <args>` with `stdin` piped.
fn kata_runtime_exec(r: &Runner, config: &Path, args: &[&str], stdin: &[u8]) -> Result<Outcome> {
    let mut cmd = std::process::Command::new(kata_runtime_binary(r)?);
    cmd.arg("exec").args(args).env(KATA_CONF_ENV, config);
    run_bounded(cmd, Some(stdin.to_vec()), Duration::from_secs(90))
}

/// The debug console: a sandbox started with `debug_console_enabled = true`
/// (a second configuration.toml, named with `ctr run --runtime-config-path`,
/// which the shim takes ahead of KATA_CONF_FILE) serves a shell to
/// `kata-runtime exec` with piped stdin; an unknown id, a bad id and a
/// sandbox of the default configuration (console off) fail with one clear
/// line, and both sandboxes keep serving `ctr task exec`.
pub(super) fn scenario_debug_console(r: &mut Runner, ids: &[String]) -> Result<String> {
    let default_config = r
        .env
        .kata_config
        .clone()
        .context("the harness wrote no configuration.toml")?;
    let text = std::fs::read_to_string(&default_config)?;
    let mut cfg = runtime::config::parse(&text, &default_config)?;
    if cfg.agent.debug_console_enabled {
        bail!(
            "the harness's own configuration enables the console: the disabled case proves nothing"
        );
    }
    cfg.agent.debug_console_enabled = true;
    let console_config = default_config.with_file_name("configuration-debug-console.toml");
    std::fs::write(&console_config, cfg.to_file().to_toml()?)?;
    let console_config_s = console_config.display().to_string();
    let (on, off) = (ids[0].as_str(), ids[1].as_str());

    // Input errors, before any sandbox exists.
    let out = kata_runtime_exec(r, &default_config, &["no-such-sandbox"], b"")?;
    if out.success()
        || !out
            .stderr
            .contains("no sandbox \"no-such-sandbox\" runs here")
        || !out
            .stderr
            .contains(&format!("{KATA_STATE_ROOT}/no-such-sandbox"))
    {
        bail!("unknown sandbox id: expected a non-zero exit naming the id and the state dir looked for: {}", out.describe());
    }
    let out = kata_runtime_exec(r, &default_config, &["../etc"], b"")?;
    if out.code != Some(2) || !out.stderr.contains("sandbox id \"../etc\" is invalid") {
        bail!(
            "bad sandbox id: expected exit status 2 and the id rule: {}",
            out.describe()
        );
    }

    // Console on: the shell runs what it is sent. The pty echoes the input
    // line, which has `$((6*7))`; only the shell prints 42.
    r.run(
        on,
        &["-d", "--runtime-config-path", &console_config_s],
        &["sleep", "300"],
        None,
    )?
    .require_success()?;
    r.ctr()
        .wait_task_status(on, "RUNNING", Duration::from_secs(60))?;
    let out = kata_runtime_exec(r, &default_config, &[on], b"echo console-$((6*7)); exit\n")?;
    if !out.success() || !out.stdout.contains("console-42") {
        bail!(
            "kata-runtime exec with the console on: expected exit 0 and console-42: {}",
            out.describe()
        );
    }
    let console_ms = out.took.as_millis();
    let console_out = out.stdout.clone();
    // a second session, with --kata-debug-port: the first one ended cleanly
    let out = kata_runtime_exec(
        r,
        &default_config,
        &["--kata-debug-port", "1026", on],
        b"echo again-$((6+1))\n",
    )?;
    if !out.success() || !out.stdout.contains("again-7") {
        bail!(
            "second console session (ended by Ctrl-D at stdin's end): {}",
            out.describe()
        );
    }
    exec_echo(r, on, "after-console", "still-serving")?;
    kill_and_delete(r, on)?;

    // Console off (the harness's default configuration).
    r.run(off, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    r.ctr()
        .wait_task_status(off, "RUNNING", Duration::from_secs(60))?;
    let out = kata_runtime_exec(r, &default_config, &[off], b"echo console-$((6*7)); exit\n")?;
    let want = format!(
        "the debug console of sandbox {off} is not enabled: set debug_console_enabled = true in [agent.kata] of {} and start a new sandbox",
        default_config.display()
    );
    if out.success() || out.stdout.contains("console-42") || !out.stderr.contains(&want) {
        bail!(
            "kata-runtime exec with the console off: expected a non-zero exit and {want:?}: {}",
            out.describe()
        );
    }
    let off_line = out.stderr.trim().to_string();
    exec_echo(r, off, "after-refusal", "still-serving")?;
    kill_and_delete(r, off)?;
    Ok(format!(
        "console on: `kata-runtime exec` printed console-42 ({console_ms} ms), a second session worked; unknown and bad ids refused; console off: {off_line:?}; both sandboxes kept serving ctr task exec; the session's output: {console_out:?}"
    ))
}
