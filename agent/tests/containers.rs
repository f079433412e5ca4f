//! Containers end to end without a VM: the agent in service mode (its own
//! private mount namespace, with the cgroup v2 hierarchy mounted at
//! /sys/fs/cgroup inside it) runs busybox containers through libcontainer,
//! driven over ttrpc by the generated client.
//!
//! Needs root, /bin/busybox (busybox-static) and the cgroup2 filesystem.

use std::fs;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protocols::agent::{self, Storage};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;
use ttrpc::{context, Code};

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "cat", "sleep", "true", "echo", "ls", "hostname", "mkdir",
];

fn agent_binary() -> PathBuf {
    std::env::var_os("KATA_AGENT_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kata-agent")))
}

fn ctx() -> context::Context {
    context::with_timeout(20_000_000_000)
}

fn status_of<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> ttrpc::Status {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => s,
        other => panic!("expected an error status, got {other:?}"),
    }
}

/// Whether this machine can run the tests (root, busybox, cgroup2).
/// The tests' requirements: a failure naming them, never a silent pass.
fn require_host() {
    // SAFETY: geteuid(2) takes no arguments and cannot fail.
    let ok = unsafe { libc::geteuid() } == 0
        && Path::new(BUSYBOX).exists()
        && fs::read_to_string("/proc/filesystems")
            .map(|f| f.contains("cgroup2"))
            .unwrap_or(false);
    assert!(
        ok,
        "container tests need root, {BUSYBOX} (busybox-static) and cgroup2"
    );
}

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
    cgroups: Vec<PathBuf>,
}

