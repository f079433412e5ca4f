//! `cargo xtask kernel` as a user runs it, against the real Debian source.
//!
//! These tests share the step cache named by KATA_XTASK_CACHE_DIR (`cargo
//! xtask test` passes its own, where the kernel is already built); without
//! it the first test builds the kernel (about 10 minutes on 2 cores).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cache() -> PathBuf {
    std::env::var_os("KATA_XTASK_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/cache"))
}

fn xtask(args: &[&str], dist: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("KATA_XTASK_CACHE_DIR", cache())
        .env("KATA_XTASK_DIST_DIR", dist)
        .current_dir(root())
        .output()
        .expect("run xtask")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_bad_input(o: &Output, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(2), "want exit 2: {}", stderr(o));
    let errs: Vec<String> = stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect();
    assert_eq!(errs.len(), 1, "one error line: {}", stderr(o));
    for n in needles {
        assert!(errs[0].contains(n), "`{n}` missing in: {}", errs[0]);
    }
}

/// A copy of kernel-configs/ to break in one way.
fn configs_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(root().join("kernel-configs/."))
        .arg(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    d
}

/// `CONFIG_X=v` and `# CONFIG_X is not set` lines, parsed here (not by the
/// builder) so the check is independent of the code under test.
fn parse_config_lines(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(rest.to_string(), "n".to_string());
        } else if line.starts_with("CONFIG_") {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.to_string(), v.to_string());
            }
        }
    }
    out
}

fn fragments_requested() -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    for dir in ["common", "x86_64"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("kernel-configs").join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        for f in files {
            for (k, v) in parse_config_lines(&std::fs::read_to_string(&f).unwrap()) {
                out.push((k, v, f.clone()));
            }
        }
    }
    out
}

