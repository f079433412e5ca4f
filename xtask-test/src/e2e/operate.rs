//! Operating a running sandbox from the host: the shim's monitor socket
//! and the `kata-runtime` commands that use it, against a real container
//! started through containerd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runtime::shim::monitor;

use super::bounded::run_bounded;
use super::scenarios::{kill_and_delete, wait_no_leftovers, Runner};

/// `kata-runtime` beside the shim the harness runs (the runtime-bins step's
/// build, or the release's `bin/`).
fn kata_runtime_binary(r: &Runner) -> Result<PathBuf> {
    let shim = r
        .env
        .shim
        .as_deref()
        .context("no shim binary in this environment")?;
    let bin = shim.with_file_name("kata-runtime");
    if !bin.is_file() {
        bail!("no kata-runtime beside the shim {}", shim.display());
    }
    Ok(bin)
}

fn command(program: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// The value of the sample `series` (`name` or `name{labels}`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `kata-runtime metrics` of a running sandbox, the monitor socket's
/// `/agent-url`, the refusal of an unknown sandbox, and the socket's
/// directory gone with the sandbox.
pub(super) fn scenario_metrics(r: &mut Runner, ids: &[String]) -> Result<String> {
    let id = ids[0].as_str();
    let kata_runtime = kata_runtime_binary(r)?;
    r.run(id, &["-d"], &["sleep", "300"], None)?
        .require_success()?;
    r.ctr()
        .wait_task_status(id, "RUNNING", Duration::from_secs(60))?;

    let out = run_bounded(command(&kata_runtime, &["metrics", id]), None, r.timeout)?
        .require_success()?;
    let text = &out.stdout;
    let need = |series: &str| {
        sample(text, series).with_context(|| {
            format!(
                "kata-runtime metrics {id}: no sample {series} in:\n{}",
                text.lines().take(40).collect::<Vec<_>>().join("\n")
            )
        })
    };
    let qemu_rss = need("kata_hypervisor_proc_status{item=\"vmrss\"}")?;
    // A booted guest's memory is QEMU's: tens of MiB at the least.
    if qemu_rss < 16.0 * 1024.0 * 1024.0 {
        bail!("QEMU's RSS is reported as {qemu_rss} bytes: not a running VM's");
    }
    let qemu_threads = need("kata_hypervisor_threads")?;
    if qemu_threads < 2.0 {
        bail!("QEMU reported with {qemu_threads} threads (it has a vCPU thread and its main loop)");
    }
    let shim_fds = need("kata_shim_fds")?;
    if shim_fds < 3.0 {
        bail!("the shim reported with {shim_fds} open fds");
    }
    need("kata_virtiofsd_threads")?;
    need("kata_vsock_daemon_threads")?;
    need("kata_shim_io_stat{item=\"rchar\"}")?;
    if !text.ends_with("# EOF\n") {
        bail!("kata-runtime metrics: the exposition does not end with # EOF");
    }

    let socket = monitor::socket_path(Path::new(monitor::SANDBOXES_DIR), id);
    let (status, url) = monitor::get(&socket, "/agent-url").map_err(anyhow::Error::msg)?;
    let uds = url
        .strip_prefix("hvsock://")
        .and_then(|u| u.strip_suffix(":1024"))
        .with_context(|| format!("/agent-url answered {status} {url:?}, not hvsock://PATH:1024"))?;
    if status != 200 || !Path::new(uds).exists() {
        bail!("/agent-url answered {status} {url:?}, and {uds} does not exist");
    }

    let unknown = format!("nosuch{}", std::process::id());
    let refused = run_bounded(
        command(&kata_runtime, &["metrics", &unknown]),
        None,
        r.timeout,
    )?;
    if refused.code != Some(1) || !refused.stderr.contains("no shim monitor socket") {
        bail!(
            "kata-runtime metrics of an unknown sandbox: expected exit 1 naming the missing monitor socket, got {}",
            refused.describe()
        );
    }

    kill_and_delete(r, id)?;
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(30),
        "after the metrics sandbox was deleted",
    )?;
    if socket.parent().is_some_and(Path::exists) {
        bail!(
            "{} is still there after the sandbox was deleted",
            socket.display()
        );
    }
    Ok(format!(
        "kata-runtime metrics: QEMU RSS {:.0} MiB, {qemu_threads} threads, shim {shim_fds} fds, {} lines; /agent-url {url}; unknown sandbox refused (exit 1); {} gone with the sandbox",
        qemu_rss / 1024.0 / 1024.0,
        text.lines().count(),
        socket.parent().unwrap_or(&socket).display()
    ))
}
