//! The agent as a real child process in service mode on a unix socket,
//! driven by the generated ttrpc clients of `protocols` and by raw frames.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use protobuf::Message;
use protocols::agent::{self, CreateSandboxRequest, Storage};
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::health::{health_check_response::ServingStatus, CheckRequest};
use protocols::health_ttrpc::HealthClient;
use ttrpc::context;
use ttrpc::Code;

const CALL_TIMEOUT_NS: i64 = 10_000_000_000;

/// The binary under test: the one cargo built for this test run, or another
/// build (e.g. the static musl one) named by KATA_AGENT_TEST_BINARY.
fn agent_binary() -> PathBuf {
    std::env::var_os("KATA_AGENT_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kata-agent")))
}

struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Agent {
    fn start() -> Agent {
        Agent::start_with_cmdline("console=ttyS0 agent.log=debug agent.bogus_option=1 quiet")
    }

    fn start_with_cmdline(cmdline: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        fs::write(dir.path().join("cmdline"), cmdline).unwrap();
        let sysfs = dir.path().join("sys");
        for (entry, state) in [
            ("cpu/cpu0", "1"),
            ("cpu/cpu1", "0"),
            ("memory/memory0", "1"),
            ("memory/memory3", "0"),
        ] {
            let d = sysfs.join("devices/system").join(entry);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("online"), state).unwrap();
        }
        fs::write(
            sysfs.join("devices/system/memory/block_size_bytes"),
            "8000000\n",
        )
        .unwrap();
        let stderr = fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = Command::new(agent_binary())
            .env("KATA_AGENT_CMDLINE", dir.path().join("cmdline"))
            .env(
                "KATA_AGENT_SERVER_ADDR",
                format!("unix://{}", socket.display()),
            )
            .env("KATA_AGENT_RESOLV_CONF", dir.path().join("etc/resolv.conf"))
            .env("KATA_AGENT_HOSTNAME_FILE", dir.path().join("etc/hostname"))
            .env("KATA_AGENT_SYSFS", &sysfs)
            .env("KATA_AGENT_RUN_DIR", dir.path().join("run"))
            .env_remove("KATA_AGENT_LOG_LEVEL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut agent = Agent { child, dir, socket };
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

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }

    fn client(&self) -> ttrpc::Client {
        ttrpc::Client::connect(&format!("unix://{}", self.socket.display())).unwrap()
    }

    fn health(&self) -> HealthClient {
        HealthClient::new(self.client())
    }

    fn agent(&self) -> AgentServiceClient {
        AgentServiceClient::new(self.client())
    }

    fn assert_serving(&self) {
        let resp = self
            .health()
            .check(ctx(), &CheckRequest::new())
            .unwrap_or_else(|e| panic!("Check failed: {e:?}\n{}", self.log()));
        assert_eq!(resp.status.enum_value(), Ok(ServingStatus::SERVING));
        assert!(self.child_alive(), "agent died: {}", self.log());
    }

    fn child_alive(&self) -> bool {
        // Liveness check with signal 0.
        // SAFETY: kill(2) takes no pointers; the child is not reaped until the
        // Agent is dropped, so its pid is not reused meanwhile.
        unsafe { libc::kill(self.child.id() as i32, 0) == 0 }
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctx() -> context::Context {
    context::with_timeout(CALL_TIMEOUT_NS)
}

fn status_of<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> ttrpc::Status {
    match result {
        Err(ttrpc::Error::RpcStatus(s)) => s,
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[test]
fn health_check_and_version() {
    let agent = Agent::start();
    agent.assert_serving();
    let version = agent.health().version(ctx(), &CheckRequest::new()).unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(!version.grpc_version.is_empty());
    // configuration notes reach the log; unknown keys are not fatal
    let log = agent.log();
    assert!(
        log.contains("agent.bogus_option=1: unknown agent option"),
        "{log}"
    );
    assert!(log.contains("service mode"), "{log}");
}

#[test]
fn guest_details_report_sysfs_and_agent() {
    let agent = Agent::start();
    let mut req = agent::GuestDetailsRequest::new();
    req.mem_block_size = true;
    req.mem_hotplug_probe = true;
    let resp = agent.agent().get_guest_details(ctx(), &req).unwrap();
    assert_eq!(resp.mem_block_size_bytes, 0x800_0000);
    assert!(!resp.support_mem_hotplug_probe);
    let details = resp.agent_details.as_ref().unwrap();
    assert_eq!(details.version, env!("CARGO_PKG_VERSION"));
    assert!(!details.init_daemon);
    assert!(
        details.supports_seccomp,
        "the agent enforces seccomp profiles"
    );
    // In service mode the agent runs on this host: its kernel is ours.
    let uname = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .unwrap();
    assert_eq!(
        resp.kernel_release,
        String::from_utf8_lossy(&uname.stdout).trim()
    );
    for driver in ["virtio-fs", "9p", "local", "ephemeral", "blk"] {
        assert!(
            details.storage_handlers.iter().any(|d| d == driver),
            "{driver} missing: {:?}",
            details.storage_handlers
        );
    }
    fs::write(agent.path("sys/devices/system/memory/probe"), "").unwrap();
    assert!(
        agent
            .agent()
            .get_guest_details(ctx(), &req)
            .unwrap()
            .support_mem_hotplug_probe
    );
}

fn local_storage(mount_point: &Path, mode: &str) -> Storage {
    let mut s = Storage::new();
    s.driver = "local".into();
    s.source = "local".into();
    s.mount_point = mount_point.to_str().unwrap().into();
    s.options = vec![format!("mode={mode}")];
    s
}

#[test]
fn create_then_destroy_sandbox() {
    let mut agent = Agent::start();
    let client = agent.agent();
    let shared = agent.path("run/sandbox/local/sandbox-dir");
    let mut req = CreateSandboxRequest::new();
    req.hostname = "sandbox-host".into();
    req.dns = vec!["nameserver 10.0.0.53".into(), "search example.test".into()];
    req.sandbox_id = "sb-0123".into();
    req.storages = vec![local_storage(&shared, "0750")];
    client
        .create_sandbox(ctx(), &req)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));

    assert_eq!(
        fs::read_to_string(agent.path("etc/hostname")).unwrap(),
        "sandbox-host\n"
    );
    assert_eq!(
        fs::read_to_string(agent.path("etc/resolv.conf")).unwrap(),
        "nameserver 10.0.0.53\nsearch example.test\n"
    );
    assert_eq!(
        fs::metadata(&shared).unwrap().permissions().mode() & 0o7777,
        0o750
    );

    let again = status_of(client.create_sandbox(ctx(), &req));
    assert_eq!(again.code(), Code::ALREADY_EXISTS);
    assert!(again.message().contains("sb-0123"), "{}", again.message());

    client
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("agent keeps running after DestroySandbox");
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(!agent.socket.exists(), "socket file left behind");
    assert!(
        agent
            .log()
            .contains("sandbox \"sb-0123\" (hostname \"sandbox-host\") destroyed"),
        "{}",
        agent.log()
    );
}

#[test]
fn unsupported_storage_is_refused_cleanly() {
    let agent = Agent::start();
    let client = agent.agent();
    let mut nvdimm = Storage::new();
    nvdimm.driver = "nvdimm".into();
    nvdimm.source = "/dev/pmem0".into();
    nvdimm.mount_point = agent.path("run/pmem").to_str().unwrap().into();
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb-1".into();
    req.storages = vec![nvdimm];
    let status = status_of(client.create_sandbox(ctx(), &req));
    assert_eq!(status.code(), Code::UNIMPLEMENTED);
    assert!(
        status.message().contains("\"nvdimm\"") && status.message().contains("virtio-fs"),
        "{}",
        status.message()
    );

    // blk takes a PCI path, not a device node
    let mut blk = Storage::new();
    blk.driver = "blk".into();
    blk.source = "/dev/vda".into();
    blk.fstype = "ext4".into();
    blk.mount_point = agent.path("run/blk").to_str().unwrap().into();
    req.storages = vec![blk];
    let status = status_of(client.create_sandbox(ctx(), &req));
    assert_eq!(status.code(), Code::INVALID_ARGUMENT);
    assert!(
        status.message().contains("\"/dev/vda\" is not a PCI path"),
        "{}",
        status.message()
    );

    let mut relative = local_storage(Path::new("/x"), "0700");
    relative.mount_point = "not/absolute".into();
    req.storages = vec![relative];
    assert_eq!(
        status_of(client.create_sandbox(ctx(), &req)).code(),
        Code::INVALID_ARGUMENT
    );

    // the failures left no sandbox behind
    req.storages = vec![];
    client.create_sandbox(ctx(), &req).unwrap();
}

#[test]
fn storages_outside_the_agent_roots_or_through_symlinks_are_refused() {
    let agent = Agent::start();
    let client = agent.agent();
    let run = agent.path("run");
    let victim = agent.path("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir_all(run.join("sandbox")).unwrap();
    std::os::unix::fs::symlink(&victim, run.join("sandbox/link")).unwrap();
    let ephemeral = |mount_point: &Path| {
        let mut s = Storage::new();
        s.driver = "ephemeral".into();
        s.source = "tmpfs".into();
        s.mount_point = mount_point.to_str().unwrap().into();
        s
    };
    let cases = [
        // a local storage chmods its directory: not an arbitrary one
        (local_storage(&victim, "0777"), "outside"),
        (local_storage(&run, "0777"), "outside"),
        (
            local_storage(&run.join("shared/containers"), "0777"),
            "outside",
        ),
        (
            local_storage(&run.join("sandbox/link"), "0777"),
            "symbolic link",
        ),
        (
            local_storage(&run.join("sandbox/link/sub"), "0777"),
            "symbolic link",
        ),
        // mounts only below the run directory, never through a symlink
        (ephemeral(Path::new("/etc")), "outside"),
        (
            ephemeral(&run.join("sandbox/link/scratch")),
            "symbolic link",
        ),
        (ephemeral(&run.join(".libcontainer/x")), "state directory"),
    ];
    for (storage, why) in cases {
        let mut req = CreateSandboxRequest::new();
        req.sandbox_id = "sb-paths".into();
        let mount_point = storage.mount_point.clone();
        req.storages = vec![storage];
        let s = status_of(client.create_sandbox(ctx(), &req));
        assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{mount_point}: {s:?}");
        assert!(
            s.message().contains("mount_point") && s.message().contains(&mount_point),
            "{mount_point}: {}",
            s.message()
        );
        assert!(s.message().contains(why), "{mount_point}: {}", s.message());
    }
    assert_eq!(
        fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
        0o700,
        "a refused storage changed a directory"
    );
    assert!(!victim.join("sub").exists() && !victim.join("scratch").exists());
    // the legitimate place works
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb-paths".into();
    req.storages = vec![local_storage(&run.join("sandbox/local/vol"), "0777")];
    client
        .create_sandbox(ctx(), &req)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));
}

#[test]
#[ignore = "needs root (mounts a tmpfs): run by cargo xtask test unit"]
fn ephemeral_storage_is_mounted_and_released() {
    // A requirement, not a skip: a test that passes without running proves nothing.
    // SAFETY: geteuid(2) cannot fail and takes no arguments.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "mounting tmpfs needs root: run the tests as root"
    );
    let mut agent = Agent::start();
    let target = agent.path("run/sandbox/scratch");
    let mut s = Storage::new();
    s.driver = "ephemeral".into();
    s.source = "tmpfs".into();
    s.fstype = "tmpfs".into();
    s.mount_point = target.to_str().unwrap().into();
    s.options = vec!["size=1m".into()];
    let mut req = CreateSandboxRequest::new();
    req.sandbox_id = "sb-e".into();
    req.storages = vec![s];
    let mounted = |p: &Path| {
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
    };
    agent
        .agent()
        .create_sandbox(ctx(), &req)
        .unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));
    assert!(
        mounted(&target),
        "tmpfs not mounted on {}",
        target.display()
    );
    agent
        .agent()
        .destroy_sandbox(ctx(), &agent::DestroySandboxRequest::new())
        .unwrap();
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        !mounted(&target),
        "tmpfs still mounted on {}",
        target.display()
    );
}

