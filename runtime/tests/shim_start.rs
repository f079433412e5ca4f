//! The shim binary as containerd runs it: the serving shim and the `start`
//! action.
//!
//! - The serving shim runs the containerd-shim crate's SIGCHLD reaper:
//!   `containerd_shim::mount::mount_rootfs` forks and waits for its child
//!   through the crate's exit monitor, which only the reaper feeds; with
//!   the reaper off, every container create hangs for ever.
//! - `start` for a container joining a pod answers with the sandbox shim's
//!   address and spawns nothing; with no sandbox shim serving it fails at
//!   once, instead of spawning a shim that would take over the pod's socket.
//!
//! Needs no root, QEMU or network.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-kata-v2");

/// The caught-signals mask of `pid` (`SigCgt` in `/proc/<pid>/status`).
fn caught_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .expect("SigCgt line");
    u64::from_str_radix(line.trim(), 16).unwrap()
}

fn bit(signal: libc::c_int) -> u64 {
    1 << (signal - 1)
}

#[test]
fn the_serving_shim_runs_the_reaper_mount_rootfs_needs() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    // containerd's shim log: a fifo in the bundle, held open for reading.
    let log = bundle.join("log");
    nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let _log_reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&log)
        .unwrap();
    // containerd's ttrpc socket, for the event publisher to connect to.
    let ttrpc = dir.path().join("containerd.sock.ttrpc");
    let _containerd = UnixListener::bind(&ttrpc).unwrap();
    let socket = dir.path().join("shim.sock");
    let mut shim = Command::new(SHIM)
        .args(["-namespace", "test", "-id", "sb1", "-address"])
        .arg(dir.path().join("containerd.sock"))
        .arg("-socket")
        .arg(format!("unix://{}", socket.display()))
        .env("TTRPC_ADDRESS", &ttrpc)
        .env("KATA_CONF_FILE", dir.path().join("absent.toml"))
        .env_remove("RUST_LOG")
        .current_dir(&bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Serving once its socket exists (it binds after installing handlers).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !socket.exists() {
        if let Some(status) = shim.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut shim.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the shim exited ({status}) before serving: {err}");
        }
        assert!(Instant::now() < deadline, "the shim did not serve");
        std::thread::sleep(Duration::from_millis(20));
    }
    let caught = caught_signals(shim.id());
    shim.kill().unwrap();
    shim.wait().unwrap();
    assert_ne!(
        caught & bit(libc::SIGTERM),
        0,
        "the crate's handlers are installed (mask {caught:#x})"
    );
    assert_ne!(
        caught & bit(libc::SIGCHLD),
        0,
        "the serving shim does not catch SIGCHLD: the crate's reaper is off, and \
         mount_rootfs would wait for ever (mask {caught:#x})"
    );
}

fn write_spec(bundle: &Path, annotations: serde_json::Value) {
    std::fs::create_dir_all(bundle).unwrap();
    let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": annotations});
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
}

#[test]
fn a_container_joining_a_pod_without_a_serving_shim_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("c1");
    write_spec(
        &bundle,
        serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "pod1",
        }),
    );
    // A containerd address of this test only: the sandbox's socket
    // (/run/containerd/s/<hash of it>) exists nowhere.
    let containerd = dir.path().join("containerd.sock");
    let sandbox_socket = containerd_shim_address(&containerd, "pod1");
    assert!(!Path::new(&sandbox_socket).exists());
    let out = Command::new(SHIM)
        .args(["-namespace", "k8s.io", "-id", "c1", "-address"])
        .arg(&containerd)
        .arg("start")
        .env("TTRPC_ADDRESS", dir.path().join("containerd.sock.ttrpc"))
        .env("KATA_CONF_FILE", dir.path().join("absent.toml"))
        .current_dir(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start succeeded: {stderr}");
    assert!(
        stderr.contains("joins pod sandbox pod1, whose shim does not serve"),
        "{stderr}"
    );
    // Nothing was spawned to serve in the sandbox shim's place.
    assert!(!Path::new(&sandbox_socket).exists(), "{sandbox_socket}");
    assert!(!bundle.join("address").exists());
}

/// The path of the shim socket containerd-shim derives for `id`.
fn containerd_shim_address(containerd: &Path, id: &str) -> String {
    containerd_shim::socket_address(&containerd.display().to_string(), "k8s.io", id)
        .trim_start_matches("unix://")
        .to_string()
}