impl Agent {
    fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        fs::write(dir.path().join("cmdline"), "agent.log=debug").unwrap();
        fs::create_dir_all(dir.path().join("run")).unwrap();
        let log = fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut cmd = Command::new(agent_binary());
        cmd.env("KATA_AGENT_CMDLINE", dir.path().join("cmdline"))
            .env(
                "KATA_AGENT_SERVER_ADDR",
                format!("unix://{}", socket.display()),
            )
            .env("KATA_AGENT_RUN_DIR", dir.path().join("run"))
            .env_remove("KATA_AGENT_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: only raw syscalls between fork and exec. The agent's mounts
        // (rootfs binds, cgroup2) stay in its own mount namespace.
        unsafe {
            cmd.pre_exec(|| {
                let check = |r: libc::c_int| {
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                let mut st: libc::statfs = std::mem::zeroed();
                check(libc::statfs(c"/sys/fs/cgroup".as_ptr(), &mut st))?;
                if st.f_type != libc::CGROUP2_SUPER_MAGIC {
                    // a hybrid host (v1 controllers + unified): give the
                    // agent the pure v2 layout a guest has
                    check(libc::mount(
                        c"cgroup2".as_ptr(),
                        c"/sys/fs/cgroup".as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        std::ptr::null(),
                    ))?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        let mut agent = Agent {
            child,
            dir,
            socket,
            cgroups: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&agent.socket).is_err() {
            if let Some(status) = agent.child.try_wait().unwrap() {
                panic!("agent exited early with {status}: {}", agent.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent did not listen: {}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn client(&self) -> AgentServiceClient {
        AgentServiceClient::new(
            ttrpc::Client::connect(&format!("unix://{}", self.socket.display())).unwrap(),
        )
    }

    /// A busybox rootfs where the runtime's shared directory puts it.
    fn make_rootfs(&self, cid: &str) -> PathBuf {
        let rootfs = self
            .run_dir()
            .join("shared/containers")
            .join(cid)
            .join("rootfs");
        for d in ["bin", "proc", "dev", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        rootfs
    }

    /// The cgroup of `cid` seen from the host's unified hierarchy: under the
    /// agent's default parent /kata, or under a parent of its own (then
    /// `spec` gets it as linux.cgroupsPath) so that tests running in
    /// parallel never remove a parent another one is creating a cgroup in.
    fn cgroup_dir(&mut self, cid: &str, spec: Option<&mut oci::Spec>) -> PathBuf {
        let root = if statfs_is_cgroup2("/sys/fs/cgroup") {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/unified")
        };
        let path = match spec {
            Some(spec) => {
                let path = format!("/kata-test-{cid}/{cid}");
                spec.Linux.as_mut().unwrap().CgroupsPath = path.clone();
                path
            }
            None => format!("/kata/{cid}"),
        };
        let dir = root.join(path.trim_start_matches('/'));
        self.cgroups.push(dir.clone());
        dir
    }

    /// Mount points of the agent's namespace under its run directory.
    fn mounts_under_run_dir(&self) -> Vec<String> {
        let run = self.run_dir();
        fs::read_to_string(format!("/proc/{}/mountinfo", self.child.id()))
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&run))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // after a failed test: no container process or cgroup left on the host
        for dir in &self.cgroups {
            if dir.exists() {
                let _ = fs::write(dir.join("cgroup.freeze"), "0");
                let _ = fs::write(dir.join("cgroup.kill"), "1");
                for _ in 0..50 {
                    if fs::remove_dir(dir).is_ok() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // the parent libcontainer made on the host's hierarchy (only
            // one test uses the default parent /kata)
            if let Some(parent) = dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

fn statfs_is_cgroup2(path: &str) -> bool {
    let c = std::ffi::CString::new(path).unwrap();
    // SAFETY: statfs is plain old data (integers only): all-zero is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a live, writable statfs.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::CGROUP2_SUPER_MAGIC }
}

fn process(args: &[&str]) -> oci::Process {
    let mut p = oci::Process::new();
    p.Args = args.iter().map(|s| s.to_string()).collect();
    p.Env = vec!["PATH=/bin".into()];
    p.Cwd = "/".into();
    let mut caps = oci::LinuxCapabilities::new();
    let set: Vec<String> = ["CAP_KILL", "CAP_CHOWN", "CAP_SETUID", "CAP_SETGID"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    caps.Bounding = set.clone();
    caps.Effective = set.clone();
    caps.Permitted = set;
    p.Capabilities = Some(caps).into();
    let mut nofile = oci::POSIXRlimit::new();
    nofile.Type = "RLIMIT_NOFILE".into();
    nofile.Hard = 1024;
    nofile.Soft = 1024;
    p.Rlimits = vec![nofile];
    p
}

fn spec(args: &[&str]) -> oci::Spec {
    let mut s = oci::Spec::new();
    s.Version = "1.0.2".into();
    s.Process = Some(process(args)).into();
    let mut root = oci::Root::new();
    root.Path = "rootfs".into();
    s.Root = Some(root).into();
    s.Hostname = "ctr".into();
    let mount = |dest: &str, fstype: &str, opts: &[&str]| {
        let mut m = oci::Mount::new();
        m.destination = dest.into();
        m.source = fstype.into();
        m.type_ = fstype.into();
        m.options = opts.iter().map(|s| s.to_string()).collect();
        m
    };
    s.Mounts = vec![
        mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", &["nosuid", "mode=755", "size=1m"]),
        mount(
            "/dev/pts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        ),
    ];
    let mut linux = oci::Linux::new();
    for ns in ["pid", "mount", "ipc", "uts"] {
        let mut n = oci::LinuxNamespace::new();
        n.Type = ns.into();
        linux.Namespaces.push(n);
    }
    linux.MaskedPaths = vec!["/proc/kcore".into()];
    linux.ReadonlyPaths = vec!["/proc/sys".into()];
    s.Linux = Some(linux).into();
    s
}

fn create_request(cid: &str, spec: oci::Spec) -> agent::CreateContainerRequest {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = cid.into();
    req.exec_id = cid.into();
    req.OCI = Some(spec).into();
    req
}

/// A unique container id per test run (cgroups are host-wide).
fn cid(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Reads a stream to its end (the agent reports the end as an error).
fn read_all(
    read: impl Fn(&agent::ReadStreamRequest) -> ttrpc::Result<agent::ReadStreamResponse>,
    cid: &str,
    exec_id: &str,
) -> Vec<u8> {
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    req.len = 1024;
    let mut out = Vec::new();
    loop {
        match read(&req) {
            Ok(resp) => {
                assert!(!resp.data.is_empty(), "a read returned no data without EOF");
                out.extend(resp.data);
            }
            Err(ttrpc::Error::RpcStatus(s)) => {
                assert!(s.message().contains("eof"), "unexpected read error {s:?}");
                return out;
            }
            Err(e) => panic!("read failed: {e:?}"),
        }
    }
}

fn wait(client: &AgentServiceClient, cid: &str, exec_id: &str) -> i32 {
    let mut req = agent::WaitProcessRequest::new();
    req.container_id = cid.into();
    req.exec_id = exec_id.into();
    client.wait_process(ctx(), &req).unwrap().status
}

fn remove(client: &AgentServiceClient, cid: &str) -> ttrpc::Result<protocols::empty::Empty> {
    let mut req = agent::RemoveContainerRequest::new();
    req.container_id = cid.into();
    req.timeout = 10;
    client.remove_container(ctx(), &req)
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn container_output_and_exit_status_then_nothing_left_behind() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let id = cid("out");
    agent.make_rootfs(&id);
    let cgroup = agent.cgroup_dir(&id, None);
    client
        .create_container(
            ctx(),
            &create_request(&id, spec(&["sh", "-c", "echo out; echo err >&2; exit 7"])),
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    assert!(
        cgroup.is_dir(),
        "no cgroup {} after create",
        cgroup.display()
    );
    assert!(agent.run_dir().join(&id).join("config.json").is_file());
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.clone();
    client
        .start_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", agent.log()));
    let out = read_all(|r| client.read_stdout(ctx(), r), &id, "");
    let err = read_all(|r| client.read_stderr(ctx(), r), &id, &id);
    assert_eq!(String::from_utf8_lossy(&out), "out\n");
    assert_eq!(String::from_utf8_lossy(&err), "err\n");
    assert_eq!(wait(&client, &id, ""), 7);
    // collected once, reported again
    assert_eq!(wait(&client, &id, &id), 7);

    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert_eq!(agent.mounts_under_run_dir(), Vec::<String>::new());
    assert!(!agent.run_dir().join(&id).exists(), "bundle left behind");
    assert!(!agent.run_dir().join(".libcontainer").join(&id).exists());
    let s = status_of(remove(&client, &id));
    assert_eq!(s.code(), Code::NOT_FOUND);
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn exec_stdin_stats_pause_resume_and_signal() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let id = cid("sleeper");
    agent.make_rootfs(&id);
    let mut s = spec(&["sleep", "1000"]);
    let cgroup = agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.clone();
    client.start_container(ctx(), &start).unwrap();

    // stdin echoed back through cat
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.clone();
    exec.exec_id = "cat-1".into();
    exec.process = Some(process(&["cat"])).into();
    client
        .exec_process(ctx(), &exec)
        .unwrap_or_else(|e| panic!("ExecProcess: {e:?}\n{}", agent.log()));
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = id.clone();
    write.exec_id = "cat-1".into();
    write.data = b"hello through cat\n".to_vec();
    assert_eq!(client.write_stdin(ctx(), &write).unwrap().len, 18);
    let mut close = agent::CloseStdinRequest::new();
    close.container_id = id.clone();
    close.exec_id = "cat-1".into();
    client.close_stdin(ctx(), &close).unwrap();
    let echoed = read_all(|r| client.read_stdout(ctx(), r), &id, "cat-1");
    assert_eq!(String::from_utf8_lossy(&echoed), "hello through cat\n");
    assert_eq!(wait(&client, &id, "cat-1"), 0);
    let s = status_of(client.write_stdin(ctx(), &write));
    assert_eq!(s.code(), Code::FAILED_PRECONDITION);

    // an exec that exits at once keeps its status, and sees the container's
    // hostname and pid namespace
    exec.exec_id = "quick".into();
    exec.process = Some(process(&["sh", "-c", "echo $(hostname) $$; exit 3"])).into();
    client.exec_process(ctx(), &exec).unwrap();
    assert_eq!(wait(&client, &id, "quick"), 3);
    let out = read_all(|r| client.read_stdout(ctx(), r), &id, "quick");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("ctr "), "{out:?}");
    let exec_pid: u32 = out.trim().split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        exec_pid > 1 && exec_pid < 100,
        "exec pid {exec_pid} is not in the container's pid namespace"
    );
    let s = status_of(client.exec_process(ctx(), &exec));
    assert_eq!(s.code(), Code::ALREADY_EXISTS);

    // stats from the container's cgroup
    let mut stats_req = agent::StatsContainerRequest::new();
    stats_req.container_id = id.clone();
    let stats = client.stats_container(ctx(), &stats_req).unwrap();
    let cg = stats.cgroup_stats.as_ref().unwrap();
    assert!(cg.cpu_stats.cpu_usage.total_usage > 0, "{cg:?}");
    assert!(cg.pids_stats.current >= 1, "{cg:?}");
    if cgroup.join("memory.current").exists() {
        assert!(cg.memory_stats.usage.usage > 0, "{cg:?}");
    } else {
        eprintln!(
            "memory controller not enabled in this cgroup v2 hierarchy: memory figures not checked"
        );
    }

    // pause / resume through the cgroup v2 freezer
    let mut pause = agent::PauseContainerRequest::new();
    pause.container_id = id.clone();
    client
        .pause_container(ctx(), &pause)
        .unwrap_or_else(|e| panic!("PauseContainer: {e:?}\n{}", agent.log()));
    let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 1"), "{events}");
    let mut resume = agent::ResumeContainerRequest::new();
    resume.container_id = id.clone();
    client.resume_container(ctx(), &resume).unwrap();
    let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap();
    assert!(events.contains("frozen 0"), "{events}");

    // a long exec, then SIGKILL to every process of the container
    exec.exec_id = "sleep-2".into();
    exec.process = Some(process(&["sleep", "1000"])).into();
    client.exec_process(ctx(), &exec).unwrap();
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = id.clone();
    signal.signal = libc::SIGKILL as u32;
    client.signal_process(ctx(), &signal).unwrap();
    assert_eq!(wait(&client, &id, ""), 128 + libc::SIGKILL);
    assert_eq!(wait(&client, &id, "sleep-2"), 128 + libc::SIGKILL);

    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
    assert_eq!(agent.mounts_under_run_dir(), Vec::<String>::new());
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn signal_one_exec_only() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let id = cid("sig");
    agent.make_rootfs(&id);
    let mut s = spec(&["sleep", "1000"]);
    let cgroup = agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.clone();
    client.start_container(ctx(), &start).unwrap();
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.clone();
    exec.exec_id = "victim".into();
    exec.process = Some(process(&["sleep", "1000"])).into();
    client.exec_process(ctx(), &exec).unwrap();
    // a read blocked on the victim's stdout must not hold up the connection
    let reader = {
        let client = client.clone();
        let id = id.clone();
        std::thread::spawn(move || read_all(|r| client.read_stdout(ctx(), r), &id, "victim"))
    };
    std::thread::sleep(Duration::from_millis(200));
    let mut stats_req = agent::StatsContainerRequest::new();
    stats_req.container_id = id.clone();
    client.stats_container(ctx(), &stats_req).unwrap();
    let mut signal = agent::SignalProcessRequest::new();
    signal.container_id = id.clone();
    signal.exec_id = "victim".into();
    signal.signal = libc::SIGTERM as u32;
    client.signal_process(ctx(), &signal).unwrap();
    assert_eq!(wait(&client, &id, "victim"), 128 + libc::SIGTERM);
    assert_eq!(reader.join().unwrap(), Vec::<u8>::new());
    // the init is still running: a second exec works
    exec.exec_id = "after".into();
    exec.process = Some(process(&["true"])).into();
    client.exec_process(ctx(), &exec).unwrap();
    assert_eq!(wait(&client, &id, "after"), 0);
    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
    assert!(!cgroup.exists(), "cgroup {} left behind", cgroup.display());
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn invalid_ids_and_escaping_paths_are_refused() {
    require_host();
    let agent = Agent::start();
    let client = agent.client();
    let refused = |req: &agent::CreateContainerRequest, what: &str| {
        let s = status_of(client.create_container(ctx(), req));
        assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{what}: {s:?}");
        s.message().to_string()
    };
    for bad in ["../x", "-a", "a/b", ".x", "", "/etc"] {
        refused(&create_request(bad, spec(&["true"])), bad);
    }
    let id = cid("esc");
    agent.make_rootfs(&id);
    let mut s = spec(&["true"]);
    s.Root.as_mut().unwrap().Path = "../../../../etc".into();
    let msg = refused(&create_request(&id, s), "root ..");
    assert!(msg.contains(".."), "{msg}");
    let mut s = spec(&["true"]);
    s.Root.as_mut().unwrap().Path = "/etc".into();
    let msg = refused(&create_request(&id, s), "root outside");
    assert!(msg.contains("outside"), "{msg}");
    let mut s = spec(&["true"]);
    s.Mounts[0].destination = "/proc/../../../etc".into();
    refused(&create_request(&id, s), "mount destination ..");
    let mut s = spec(&["true"]);
    let mut m = oci::Mount::new();
    m.destination = "/data".into();
    m.source = "/run/../etc".into();
    m.type_ = "bind".into();
    m.options = vec!["rbind".into()];
    s.Mounts.push(m);
    refused(&create_request(&id, s), "mount source ..");
    // a storage escaping too
    let mut req = create_request(&id, spec(&["true"]));
    let mut st = Storage::new();
    st.driver = "local".into();
    st.mount_point = "/tmp/../etc/x".into();
    req.storages = vec![st];
    refused(&req, "storage mount point");
    // exec ids are checked as well
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.clone();
    exec.exec_id = "../e".into();
    exec.process = Some(process(&["true"])).into();
    let s = status_of(client.exec_process(ctx(), &exec));
    assert_eq!(s.code(), Code::INVALID_ARGUMENT);
    // nothing was created by the refused requests
    assert!(!agent.run_dir().join(&id).exists());
    let mut w = agent::WaitProcessRequest::new();
    w.container_id = id.clone();
    assert_eq!(
        status_of(client.wait_process(ctx(), &w)).code(),
        Code::NOT_FOUND
    );
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn terminal_process_gets_a_pty() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let id = cid("tty");
    agent.make_rootfs(&id);
    let mut s = spec(&["sh", "-c", "read line; echo got:$line; exit 5"]);
    s.Process.as_mut().unwrap().Terminal = true;
    agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.clone();
    client.start_container(ctx(), &start).unwrap();
    let mut resize = agent::TtyWinResizeRequest::new();
    resize.container_id = id.clone();
    resize.row = 40;
    resize.column = 100;
    client.tty_win_resize(ctx(), &resize).unwrap();
    // an exec gets a terminal of its own
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.clone();
    exec.exec_id = "tty-exec".into();
    let mut p = process(&["sh", "-c", "tty; exit 4"]);
    p.Terminal = true;
    exec.process = Some(p).into();
    client
        .exec_process(ctx(), &exec)
        .unwrap_or_else(|e| panic!("ExecProcess: {e:?}\n{}", agent.log()));
    let out = read_all(|r| client.read_stdout(ctx(), r), &id, "tty-exec");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert_eq!(wait(&client, &id, "tty-exec"), 4);
    let mut write = agent::WriteStreamRequest::new();
    write.container_id = id.clone();
    write.data = b"abc\n".to_vec();
    client.write_stdin(ctx(), &write).unwrap();
    let out = read_all(|r| client.read_stdout(ctx(), r), &id, "");
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("got:abc"), "{out:?}");
    assert_eq!(wait(&client, &id, ""), 5);
    let mut err = agent::ReadStreamRequest::new();
    err.container_id = id.clone();
    assert_eq!(
        status_of(client.read_stderr(ctx(), &err)).code(),
        Code::FAILED_PRECONDITION
    );
    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
}

fn start(client: &AgentServiceClient, agent: &Agent, id: &str) {
    let mut start = agent::StartContainerRequest::new();
    start.container_id = id.into();
    client
        .start_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", agent.log()));
}

/// A profile allowing everything but mkdir/mkdirat, which fail with EPERM.
fn deny_mkdir_profile() -> oci::LinuxSeccomp {
    let mut deny = oci::LinuxSyscall::new();
    deny.Names = vec!["mkdir".into(), "mkdirat".into(), "not_on_x86_64".into()];
    deny.Action = "SCMP_ACT_ERRNO".into();
    deny.ErrnoRet = Some(oci::linux_syscall::ErrnoRet::Errnoret(libc::EPERM as u32));
    let mut profile = oci::LinuxSeccomp::new();
    profile.DefaultAction = "SCMP_ACT_ALLOW".into();
    profile.Architectures = vec!["SCMP_ARCH_X86_64".into()];
    profile.Syscalls = vec![deny];
    profile
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn seccomp_profile_is_enforced_in_init_and_exec() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let script = "mkdir /tmp/made && echo made || echo failed; sleep 30";
    // with the profile: the container's init and an exec'd process get EPERM
    let id = cid("scmp");
    agent.make_rootfs(&id);
    let mut s = spec(&["sh", "-c", script]);
    s.Linux.as_mut().unwrap().Seccomp = Some(deny_mkdir_profile()).into();
    agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    start(&client, &agent, &id);
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = id.clone();
    req.len = 1024;
    let out = client.read_stdout(ctx(), &req).unwrap().data;
    assert_eq!(String::from_utf8_lossy(&out), "failed\n", "{}", agent.log());
    let err = client.read_stderr(ctx(), &req).unwrap().data;
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("Operation not permitted"), "{err:?}");
    assert!(!agent
        .run_dir()
        .join("shared/containers")
        .join(&id)
        .join("rootfs/tmp/made")
        .exists());
    // an exec'd process gets the container's profile too, also with
    // noNewPrivileges set
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = id.clone();
    exec.exec_id = "mk".into();
    let mut p = process(&["mkdir", "/tmp/exec-made"]);
    p.NoNewPrivileges = true;
    exec.process = Some(p).into();
    client
        .exec_process(ctx(), &exec)
        .unwrap_or_else(|e| panic!("ExecProcess: {e:?}\n{}", agent.log()));
    let err = read_all(|r| client.read_stderr(ctx(), r), &id, "mk");
    assert!(
        String::from_utf8_lossy(&err).contains("Operation not permitted"),
        "{:?}",
        String::from_utf8_lossy(&err)
    );
    assert_eq!(wait(&client, &id, "mk"), 1);
    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));

    // without it mkdir works
    let id = cid("noscmp");
    let rootfs = agent.make_rootfs(&id);
    let mut s = spec(&["sh", "-c", "mkdir /tmp/made && echo made"]);
    agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    start(&client, &agent, &id);
    let out = read_all(|r| client.read_stdout(ctx(), r), &id, "");
    assert_eq!(String::from_utf8_lossy(&out), "made\n");
    assert_eq!(wait(&client, &id, ""), 0);
    assert!(rootfs.join("tmp/made").is_dir());
    remove(&client, &id).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));

    // a profile the guest cannot enforce is refused, naming the field
    let id = cid("badscmp");
    agent.make_rootfs(&id);
    let mut s = spec(&["true"]);
    let mut profile = deny_mkdir_profile();
    profile.Syscalls[0].Action = "SCMP_ACT_NOTIFY".into();
    s.Linux.as_mut().unwrap().Seccomp = Some(profile).into();
    let st = status_of(client.create_container(ctx(), &create_request(&id, s)));
    assert_eq!(st.code(), Code::INVALID_ARGUMENT, "{st:?}");
    assert!(
        st.message().contains("linux.seccomp.syscalls[0].action"),
        "{}",
        st.message()
    );
    assert!(!agent.run_dir().join(&id).exists());
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn mount_sources_and_cgroups_of_others_are_refused() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let refused = |req: &agent::CreateContainerRequest, what: &str, field: &str| {
        let s = status_of(client.create_container(ctx(), req));
        assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{what}: {s:?}");
        assert!(s.message().contains(field), "{what}: {}", s.message());
    };
    let bind = |source: &str| {
        let mut m = oci::Mount::new();
        m.destination = "/data".into();
        m.source = source.into();
        m.type_ = "bind".into();
        m.options = vec!["rbind".into(), "ro".into()];
        m
    };
    // a running container whose cgroup the others must not take
    let first = cid("cg1");
    agent.make_rootfs(&first);
    let mut s = spec(&["sleep", "30"]);
    let first_cgroup = agent.cgroup_dir(&first, Some(&mut s));
    let first_path = s.Linux.as_ref().unwrap().CgroupsPath.clone();
    // a legitimate bind mount: from the shared directory
    let shared = agent.run_dir().join("shared/containers").join(&first);
    fs::create_dir_all(shared.join("mounts/0-data")).unwrap();
    fs::write(shared.join("mounts/0-data/file"), "shared\n").unwrap();
    s.Mounts
        .push(bind(shared.join("mounts/0-data").to_str().unwrap()));
    client
        .create_container(ctx(), &create_request(&first, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    let mut exec = agent::ExecProcessRequest::new();
    exec.container_id = first.clone();
    exec.exec_id = "cat".into();
    exec.process = Some(process(&["cat", "/data/file"])).into();
    start(&client, &agent, &first);
    client.exec_process(ctx(), &exec).unwrap();
    let out = read_all(|r| client.read_stdout(ctx(), r), &first, "cat");
    assert_eq!(String::from_utf8_lossy(&out), "shared\n");

    let id = cid("cg2");
    agent.make_rootfs(&id);
    let with_cgroup = |path: &str| {
        let mut s = spec(&["true"]);
        s.Linux.as_mut().unwrap().CgroupsPath = path.into();
        create_request(&id, s)
    };
    for path in [
        "/",
        "//",
        first_path.as_str(),
        &format!("{first_path}/sub"),
        &format!("{first_path}/.."),
    ] {
        refused(&with_cgroup(path), path, "cgroupsPath");
    }
    let parent = Path::new(&first_path)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    refused(&with_cgroup(&parent), "parent cgroup", "cgroupsPath");

    // bind sources outside the shared directory and storages
    let link = agent.run_dir().join("shared/containers").join(&id);
    fs::create_dir_all(&link).unwrap();
    std::os::unix::fs::symlink("/etc", link.join("mounts")).unwrap();
    for source in [
        "/etc".to_string(),
        "/".to_string(),
        "relative".to_string(),
        agent.run_dir().join(".libcontainer").display().to_string(),
        link.join("mounts/passwd").display().to_string(),
    ] {
        let mut s = spec(&["true"]);
        s.Mounts.push(bind(&source));
        refused(&create_request(&id, s), &source, "mounts[3].source");
    }
    // storages: outside the run directory, local ones chmodding elsewhere,
    // through a symlink
    let tmp = tempfile::tempdir().unwrap();
    for (driver, mount_point) in [
        ("local", tmp.path().display().to_string()),
        (
            "local",
            agent.run_dir().join("shared").display().to_string(),
        ),
        ("ephemeral", "/mnt".to_string()),
        ("ephemeral", link.join("mounts/x").display().to_string()),
    ] {
        let mut req = create_request(&id, spec(&["true"]));
        let mut st = Storage::new();
        st.driver = driver.into();
        st.source = "tmpfs".into();
        st.mount_point = mount_point.clone();
        req.storages = vec![st];
        refused(&req, &mount_point, "mount_point");
    }
    assert!(!agent.run_dir().join(&id).exists());
    // the first container is untouched
    assert!(first_cgroup.is_dir());
    let mut w = agent::WaitProcessRequest::new();
    w.container_id = first.clone();
    w.exec_id = "cat".into();
    assert_eq!(client.wait_process(ctx(), &w).unwrap().status, 0);
    let mut sig = agent::SignalProcessRequest::new();
    sig.container_id = first.clone();
    sig.signal = 9;
    client.signal_process(ctx(), &sig).unwrap();
    assert_eq!(wait(&client, &first, ""), 137);
    remove(&client, &first).unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
}

#[test]
#[ignore = "needs root, busybox-static and cgroup2: run by cargo xtask test unit"]
fn remove_with_timeout_zero_returns_while_others_are_served() {
    require_host();
    let mut agent = Agent::start();
    let client = agent.client();
    let id = cid("rm0");
    agent.make_rootfs(&id);
    let mut s = spec(&[
        "sh",
        "-c",
        "trap '' TERM; echo ready; while true; do sleep 1; done",
    ]);
    agent.cgroup_dir(&id, Some(&mut s));
    client
        .create_container(ctx(), &create_request(&id, s))
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", agent.log()));
    start(&client, &agent, &id);
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = id.clone();
    req.len = 64;
    assert_eq!(client.read_stdout(ctx(), &req).unwrap().data, b"ready\n");
    // SIGTERM is ignored
    let mut sig = agent::SignalProcessRequest::new();
    sig.container_id = id.clone();
    sig.signal = 15;
    client.signal_process(ctx(), &sig).unwrap();
    // a WaitProcess in flight on its own connection
    let waiter = {
        let client = agent.client();
        let id = id.clone();
        std::thread::spawn(move || wait(&client, &id, ""))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!waiter.is_finished(), "the process died of SIGTERM");
    let started = Instant::now();
    let remover = {
        let client = agent.client();
        let id = id.clone();
        std::thread::spawn(move || {
            let mut req = agent::RemoveContainerRequest::new();
            req.container_id = id;
            req.timeout = 0;
            client.remove_container(ctx(), &req)
        })
    };
    // another request is served meanwhile
    let details = client
        .get_guest_details(ctx(), &agent::GuestDetailsRequest::new())
        .unwrap();
    assert!(details.agent_details.is_some());
    remover
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("RemoveContainer: {e:?}\n{}", agent.log()));
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "RemoveContainer with timeout 0 took {took:?}"
    );
    assert_eq!(waiter.join().unwrap(), 137);
    let st = status_of(remove(&client, &id));
    assert_eq!(st.code(), Code::NOT_FOUND);
}