#[test]
fn unimplemented_options_say_so_and_bad_container_calls_are_refused() {
    let agent = Agent::start();
    let client = agent.agent();
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = "c1".into();
    // sandbox_pidns is implemented: this request fails for its missing spec
    req.sandbox_pidns = true;
    let s = status_of(client.create_container(ctx(), &req));
    assert_eq!(s.code(), Code::INVALID_ARGUMENT);
    assert!(s.message().contains("OCI"), "{}", s.message());
    req.sandbox_pidns = false;
    let mut user = agent::StringUser::new();
    user.uid = "nobody".into();
    req.string_user = Some(user).into();
    let s = status_of(client.create_container(ctx(), &req));
    assert_eq!(s.code(), Code::UNIMPLEMENTED);
    assert!(s.message().contains("string_user"), "{}", s.message());
    let s = status_of(client.create_container(ctx(), &agent::CreateContainerRequest::new()));
    assert_eq!(s.code(), Code::INVALID_ARGUMENT);
    assert!(s.message().contains("container_id"), "{}", s.message());
    let mut read = agent::ReadStreamRequest::new();
    read.container_id = "nosuch".into();
    let s = status_of(client.read_stdout(ctx(), &read));
    assert_eq!(s.code(), Code::NOT_FOUND);
    assert!(s.message().contains("ReadStdout"), "{}", s.message());
    agent.assert_serving();
}

