//! Init mode without a VM: the agent runs as PID 1 of fresh PID, mount, UTS,
//! network and IPC namespaces (`unshare`), so its mounts, hostname, resolver
//! bind mount, `lo` and power-off stay inside them. Needs root and util-linux
//! (`unshare`, `nsenter`); it fails, naming them, when they are missing.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocols::agent::{self, CreateSandboxRequest};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::health_ttrpc::HealthClient;
use ttrpc::context;

fn agent_binary() -> PathBuf {
    std::env::var_os("KATA_AGENT_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kata-agent")))
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Unshared {
    child: Child,
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (mount point, fstype) pairs of a mountinfo file.
fn mounts(mountinfo: &str) -> Vec<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some((fields.get(4)?.to_string(), fields.get(sep + 1)?.to_string()))
        })
        .collect()
}

fn count(m: &[(String, String)], target: &str, fstype: &str) -> usize {
    m.iter().filter(|(t, f)| t == target && f == fstype).count()
}

fn ctx() -> context::Context {
    context::with_timeout(10_000_000_000)
}

#[test]
#[ignore = "needs root and util-linux (unshare, nsenter): run by cargo xtask test unit"]
fn init_mode_in_namespaces() {
    // A requirement, not a skip: a test that passes without running proves nothing.
    assert!(
        // SAFETY: geteuid(2) takes no arguments and cannot fail.
        unsafe { libc::geteuid() } == 0 && have("unshare") && have("nsenter") && Path::new("/etc/resolv.conf").exists(),
        "this test needs root, unshare and nsenter (util-linux) and an /etc/resolv.conf to bind over"
    );
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let console = dir.path().join("console.log");
    fs::write(&console, "").unwrap();
    fs::write(
        dir.path().join("cmdline"),
        format!(
            "console=hvc0 agent.log=debug agent.server_addr=unix://{} agent.not_a_key=2",
            socket.display()
        ),
    )
    .unwrap();
    let host_resolv = fs::read("/etc/resolv.conf").unwrap();

    let child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount",
            "--propagation",
            "private",
            "--uts",
            "--net",
            "--ipc",
        ])
        .arg(agent_binary())
        .env("KATA_AGENT_CMDLINE", dir.path().join("cmdline"))
        .env("KATA_AGENT_CONSOLE", &console)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut unshared = Unshared { child };
    let log = || fs::read_to_string(&console).unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(&socket).is_err() {
        assert!(
            unshared.child.try_wait().unwrap().is_none(),
            "agent exited early: {}",
            log()
        );
        assert!(Instant::now() < deadline, "agent did not listen: {}", log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let address = format!("unix://{}", socket.display());
    let health = HealthClient::new(ttrpc::Client::connect(&address).unwrap());
    assert_eq!(
        health
            .check(ctx(), &CheckRequest::new())
            .unwrap()
            .status
            .enum_value(),
        Ok(ServingStatus::SERVING)
    );
    let client = AgentServiceClient::new(ttrpc::Client::connect(&address).unwrap());
    let details = client
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .unwrap();
    assert!(
        details.agent_details.init_daemon,
        "agent does not report init mode: {}",
        log()
    );

    // the agent's pid as seen from here: unshare's only child
    let unshare_pid = unshared.child.id();
    let children =
        fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children")).unwrap();
    let agent_pid: u32 = children
        .split_whitespace()
        .next()
        .expect("unshare has a child")
        .parse()
        .unwrap();

    // early mounts: each target gained a mount of the right type in the
    // agent's namespace compared with ours
    let ours = mounts(&fs::read_to_string("/proc/self/mountinfo").unwrap());
    let theirs = mounts(&fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).unwrap());
    // devtmpfs has a single superblock: mounting it again where it already
    // is gives EBUSY, which the agent takes as done (CONFIG_DEVTMPFS_MOUNT
    // does the same in a VM)
    assert!(
        count(&theirs, "/dev", "devtmpfs") >= 1,
        "no devtmpfs on /dev\n{}",
        log()
    );
    for (target, fstype) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            count(&theirs, target, fstype) > count(&ours, target, fstype),
            "{fstype} not mounted on {target} by the agent\n{}",
            log()
        );
    }
    // lo is up in the agent's network namespace (its own sysfs shows it)
    let flags =
        fs::read_to_string(format!("/proc/{agent_pid}/root/sys/class/net/lo/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(
        flags & libc::IFF_UP as u32,
        libc::IFF_UP as u32,
        "lo is down"
    );

    // CreateSandbox applies hostname and DNS to the "guest"
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb-init".into();
    req.hostname = "init-test-host".into();
    req.dns = vec!["nameserver 192.0.2.53".into()];
    client
        .create_sandbox(ctx(), &req)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", log()));
    let out = Command::new("nsenter")
        .args([
            "--target",
            &agent_pid.to_string(),
            "--uts",
            "cat",
            "/proc/sys/kernel/hostname",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "init-test-host"
    );
    assert_eq!(
        fs::read_to_string(format!("/proc/{agent_pid}/root/etc/resolv.conf")).unwrap(),
        "nameserver 192.0.2.53\n"
    );
    assert_eq!(
        fs::read("/etc/resolv.conf").unwrap(),
        host_resolv,
        "the host's resolv.conf changed"
    );

    // DestroySandbox powers the "VM" off: PID 1 of the namespace goes away
    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while unshared.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "agent did not power off: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = log();
    assert!(log.contains("powering off"), "{log}");
    assert!(
        log.contains("agent.not_a_key=2: unknown agent option"),
        "{log}"
    );
    assert!(!log.contains("ERROR"), "init reported errors:\n{log}");
}
