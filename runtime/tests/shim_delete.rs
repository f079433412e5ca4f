//! The shim binary's `delete` action, which containerd runs after every shim
//! disconnect, against hostile input: ids and annotations that name paths
//! outside the state root, symlinks planted in the state root, and a QEMU
//! record whose pid now belongs to another process. A victim directory
//! beside the state root must come through every case untouched, and only
//! the process the record really names may be killed.
//!
//! Needs no root, QEMU or network: the action runs against a state root in a
//! temporary directory named by the configuration file.

use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use runtime::hypervisor::identity::ProcessIdentity;

struct Host {
    _tmp: tempfile::TempDir,
    /// `<tmp>/a/state`: the state root.
    state: PathBuf,
    /// `<tmp>/a/victim`: what `state/shared/sandboxes/../../../victim` names.
    victim: PathBuf,
    conf: PathBuf,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("a/state");
        let victim = tmp.path().join("a/victim");
        std::fs::create_dir_all(state.join("shared/sandboxes")).unwrap();
        std::fs::create_dir_all(victim.join("sub")).unwrap();
        std::fs::write(victim.join("precious"), b"keep").unwrap();
        std::fs::write(victim.join("sub/also"), b"keep").unwrap();
        let conf = tmp.path().join("configuration.toml");
        std::fs::write(
            &conf,
            format!(
                "[hypervisor.qemu]\nkernel = \"/nonexistent/vmlinux\"\ninitrd = \"/nonexistent/initrd\"\n\n[runtime]\nstate_root = \"{}\"\n",
                state.display()
            ),
        )
        .unwrap();
        // The binary falls back to the default state root when the
        // configuration does not load: make sure this one does.
        let cfg = runtime::config::load_file(&conf).expect("test configuration loads");
        assert_eq!(cfg.runtime.state_root, state);
        Host {
            _tmp: tmp,
            state,
            victim,
            conf,
        }
    }

    fn bundle(&self, name: &str, annotations: &[(&str, &str)]) -> PathBuf {
        let b = self._tmp.path().join("bundles").join(name);
        std::fs::create_dir_all(&b).unwrap();
        let ann: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": ann});
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b
    }

    fn delete(&self, id: &str, bundle: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_containerd-shim-kata-v2"))
            .args([
                "-namespace",
                "k8s.io",
                "-id",
                id,
                "-address",
                "/nonexistent/containerd.sock",
            ])
            .arg("-bundle")
            .arg(bundle)
            .arg("delete")
            .env("KATA_CONF_FILE", &self.conf)
            .env("TTRPC_ADDRESS", "/nonexistent/containerd.sock.ttrpc")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    fn victim_intact(&self, case: &str) {
        assert_eq!(
            std::fs::read(self.victim.join("precious")).ok().as_deref(),
            Some(&b"keep"[..]),
            "{case}"
        );
        assert_eq!(
            std::fs::read(self.victim.join("sub/also")).ok().as_deref(),
            Some(&b"keep"[..]),
            "{case}"
        );
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sleeper() -> Child {
    Command::new("sleep").arg("60").spawn().unwrap()
}

#[test]
fn hostile_sandbox_annotations_are_refused_and_touch_nothing() {
    let host = Host::new();
    let hostile = [
        "../../../victim",
        "../../victim",
        "..",
        "/",
        "", // an empty id is no id: refused, not the container's own
    ];
    let victim = host.victim.to_string_lossy().into_owned();
    for (type_key, id_key) in [
        (
            "io.kubernetes.cri.container-type",
            "io.kubernetes.cri.sandbox-id",
        ),
        (
            "io.kubernetes.cri-o.ContainerType",
            "io.kubernetes.cri-o.SandboxID",
        ),
    ] {
        for sid in hostile.iter().copied().chain([victim.as_str()]) {
            for kind in ["container", "sandbox"] {
                let case = format!("{id_key}={sid:?} ({kind})");
                let b = host.bundle("b", &[(type_key, kind), (id_key, sid)]);
                let out = host.delete("c1", &b);
                assert_eq!(out.status.code(), Some(1), "{case}: {}", stderr(&out));
                let err = stderr(&out);
                assert!(
                    err.contains(id_key) && err.contains("is invalid"),
                    "{case}: {err}"
                );
                host.victim_intact(&case);
                assert!(
                    host.state.join("shared/sandboxes").is_dir(),
                    "{case}: the state root was touched"
                );
            }
        }
    }
}

#[test]
fn hostile_container_ids_are_refused() {
    let host = Host::new();
    let b = host.bundle("plain", &[]);
    for id in ["../victim", "../../victim", "..", "/tmp", ".x", "a/b"] {
        let out = host.delete(id, &b);
        assert_eq!(out.status.code(), Some(1), "{id:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is invalid"),
            "{id:?}: {}",
            stderr(&out)
        );
        host.victim_intact(id);
    }
}

#[test]
fn symlinks_planted_in_the_state_root_are_not_followed() {
    let host = Host::new();
    let b = host.bundle("plain", &[]);
    // The sandbox's shared dir and its VM state dir both links to the victim.
    symlink(&host.victim, host.state.join("shared/sandboxes/c1")).unwrap();
    symlink(&host.victim, host.state.join("c1")).unwrap();
    let out = host.delete("c1", &b);
    // Cleanup reports what it left, and still answers containerd.
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("left in place"), "{}", stderr(&out));
    host.victim_intact("symlinked sandbox dirs");
    assert!(host
        .state
        .join("c1")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());

    // A symlinked parent: shared -> the victim's parent.
    let host = Host::new();
    std::fs::remove_dir_all(host.state.join("shared")).unwrap();
    symlink(host.victim.parent().unwrap(), host.state.join("shared")).unwrap();
    std::fs::create_dir_all(host.victim.parent().unwrap().join("sandboxes/victim")).unwrap();
    std::fs::write(
        host.victim.parent().unwrap().join("sandboxes/victim/x"),
        b"keep",
    )
    .unwrap();
    let b = host.bundle(
        "joins",
        &[
            ("io.kubernetes.cri.container-type", "container"),
            ("io.kubernetes.cri.sandbox-id", "victim"),
        ],
    );
    let out = host.delete("c2", &b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(host
        .victim
        .parent()
        .unwrap()
        .join("sandboxes/victim/x")
        .exists());
    host.victim_intact("symlinked shared/");

    // A QEMU record reached through a symlinked state dir is not used: the
    // process it names survives.
    let host = Host::new();
    let mut other = sleeper();
    let planted = host._tmp.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(
        planted.join("qemu.identity"),
        ProcessIdentity::of(other.id() as i32).unwrap().to_record(),
    )
    .unwrap();
    symlink(&planted, host.state.join("c3")).unwrap();
    let out = host.delete("c3", &host.bundle("plain", &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("QEMU not signalled"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        other.try_wait().unwrap(),
        None,
        "a process named through a planted link was signalled"
    );
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
fn only_the_recorded_process_is_killed_and_only_what_the_shim_made_is_removed() {
    let host = Host::new();
    let b = host.bundle("plain", &[]);

    // A record whose pid is now another process (same pid, other start).
    let mut other = sleeper();
    let real = ProcessIdentity::of(other.id() as i32).unwrap();
    std::fs::create_dir_all(host.state.join("c1")).unwrap();
    let stale = ProcessIdentity {
        pid: real.pid,
        start_ticks: real.start_ticks + 7,
    };
    std::fs::write(host.state.join("c1/qemu.identity"), stale.to_record()).unwrap();
    let out = host.delete("c1", &b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no longer this sandbox's QEMU"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        other.try_wait().unwrap(),
        None,
        "a reused pid was signalled"
    );
    assert!(!host.state.join("c1").exists());

    // The real record: that process is killed, and the shim's own dirs go.
    std::fs::create_dir_all(host.state.join("c1")).unwrap();
    std::fs::write(host.state.join("c1/qemu.identity"), real.to_record()).unwrap();
    // The daemons a VM runs are stopped too (they outlive QEMU otherwise).
    let mut daemons = Vec::new();
    for file in ["vhost-device-vsock.identity", "virtiofsd.identity"] {
        let d = sleeper();
        std::fs::write(
            host.state.join("c1").join(file),
            ProcessIdentity::of(d.id() as i32).unwrap().to_record(),
        )
        .unwrap();
        daemons.push(d);
    }
    std::fs::write(host.state.join("c1/console.log"), b"boot").unwrap();
    std::fs::create_dir_all(host.state.join("shared/sandboxes/c1/c1/rootfs")).unwrap();
    std::fs::write(host.state.join("shared/sandboxes/c1/c1/hosts"), b"").unwrap();
    let out = host.delete("c1", &b);
    assert!(out.status.success(), "{}", stderr(&out));
    let status = other.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the recorded QEMU stand-in must be killed"
    );
    assert!(!host.state.join("c1").exists());
    assert!(!host.state.join("shared/sandboxes/c1").exists());
    assert!(host.state.join("shared/sandboxes").is_dir());
    host.victim_intact("legitimate cleanup");
}

#[test]
fn one_character_ids_work() {
    let host = Host::new();
    let b = host.bundle("plain", &[]);
    std::fs::create_dir_all(host.state.join("shared/sandboxes/a/a/rootfs")).unwrap();
    let out = host.delete("a", &b);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!host.state.join("shared/sandboxes/a").exists());
}