#[test]
fn unknown_service_and_method_get_an_error_status() {
    let agent = Agent::start();
    let client = agent.client();
    for (service, method) in [
        ("grpc.AgentService", "Frobnicate"),
        ("grpc.NoSuchService", "Check"),
    ] {
        let mut req = ttrpc::Request::new();
        req.service = service.into();
        req.method = method.into();
        req.timeout_nano = CALL_TIMEOUT_NS;
        let s = status_of(client.request(req));
        // ttrpc 0.9's own answer for a path it has no handler for
        assert_eq!(s.code(), Code::INVALID_ARGUMENT);
        assert!(
            s.message().contains(&format!("/{service}/{method}")),
            "{}",
            s.message()
        );
    }
    agent.assert_serving();
}

#[test]
fn date_time_is_validated_and_host_clock_untouched() {
    let agent = Agent::start();
    let client = agent.agent();
    let mut req = agent::SetGuestDateTimeRequest::new();
    req.Sec = 1_700_000_000;
    req.Usec = 2_000_000;
    assert_eq!(
        status_of(client.set_guest_date_time(ctx(), &req)).code(),
        Code::INVALID_ARGUMENT
    );
    req.Usec = 5;
    let s = status_of(client.set_guest_date_time(ctx(), &req));
    assert_eq!(s.code(), Code::FAILED_PRECONDITION);
    assert!(s.message().contains("service mode"), "{}", s.message());
}

