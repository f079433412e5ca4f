//! Operating a running sandbox from the host: the shim's monitor socket
//! and the `kata-runtime` commands that use it, against a real container
//! started through containerd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runtime::shim::monitor;

use super::bounded::run_bounded;
use super::scenarios::{kata_runtime_binary, kill_and_delete, wait_no_leftovers, Runner};

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
    // The agent's and the guest's, through GetMetrics.
    let guest_memory = need("kata_guest_meminfo{item=\"mem_total\"}")?;
    if guest_memory < 64.0 * 1024.0 * 1024.0 {
        bail!("the guest's MemTotal is reported as {guest_memory} bytes");
    }
    need("kata_agent_threads")?;
    need("kata_agent_scrape_count_total")?;
    need("kata_guest_cpu_time{cpu=\"total\",item=\"user\"}")?;
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
    // Some of what it printed, for whoever reads the log (and the README).
    let shown: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("kata_hypervisor_threads ")
                || l.starts_with("kata_hypervisor_proc_status{item=\"vmrss\"}")
                || l.starts_with("kata_shim_fds ")
                || l.starts_with("kata_vsock_daemon_threads ")
                || l.starts_with("kata_guest_meminfo{item=\"mem_total\"}")
                || l.starts_with("kata_agent_total_rss ")
        })
        .collect();
    Ok(format!(
        "kata-runtime metrics: QEMU RSS {:.0} MiB, {qemu_threads} threads, shim {shim_fds} fds, {} lines ({}); /agent-url {url}; unknown sandbox refused (exit 1); {} gone with the sandbox",
        qemu_rss / 1024.0 / 1024.0,
        text.lines().count(),
        shown.join(" | "),
        socket.parent().unwrap_or(&socket).display()
    ))
}

/// `kata-monitor` (the release's, beside the shim) in a network namespace
/// this test makes, over two running sandboxes: `/sandboxes`, the merged
/// `/metrics` with each sandbox's label, one sandbox's `/metrics` as is,
/// `/agent-url`, an unknown sandbox refused, and a deleted sandbox gone
/// from the list.
pub(super) fn scenario_kata_monitor(r: &mut Runner, ids: &[String]) -> Result<String> {
    let monitor_bin = kata_runtime_binary(r)?.with_file_name("kata-monitor");
    for id in ids {
        r.run(id, &["-d"], &["sleep", "300"], None)?
            .require_success()?;
    }
    for id in ids {
        r.ctr()
            .wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
    }
    let netns = rtnl::scratch::ScratchNetns::new("kata-e2e-mon");
    netns.ip(&["link", "set", "lo", "up"]);
    let log = r.env.containerd.layout.dir.join("kata-monitor.log");
    // Go's one-dash spelling, as upstream's units pass it.
    let child = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(&monitor_bin)
        .args(["-listen-address", MONITOR_ADDRESS])
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("start kata-monitor")?;
    let _stop = KillOnDrop(child);
    let get = |path: &str| -> Result<(u16, String)> {
        let path = path.to_string();
        rtnl::in_netns(&netns.path(), move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match std::net::TcpStream::connect(MONITOR_ADDRESS) {
                    Ok(s) => {
                        s.set_read_timeout(Some(Duration::from_secs(10)))
                            .map_err(|e| e.to_string())?;
                        return monitor::get_over(s, &path);
                    }
                    Err(e) if std::time::Instant::now() > deadline => {
                        return Err(format!("connect to kata-monitor on {MONITOR_ADDRESS}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}; kata-monitor's log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
    };

    let (status, listed) = get("/sandboxes")?;
    for id in ids {
        if status != 200 || !listed.lines().any(|l| l == id) {
            bail!("/sandboxes answered {status} without {id}: {listed:?}");
        }
    }
    let (status, all) = get("/metrics")?;
    if status != 200 {
        bail!("/metrics answered {status}: {all}");
    }
    for id in ids {
        let series = format!("kata_hypervisor_threads{{sandbox_id=\"{id}\"}}");
        if sample(&all, &series).is_none_or(|t| t < 2.0) {
            bail!("/metrics has no {series} of at least 2 threads");
        }
    }
    let shims = sample(&all, "kata_monitor_running_shim_count").unwrap_or(0.0);
    if shims < ids.len() as f64 {
        bail!(
            "kata_monitor_running_shim_count is {shims}, with {} sandboxes running",
            ids.len()
        );
    }
    let (status, one) = get(&format!("/metrics?sandbox={}", ids[0]))?;
    if status != 200 || sample(&one, "kata_shim_threads").is_none() || one.contains("sandbox_id") {
        bail!(
            "/metrics?sandbox={} answered {status}, not the shim's own exposition: {}",
            ids[0],
            one.lines().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    let (status, url) = get(&format!("/agent-url?sandbox={}", ids[0]))?;
    let want = format!("/{}/vsock.sock:1024\n", ids[0]);
    if status != 200 || !url.starts_with("hvsock://") || !url.ends_with(&want) {
        bail!("/agent-url?sandbox={} answered {status} {url:?}", ids[0]);
    }
    let (status, body) = get("/agent-url?sandbox=nosuchsandbox")?;
    if status != 400 || !body.contains("nosuchsandbox not found") {
        bail!(
            "/agent-url of an unknown sandbox answered {status} {body:?}, expected 400 naming it"
        );
    }

    kill_and_delete(r, &ids[0])?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, listed) = get("/sandboxes")?;
        if !listed.lines().any(|l| l == ids[0]) {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!("/sandboxes still lists {} after it was deleted", ids[0]);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    kill_and_delete(r, &ids[1])?;
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(30),
        "after the kata-monitor sandboxes were deleted",
    )?;
    let shown: Vec<&str> = all
        .lines()
        .filter(|l| {
            l.starts_with("kata_hypervisor_threads{")
                || l.starts_with("kata_monitor_running_shim_count ")
        })
        .collect();
    Ok(format!(
        "kata-monitor -listen-address {MONITOR_ADDRESS} in netns {}: /sandboxes listed both, /metrics {} lines with both sandbox_ids ({}), one sandbox's /metrics as is, /agent-url {}, unknown sandbox 400, a deleted sandbox left the list",
        netns.name,
        all.lines().count(),
        shown.join(" | "),
        url.trim()
    ))
}

/// Inside the test's own network namespace only.
const MONITOR_ADDRESS: &str = "127.0.0.1:8090";

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
