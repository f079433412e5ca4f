//! `kata-runtime check`, `env`, `metrics`, `iptables` and `factory` as an operator
//! runs them (the binary, a configuration named by KATA_CONF_FILE):
//! upstream's aliases, sections, verbosity and exit codes. No VM; the one
//! test that mounts (a failed `factory init`) needs root and is ignored.

use std::path::Path;
use std::process::{Command, Output};

fn kata_runtime(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kata-runtime"))
        .args(args)
        .env("KATA_CONF_FILE", config)
        .output()
        .expect("run kata-runtime")
}

/// A configuration whose kernel does not exist: `check` must call the
/// host not capable.
fn config(dir: &Path) -> std::path::PathBuf {
    let file = dir.join("configuration.toml");
    std::fs::write(
        &file,
        format!(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{}/no-such-vmlinux\"\ninitrd = \"{}/initrd\"\n[agent.kata]\n[runtime]\nenable_debug = true\n",
            dir.display(),
            dir.display()
        ),
    )
    .unwrap();
    file
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn env_has_upstreams_sections_under_both_names() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    for name in ["env", "kata-env"] {
        let out = kata_runtime(&file, &[name, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for section in [
            "Kernel",
            "Meta",
            "Image",
            "Initrd",
            "Hypervisor",
            "Runtime",
            "Host",
            "Agent",
        ] {
            assert!(json[section].is_object(), "{section} missing: {json}");
        }
        assert_eq!(
            json["Runtime"]["Config"]["Path"],
            file.display().to_string()
        );
        assert_eq!(json["Runtime"]["Debug"], true);
        assert!(json["Kernel"]["Path"]
            .as_str()
            .unwrap()
            .ends_with("no-such-vmlinux"));
    }
    let toml = kata_runtime(&file, &["env"]);
    assert!(
        text(&toml.stdout).contains("[Hypervisor]\n"),
        "{}",
        text(&toml.stdout)
    );
    // The configuration as the shim reads it, on request.
    let effective = kata_runtime(&file, &["env", "--config", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&effective.stdout).unwrap();
    assert_eq!(json["config_file"], file.display().to_string());
    assert_eq!(json["runtime"]["enable_debug"], true);
}

#[test]
fn check_exits_1_when_not_capable_and_prints_passing_checks_only_when_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let quiet = kata_runtime(&file, &["kata-check", "--no-boot"]);
    assert_eq!(quiet.status.code(), Some(1));
    let out = text(&quiet.stdout);
    assert!(
        out.contains("ERROR: kernel ") && out.contains("no-such-vmlinux does not exist"),
        "{out}"
    );
    assert!(!out.contains("Configuration:"), "{out}");
    assert!(text(&quiet.stderr).contains("System is not capable of running Kata Containers"));
    let verbose = kata_runtime(&file, &["check", "--no-boot", "--verbose", "-n"]);
    assert_eq!(verbose.status.code(), Some(1));
    let out = text(&verbose.stdout);
    assert!(
        out.contains(&format!("Configuration: {}", file.display())),
        "{out}"
    );
    assert!(out.contains("note: test boot skipped (--no-boot)"), "{out}");
}

#[test]
fn a_bad_configuration_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("configuration.toml");
    std::fs::write(&file, "[hypervisor.qemu]\ndefault_vcpus = \"many\"\n").unwrap();
    for cmd in [&["check", "--no-boot"][..], &["env"][..]] {
        let out = kata_runtime(&file, cmd);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("default_vcpus"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn metrics_of_an_unknown_sandbox_names_the_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let out = kata_runtime(&file, &["metrics", "no-such-sandbox-here"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/run/vc/sbs/no-such-sandbox-here/shim-monitor.sock"),
        "{}",
        text(&out.stderr)
    );
    let bad = kata_runtime(&file, &["metrics", "../etc"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn iptables_refuses_bad_input_with_2_and_an_unknown_sandbox_with_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path());
    let missing = dir.path().join("no-rules");
    let out = kata_runtime(
        &file,
        &[
            "iptables",
            "set",
            "--sandbox-id",
            "s1",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "kata-runtime: iptables file does not exist: {}\n",
            missing.display()
        )
    );

    let rules = dir.path().join("rules");
    std::fs::write(&rules, "*filter\nCOMMIT\n").unwrap();
    let rules = rules.to_str().unwrap();
    for args in [
        &["iptables", "get", "--sandbox-id", "../etc"][..],
        &["iptables", "set", "--sandbox-id", "a/b", "--v6", rules][..],
        // a bad id is reported before a missing file
        &["iptables", "set", "--sandbox-id", "../etc", "/no/such/file"][..],
    ] {
        let out = kata_runtime(&file, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains("sandbox id") && text(&out.stderr).contains("invalid"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // clap: the sandbox id and the file are required
    for args in [
        &["iptables", "get"][..],
        &["iptables", "set", "--sandbox-id", "s1"][..],
        &["iptables", "set", "--file", rules, "--sandbox-id", "s1"][..],
    ] {
        assert_eq!(kata_runtime(&file, args).status.code(), Some(2), "{args:?}");
    }

    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'#'; protocols::MAX_IPTABLES_DATA + 1]).unwrap();
    let out = kata_runtime(
        &file,
        &[
            "iptables",
            "set",
            "--sandbox-id",
            "s1",
            big.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is 1048577 bytes, over the 1048576 bytes"),
        "{}",
        text(&out.stderr)
    );

    for args in [
        &[
            "iptables",
            "get",
            "--sandbox-id",
            "no-such-sandbox-here",
            "--v6",
        ][..],
        &[
            "iptables",
            "set",
            "--sandbox-id",
            "no-such-sandbox-here",
            rules,
        ][..],
    ] {
        let out = kata_runtime(&file, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains("/run/vc/sbs/no-such-sandbox-here/shim-monitor.sock"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// `config` with templating on and its template below `dir`.
fn factory_config(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let file = config(dir);
    let template = dir.join("template");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text = text.replace(
        "[hypervisor.qemu]\n",
        "[hypervisor.qemu]\naccelerator = \"tcg\"\n",
    );
    text.push_str(&format!(
        "[factory]\nenable_template = true\ntemplate_path = \"{}\"\n",
        template.display()
    ));
    std::fs::write(&file, text).unwrap();
    (file, template)
}

#[test]
fn factory_status_and_destroy_without_a_template() {
    let dir = tempfile::tempdir().unwrap();
    let (file, template) = factory_config(dir.path());
    let out = kata_runtime(&file, &["factory", "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no VM template at")
            && text(&out.stdout).contains("factory init"),
        "{}",
        text(&out.stdout)
    );
    let out = kata_runtime(&file, &["factory", "status", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["present"], false);
    assert_eq!(status["usable"], false);
    let out = kata_runtime(&file, &["factory", "destroy"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("nothing to remove"));
    // destroy removes only the template's own files.
    std::fs::create_dir(&template).unwrap();
    std::fs::write(template.join("notes.txt"), "mine").unwrap();
    let out = kata_runtime(&file, &["factory", "destroy"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("left alone"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(template.join("notes.txt")).unwrap(),
        "mine"
    );
}

#[test]
#[ignore = "needs root (mounts a tmpfs): run by cargo xtask test unit"]
fn a_failed_factory_init_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (file, template) = factory_config(dir.path());
    // template_path two levels below what exists: both are removed again.
    let nested = template.join("vc").join("template");
    let text_now = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text_now.replace(
            &format!("template_path = \"{}\"", template.display()),
            &format!("template_path = \"{}\"", nested.display()),
        ),
    )
    .unwrap();
    let out = kata_runtime(&file, &["factory", "init"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-vmlinux"),
        "the error names the missing kernel: {}",
        text(&out.stderr)
    );
    assert!(!template.exists(), "{} was left behind", template.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*template.to_string_lossy()), "{mounts}");
}