#[test]
fn reseed_is_validated_and_host_generator_untouched() {
    let agent = Agent::start();
    let client = agent.agent();
    let mut req = agent::ReseedRandomDevRequest::new();
    let s = status_of(client.reseed_random_dev(ctx(), &req));
    assert_eq!(s.code(), Code::INVALID_ARGUMENT);
    assert!(s.message().contains("data is empty"), "{}", s.message());
    req.data = vec![1; 64];
    let s = status_of(client.reseed_random_dev(ctx(), &req));
    assert_eq!(s.code(), Code::FAILED_PRECONDITION);
    assert!(s.message().contains("service mode"), "{}", s.message());
}

#[test]
fn online_cpu_mem_writes_sysfs() {
    let agent = Agent::start();
    let mut req = agent::OnlineCPUMemRequest::new();
    req.wait = true;
    req.nb_cpus = 1;
    agent.agent().online_cpu_mem(ctx(), &req).unwrap();
    assert_eq!(
        fs::read_to_string(agent.path("sys/devices/system/cpu/cpu1/online")).unwrap(),
        "1"
    );
    assert_eq!(
        fs::read_to_string(agent.path("sys/devices/system/memory/memory3/online")).unwrap(),
        "1"
    );
}

// ---- raw frames -------------------------------------------------------------

fn read_frame(stream: &mut UnixStream) -> std::io::Result<(u32, u8, Vec<u8>)> {
    let mut header = [0u8; 10];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap()) as usize;
    let stream_id = u32::from_be_bytes(header[4..8].try_into().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((stream_id, header[8], body))
}