#[test]
#[ignore = "needs the kernel source from apt (network) and a kernel build: run by cargo xtask test unit"]
fn built_config_holds_every_requested_option_and_rerun_is_a_hit() {
    let dist = tempfile::tempdir().unwrap();
    let o = xtask(&["kernel", "--json"], dist.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let arts = report["artifacts"].as_array().unwrap();
    let config = arts
        .iter()
        .find(|a| a["kind"] == "kernel-config")
        .expect("config artifact");
    let built =
        parse_config_lines(&std::fs::read_to_string(config["path"].as_str().unwrap()).unwrap());
    let whitelist = parse_config_lines(
        &std::fs::read_to_string(root().join("kernel-configs/whitelist.conf")).unwrap_or_default(),
    );
    let whitelisted = |k: &str| {
        whitelist.contains_key(k)
            || std::fs::read_to_string(root().join("kernel-configs/whitelist.conf"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == k)
    };
    let mut wrong = Vec::new();
    let requested = fragments_requested();
    assert!(requested.len() > 100, "the fragments ask for many options");
    for (k, want, file) in &requested {
        let got = built.get(k).map(String::as_str).unwrap_or("n");
        // A whitelisted option the kernel does not know is absent from the
        // .config, and that is allowed.
        let tolerated = whitelisted(k) && !built.contains_key(k);
        if got != want && !tolerated {
            wrong.push(format!(
                "{k}: want {want}, built {got} ({})",
                file.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "options missing from the built .config:\n{}",
        wrong.join("\n")
    );
    // Names and symlinks as upstream installs them.
    let names: Vec<&str> = arts.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert!(
        names.iter().any(|n| n.starts_with("vmlinux-6.1.")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("vmlinuz-6.1.")),
        "{names:?}"
    );
    for link in ["vmlinux.container", "vmlinuz.container"] {
        let target = std::fs::read_link(dist.path().join(link)).unwrap();
        assert!(
            dist.path().join(&target).is_file(),
            "{link} -> {}",
            target.display()
        );
    }
    // An unchanged rerun plans only hits.
    let o = xtask(&["kernel", "--dry-run", "--json"], dist.path());
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["id"] == "kernel" && s["cached"] == true),
        "{plan}"
    );
    for s in steps {
        assert_eq!(s["runs"], false, "step {} would run again", s["id"]);
    }
}

#[test]
#[ignore = "needs the kernel source from apt (network) and a kernel build: run by cargo xtask test unit"]
fn config_only_names_a_nonexistent_option_and_the_whitelist_tolerates_it() {
    let dist = tempfile::tempdir().unwrap();
    let configs = configs_copy();
    std::fs::write(
        configs.path().join("common/zz-test.conf"),
        "# test\nCONFIG_KATA_DOES_NOT_EXIST=y\n",
    )
    .unwrap();
    let dir = configs.path().to_str().unwrap();
    let o = xtask(&["kernel", "--config-only", "--configs", dir], dist.path());
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("CONFIG_KATA_DOES_NOT_EXIST"), "{err}");
    assert!(err.contains("zz-test.conf:2"), "{err}");
    let mut wl = std::fs::read_to_string(configs.path().join("whitelist.conf")).unwrap_or_default();
    wl.push_str("\nCONFIG_KATA_DOES_NOT_EXIST\n");
    std::fs::write(configs.path().join("whitelist.conf"), wl).unwrap();
    let o = xtask(&["kernel", "--config-only", "--configs", dir], dist.path());
    assert!(o.status.success(), "whitelisted must pass: {}", stderr(&o));
    assert!(
        stderr(&o).contains("CONFIG_KATA_DOES_NOT_EXIST"),
        "a note names it: {}",
        stderr(&o)
    );
}

#[test]
fn broken_fragment_syntax_names_file_and_line() {
    let dist = tempfile::tempdir().unwrap();
    let configs = configs_copy();
    std::fs::write(
        configs.path().join("common/zz-broken.conf"),
        "CONFIG_OK=y\nCONFIG_BROKEN y\n",
    )
    .unwrap();
    let o = xtask(
        &[
            "kernel",
            "--config-only",
            "--configs",
            configs.path().to_str().unwrap(),
        ],
        dist.path(),
    );
    assert_bad_input(&o, &["zz-broken.conf:2"]);
}

#[test]
#[ignore = "needs the kernel source from apt (network) and a kernel build: run by cargo xtask test unit"]
fn a_patch_that_does_not_apply_is_named_and_nothing_is_cached() {
    let dist = tempfile::tempdir().unwrap();
    let configs = configs_copy();
    let series = configs.path().join("patches/6.1");
    std::fs::create_dir_all(&series).unwrap();
    std::fs::write(
        series.join("0001-does-not-apply.patch"),
        "--- a/Makefile\n+++ b/Makefile\n@@ -1,3 +1,3 @@\n-this line is not in the kernel Makefile\n+neither is this\n context\n",
    )
    .unwrap();
    let dir = configs.path().to_str().unwrap();
    let o = xtask(&["kernel", "--config-only", "--configs", dir], dist.path());
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("0001-does-not-apply.patch"),
        "{}",
        stderr(&o)
    );
    let o = xtask(
        &[
            "kernel",
            "--config-only",
            "--configs",
            dir,
            "--dry-run",
            "--json",
        ],
        dist.path(),
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let source = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "kernel-source")
        .unwrap();
    assert_eq!(
        source["cached"], false,
        "a half-patched source must not be cached"
    );
}

#[test]
#[ignore = "needs the kernel source from apt (network) and a kernel build: run by cargo xtask test unit"]
fn source_digest_mismatch_and_missing_package_fail_closed() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("versions.yaml")).unwrap();
    let real = "ae95fe63d4c553f8d0e6c86cb1ab566f3894a43743eb19ab585cd97d82f26514";
    assert!(text.contains(real));
    let private_cache = d.path().join("cache");
    let run = |versions: &str| {
        let f = d.path().join("v.yaml");
        std::fs::write(&f, versions).unwrap();
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["kernel", "--config-only", "--versions", f.to_str().unwrap()])
            .env("KATA_XTASK_CACHE_DIR", &private_cache)
            .env("KATA_XTASK_DIST_DIR", d.path().join("dist"))
            .current_dir(root())
            .output()
            .unwrap()
    };
    let o = run(&text.replace(real, &"e".repeat(64)));
    assert_bad_input(&o, &["kernel.debian.sha256", real]);
    let o = run(&text.replace("package: linux-source-6.1", "package: linux-source-9.99"));
    assert_bad_input(&o, &["linux-source-9.99", "versions --update kernel"]);
    assert!(
        !private_cache.join("steps/kernel-source").exists(),
        "nothing half-built"
    );
}
