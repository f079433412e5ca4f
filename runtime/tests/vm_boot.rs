//! Real QEMU (TCG): boot, console capture, QMP, power-off exit, teardown,
//! and a VM killed while the host waits for its agent.

mod common;

use std::time::{Duration, Instant};

use runtime::agent_client::{wait_for_agent, AgentError};
use runtime::hypervisor::{Accel, BootMedia, ImageFs, QemuConfig, Vm, VmError, VsockBackend};

fn base_config(dir: &std::path::Path, id: &str, boot: BootMedia) -> QemuConfig {
    let mut cfg = QemuConfig::new(id, common::test_kernel(), boot);
    cfg.accel = Accel::Tcg;
    cfg.vsock = VsockBackend::HybridVsock;
    cfg.state_root = dir.join("run");
    cfg.memory_mib = 256;
    cfg
}

/// The state directory is 0700 and its sockets 0600 whatever the umask,
/// and another user cannot connect to QMP or the agent's socket.
fn owner_only(state_dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(state_dir), 0o700, "{}", state_dir.display());
    use std::os::unix::fs::FileTypeExt;
    let sockets: Vec<std::path::PathBuf> = std::fs::read_dir(state_dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_socket())
        .map(|e| e.path())
        .collect();
    for must in ["qmp.sock", "vsock.sock"] {
        assert!(
            sockets.contains(&state_dir.join(must)),
            "no {must} among {sockets:?}"
        );
    }
    for p in sockets {
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        // As nobody: connect(2) must be refused. The child switches user
        // and tries the connect itself (raw syscalls only, between fork and
        // exec), exiting with the errno: no helper program is needed.
        // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = p.as_os_str().as_encoded_bytes();
        assert!(bytes.len() < addr.sun_path.len());
        for (d, b) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *b as libc::c_char;
        }
        let mut cmd = std::process::Command::new("/bin/true");
        // SAFETY: the closure runs in the forked child and makes only
        // async-signal-safe system calls on data built before the fork,
        // then _exits without returning to std.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    libc::_exit(100);
                }
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let r = libc::connect(
                    fd,
                    &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                    len,
                );
                libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
            });
        }
        let status = cmd.status().expect("fork as nobody (this test needs root)");
        assert_eq!(
            status.code(),
            Some(libc::EACCES),
            "{}: user nobody's connect must fail with EACCES (0: connected, 100: could not switch user)",
            p.display()
        );
    }
}

#[test]
#[ignore = "needs QEMU, busybox-static, cpio and a guest kernel: run by cargo xtask test unit"]
fn initrd_boot_powers_off_and_teardown_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = common::busybox_initrd(dir.path());
    let mut cfg = base_config(dir.path(), "boot1", BootMedia::Initrd(initrd));
    // `tcg_tb_size`: the real QEMU takes the option and the guest boots
    // under a small translation cache.
    cfg.tcg_tb_size_mib = 16;
    let mut vm = Vm::start(cfg).unwrap();
    let state_dir = vm.state_dir().to_owned();
    assert!(state_dir.join("qmp.sock").exists());
    assert!(state_dir.join("vsock.sock").exists());
    owner_only(&state_dir);
    let qemu_pid = vm.pid().unwrap();
    let daemon_pid = vm
        .vsock_daemon_pid()
        .expect("hybrid vsock runs vhost-device-vsock");
    assert!(common::process_exists(qemu_pid) && common::process_exists(daemon_pid));
    assert!(vm
        .command_line()
        .iter()
        .any(|a| a == "vhost-user-vsock-pci,id=vsockdev0,chardev=vsock0"));
    assert!(vm.command_line().iter().any(|a| a == "tcg,tb-size=16"));

    let status = vm
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        status.success(),
        "QEMU exit status after guest power-off: {status}"
    );
    let console = vm.console_output();
    assert!(
        console.contains("KATA-TEST-INIT: up"),
        "console:\n{console}"
    );
    assert!(vm.pid().is_none());
    // QEMU is gone; the daemon is not (it outlives its front-end) until teardown.
    assert!(
        common::process_exists(daemon_pid),
        "vhost-device-vsock should still run before teardown"
    );

    vm.shutdown().unwrap();
    assert!(
        !common::process_exists(daemon_pid),
        "vhost-device-vsock {daemon_pid} left running"
    );
    assert!(
        !common::process_exists(qemu_pid),
        "QEMU {qemu_pid} left running"
    );
    assert!(
        !state_dir.exists(),
        "state dir {} left behind",
        state_dir.display()
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("run")).unwrap().count(),
        0
    );
}