fn raw_connection(agent: &Agent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn expect_status(stream: &mut UnixStream, stream_id: u32) -> ttrpc::Status {
    let (id, type_, body) = read_frame(stream).expect("a response frame");
    assert_eq!(
        (id, type_),
        (stream_id, 2),
        "response to stream {stream_id}"
    );
    ttrpc::Response::parse_from_bytes(&body)
        .unwrap()
        .status
        .unwrap_or_default()
}

fn check_frame(stream_id: u32) -> Vec<u8> {
    protocols::requests::encode_request_frame(
        stream_id,
        protocols::HEALTH_SERVICE,
        "Check",
        &CheckRequest::new(),
    )
}

#[test]
fn oversized_frame_gets_an_error_and_the_connection_survives() {
    let agent = Agent::start();
    let mut stream = raw_connection(&agent);
    let len = protocols::requests::MAX_FRAME_PAYLOAD + 1;
    let mut frame = Vec::with_capacity(10 + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.resize(10 + len, 0xab);
    stream.write_all(&frame).unwrap();
    let status = expect_status(&mut stream, 1);
    assert_ne!(status.code(), Code::OK);
    assert!(status.message().contains("exceed"), "{}", status.message());

    // the same connection still serves, and so does a new one
    stream.write_all(&check_frame(3)).unwrap();
    assert_eq!(expect_status(&mut stream, 3).code(), Code::OK);
    agent.assert_serving();
}

#[test]
fn malformed_payloads_get_an_error_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let mut stream = raw_connection(&agent);

    // 1. an envelope that is not a ttrpc Request (field 1 claims 200 bytes)
    let garbage = [0x0a, 200, b'x', b'y'];
    let mut frame = Vec::new();
    frame.extend_from_slice(&(garbage.len() as u32).to_be_bytes());
    frame.extend_from_slice(&5u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&garbage);
    stream.write_all(&frame).unwrap();
    assert_eq!(expect_status(&mut stream, 5).code(), Code::INVALID_ARGUMENT);

    // 2. a valid envelope whose CreateSandbox payload does not decode
    let mut req = ttrpc::Request::new();
    req.service = protocols::AGENT_SERVICE.into();
    req.method = "CreateSandbox".into();
    req.payload = vec![0x2a, 0x7f, 0x01]; // sandbox_id claims 127 bytes
    let body = req.write_to_bytes().unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&7u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
    let status = expect_status(&mut stream, 7);
    assert_eq!(status.code(), Code::INVALID_ARGUMENT);
    assert!(
        status.message().contains("CreateSandbox"),
        "{}",
        status.message()
    );

    // the connection and the agent still answer
    stream.write_all(&check_frame(9)).unwrap();
    assert_eq!(expect_status(&mut stream, 9).code(), Code::OK);
    agent.assert_serving();
}

#[test]
fn abrupt_disconnects_do_not_hurt() {
    let agent = Agent::start();
    {
        // half a header
        let mut s = raw_connection(&agent);
        s.write_all(&[0, 0, 0]).unwrap();
    }
    {
        // a header announcing a body that never comes
        let mut s = raw_connection(&agent);
        s.write_all(&[0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0x0a]).unwrap();
    }
    {
        // a full request, gone before the reply
        let mut s = raw_connection(&agent);
        s.write_all(&check_frame(1)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    agent.assert_serving();
    assert!(agent.child_alive());
}

#[test]
fn volume_stats_and_resize_stay_in_the_run_dir() {
    let agent = Agent::start();
    let client = agent.agent();
    let vol = agent.path("run/sandbox/storage/vol");
    fs::create_dir_all(&vol).unwrap();
    let stats = |path: &Path| {
        let mut req = agent::VolumeStatsRequest::new();
        req.volume_guest_path = path.to_str().unwrap().into();
        client.get_volume_stats(ctx(), &req)
    };
    let resp = stats(&vol).unwrap_or_else(|e| panic!("{e:?}\n{}", agent.log()));
    let units: Vec<_> = resp.usage.iter().map(|u| u.unit.enum_value()).collect();
    assert_eq!(
        units,
        [
            Ok(agent::volume_usage::Unit::BYTES),
            Ok(agent::volume_usage::Unit::INODES)
        ]
    );
    assert!(resp.usage[0].total > 0);
    assert_eq!(resp.volume_condition.message, "OK");

    let outside = status_of(stats(Path::new("/etc")));
    assert_eq!(outside.code(), Code::INVALID_ARGUMENT);
    assert!(
        outside.message().starts_with("GetVolumeStats: ")
            && outside.message().contains("run directory"),
        "{}",
        outside.message()
    );
    assert_eq!(
        status_of(stats(&vol.join("missing"))).code(),
        Code::NOT_FOUND
    );

    let mut req = agent::ResizeVolumeRequest::new();
    req.volume_guest_path = vol.to_str().unwrap().into();
    req.size = 1 << 30;
    let status = status_of(client.resize_volume(ctx(), &req));
    assert_eq!(status.code(), Code::INVALID_ARGUMENT);
    assert!(
        status.message().contains("is not a mount point"),
        "{}",
        status.message()
    );
}

#[test]
fn set_iptables_leaves_the_hosts_filter_alone() {
    let agent = Agent::start();
    let client = agent.agent();
    let mut req = agent::SetIPTablesRequest::new();
    req.data = vec![b'#'; protocols::MAX_IPTABLES_DATA + 1];
    let s = status_of(client.set_ip_tables(ctx(), &req));
    assert_eq!(s.code(), Code::INVALID_ARGUMENT);
    assert!(
        s.message()
            .starts_with("SetIPTables: data (field 2) is 1048577 bytes, over the 1048576"),
        "{}",
        s.message()
    );
    // service mode: the agent's network namespace is the host's
    for is_ipv6 in [false, true] {
        req.is_ipv6 = is_ipv6;
        req.data = b"*filter\nCOMMIT\n".to_vec();
        let s = status_of(client.set_ip_tables(ctx(), &req));
        assert_eq!(s.code(), Code::FAILED_PRECONDITION);
        assert!(
            s.message().starts_with("SetIPTables: ") && s.message().contains("service mode"),
            "{}",
            s.message()
        );
    }
    agent.assert_serving();
}