#[test]
#[ignore = "needs QEMU, busybox-static, cpio and a guest kernel: run by cargo xtask test unit"]
fn killed_qemu_fails_the_agent_wait_quickly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = common::busybox_initrd(dir.path());
    let mut cfg = base_config(dir.path(), "kill1", BootMedia::Initrd(initrd));
    cfg.kernel_params.push("kata_test_mode=sleep".into());
    let mut vm = Vm::start(cfg).unwrap();
    let state_dir = vm.state_dir().to_owned();
    let qemu_pid = vm.pid().unwrap();
    let daemon_pid = vm.vsock_daemon_pid().unwrap();

    // The guest has no agent: a direct hybrid vsock connect fails, bounded.
    let uds = vm.plan().vsock_uds_path.clone();
    let t = Instant::now();
    let err = runtime::hypervisor::vsock::hybrid_vsock_connect(&uds, 1024, Duration::from_secs(2))
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "connect took {:?}: {err}",
        t.elapsed()
    );

    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(qemu_pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        Instant::now()
    });
    let err =
        wait_for_agent(&mut vm, Duration::from_secs(120), Duration::from_secs(5)).unwrap_err();
    let returned = Instant::now();
    let killed_at = killer.join().unwrap();
    let latency = returned.duration_since(killed_at);
    assert!(
        latency < Duration::from_secs(4),
        "the dead VM was noticed only after {latency:?}"
    );
    match &err {
        AgentError::Vm(VmError::QemuExited { status, .. }) => {
            assert!(status.contains("9"), "{status}")
        }
        other => panic!("expected QemuExited, got {other}"),
    }
    let msg = err.to_string();
    eprintln!("error after kill ({latency:?}): {msg}");
    assert!(
        msg.contains("QEMU exited unexpectedly") && msg.contains("console log"),
        "{msg}"
    );

    drop(vm);
    assert!(
        !common::process_exists(daemon_pid),
        "vhost-device-vsock left running"
    );
    assert!(!state_dir.exists(), "state dir left behind");
}

#[test]
#[ignore = "needs QEMU, busybox-static, cpio and a guest kernel: run by cargo xtask test unit"]
fn nvdimm_image_is_attached_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("rootfs.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let boot = BootMedia::Image {
        path: image.clone(),
        fs: ImageFs::Ext4,
        dax: true,
        verity: None,
    };
    let mut vm = Vm::start(base_config(dir.path(), "nv1", boot)).unwrap();
    let devices = vm.qmp_execute("query-memory-devices", None).unwrap();
    let nv = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "nvdimm")
        .unwrap_or_else(|| panic!("no nvdimm in {devices}"));
    assert_eq!(nv["data"]["id"], "nv0");
    assert_eq!(nv["data"]["size"], 8 << 20);
    assert_eq!(nv["data"]["memdev"], "/objects/mem0");
    let ro = vm
        .qmp_execute(
            "qom-get",
            Some(serde_json::json!({"path": "/objects/mem0", "property": "readonly"})),
        )
        .unwrap();
    assert_eq!(ro, true);
    let state_dir = vm.state_dir().to_owned();
    vm.shutdown().unwrap();
    assert!(!state_dir.exists());
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        8 << 20,
        "the image is untouched"
    );
}

/// A host client that retries `CONNECT` in a tight loop from QEMU's start
/// (as the shim's agent wait does, only faster) reaches the vsock daemon
/// while QEMU is still setting up the device's virtqueues. The daemon must
/// keep answering: once the guest is up, a `CONNECT` to a port nothing
/// listens on gets the guest's reset (the connection is closed), never
/// silence. Before `vhost-device-vsock/patches/0.3.0/0001-*`, the daemon's
/// worker thread died on such an early connection in most boots and every
/// later `CONNECT` went unanswered.
#[test]
#[ignore = "needs QEMU, busybox-static, cpio, a guest kernel and the release's vhost-device-vsock: run by cargo xtask test unit"]
fn connect_storm_during_boot_leaves_the_vsock_daemon_answering() {
    let dir = tempfile::tempdir().unwrap();
    let initrd = common::busybox_initrd(dir.path());
    let mut cfg = base_config(dir.path(), "storm1", BootMedia::Initrd(initrd));
    cfg.kernel_params.push("kata_test_mode=sleep".into());
    let vm = Vm::start(cfg).unwrap();
    let address = vm.agent_address().expect("hybrid vsock address");
    let started = Instant::now();
    let (mut attempts, mut checked) = (0u32, Instant::now());
    loop {
        let _ = address.connect(Duration::from_millis(200));
        attempts += 1;
        if checked.elapsed() > Duration::from_millis(100) {
            checked = Instant::now();
            if vm.console_output().contains("KATA-TEST-INIT: up") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the guest did not come up; console:\n{}",
                vm.console_output()
            );
        }
    }
    let err = address
        .connect(Duration::from_secs(10))
        .expect_err("nothing listens on the agent port in this guest");
    assert!(
        err.to_string().contains("connection closed after CONNECT"),
        "after {attempts} CONNECT attempts during boot the daemon no longer answers: {err}"
    );
    vm.shutdown().unwrap();
}
