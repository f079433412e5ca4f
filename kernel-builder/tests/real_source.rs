//! Configures the real Debian linux-source-6.1 tree with the project's
//! fragments (slow: extraction and several `make allnoconfig` runs; they are
//! real checks and run with every `cargo test -p kernel-builder`).
//!
//! The tarball defaults to the one the `linux-source-6.1` package installs;
//! KATA_KERNEL_TARBALL overrides it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kernel_builder::{configure, extract_source, Error, Fragments};

const DEFAULT_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

fn project_configs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-configs")
}

/// The extracted source, shared by every test of this binary. It lives under
/// cargo's per-target temp dir, keyed by the tarball's size and mtime, so
/// later runs reuse it (extract_source renames a complete tree into place,
/// so an existing directory is never half-extracted).
fn source_tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let tarball = std::env::var_os("KATA_KERNEL_TARBALL")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TARBALL));
        let meta = fs::metadata(&tarball).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; install the linux-source-6.1 package or set KATA_KERNEL_TARBALL",
                tarball.display()
            )
        });
        let mtime = meta
            .modified()
            .unwrap()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("kernel-src-{}-{mtime}", meta.len()));
        if !dest.join("Makefile").is_file() {
            extract_source(&tarball, &dest).unwrap();
        }
        dest
    })
}

/// name -> value text from `.config`-syntax lines; deliberately a separate,
/// simpler reader than the library's so the test does not trust it.
fn settings(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            map.insert(rest.to_string(), "n".to_string());
        } else if let Some((k, v)) = line.split_once('=').filter(|_| line.starts_with("CONFIG_")) {
            map.insert(k.to_string(), v.to_string());
        }
    }
    map
}

fn fragment_settings(configs: &Path, groups: &[&str]) -> BTreeMap<String, (String, String)> {
    let mut wanted = BTreeMap::new();
    for group in groups {
        let mut files: Vec<_> = fs::read_dir(configs.join(group))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no fragments in {group}");
        for file in files {
            for (k, v) in settings(&fs::read_to_string(&file).unwrap()) {
                wanted.insert(k, (v, file.display().to_string()));
            }
        }
    }
    wanted
}

fn copy_configs(to: &Path) {
    for group in ["common", "x86_64", "debug"] {
        fs::create_dir_all(to.join(group)).unwrap();
        for entry in fs::read_dir(project_configs().join(group)).unwrap() {
            let entry = entry.unwrap();
            if entry.path().extension().is_some_and(|e| e == "conf") {
                fs::copy(entry.path(), to.join(group).join(entry.file_name())).unwrap();
            }
        }
    }
    fs::copy(
        project_configs().join("whitelist.conf"),
        to.join("whitelist.conf"),
    )
    .unwrap();
}

#[test]
#[ignore = "needs the Debian kernel source tarball (linux-source-6.1): run by cargo xtask test unit"]
fn every_project_option_reaches_the_final_config() {
    let src = source_tree();
    let configs = project_configs();
    let whitelist = fs::read_to_string(configs.join("whitelist.conf")).unwrap();
    let whitelisted: Vec<&str> = whitelist
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .collect();
    for (debug, groups) in [
        (false, &["common", "x86_64"][..]),
        (true, &["common", "x86_64", "debug"][..]),
    ] {
        let build = tempfile::tempdir().unwrap();
        let fragments = Fragments::load(&configs, "x86_64", debug).unwrap();
        let mut log = Vec::new();
        let report = configure(src, build.path(), &fragments, &mut log)
            .unwrap_or_else(|e| panic!("configure (debug={debug}) failed:\n{e}"));
        assert_eq!(
            report.config,
            build.path().canonicalize().unwrap().join(".config")
        );

        let wanted = fragment_settings(&configs, groups);
        assert!(
            wanted.len() > 100,
            "suspiciously few options read: {}",
            wanted.len()
        );
        let got = settings(&fs::read_to_string(build.path().join(".config")).unwrap());
        let mut wrong = Vec::new();
        for (name, (value, file)) in &wanted {
            let actual = got.get(name).map(String::as_str);
            let ok = actual == Some(value.as_str())
                || (value == "n" && actual.is_none())
                || (actual.is_none() && whitelisted.contains(&name.as_str()));
            if !ok {
                wrong.push(format!("{name}={value} from {file}: got {actual:?}"));
            }
        }
        assert!(wrong.is_empty(), "debug={debug}:\n{}", wrong.join("\n"));
        // The things the guest cannot live without, stated again here.
        for must in [
            "CONFIG_64BIT",
            "CONFIG_VIRTIO_VSOCKETS",
            "CONFIG_FS_DAX",
            "CONFIG_PVH",
            "CONFIG_SERIAL_8250_CONSOLE",
        ] {
            assert_eq!(got.get(must).map(String::as_str), Some("y"), "{must}");
        }
        assert_eq!(got.get("CONFIG_MODULES").map(String::as_str), Some("n"));
    }
}

#[test]
#[ignore = "needs the Debian kernel source tarball (linux-source-6.1): run by cargo xtask test unit"]
fn an_option_that_does_not_exist_fails_naming_it() {
    let configs = tempfile::tempdir().unwrap();
    copy_configs(configs.path());
    fs::write(
        configs.path().join("common/zz-test.conf"),
        "# test\nCONFIG_KATA_DOES_NOT_EXIST=y\n",
    )
    .unwrap();
    let fragments = Fragments::load(configs.path(), "x86_64", false).unwrap();
    let build = tempfile::tempdir().unwrap();
    let err = configure(source_tree(), build.path(), &fragments, &mut Vec::new()).unwrap_err();
    let msg = err.to_string();
    let Error::ConfigCheck { failures, .. } = &err else {
        panic!("wrong error: {msg}")
    };
    assert_eq!(failures.len(), 1, "{msg}");
    assert!(
        msg.contains("CONFIG_KATA_DOES_NOT_EXIST: wanted y, got absent from .config"),
        "{msg}"
    );
    assert!(msg.contains("common/zz-test.conf:2"), "{msg}");
    // The unverified result cannot be built by accident.
    assert!(!build.path().join(".config").exists());
    assert!(build.path().join(".config.rejected").exists());
}

#[test]
#[ignore = "needs the Debian kernel source tarball (linux-source-6.1): run by cargo xtask test unit"]
fn an_option_whose_dependency_is_off_fails_naming_it() {
    // erofs sits behind the MISC_FILESYSTEMS menu: Kconfig drops it silently.
    let configs = tempfile::tempdir().unwrap();
    copy_configs(configs.path());
    let fs_conf = configs.path().join("common/fs.conf");
    let text = fs::read_to_string(&fs_conf).unwrap().replace(
        "CONFIG_MISC_FILESYSTEMS=y",
        "# CONFIG_MISC_FILESYSTEMS is not set",
    );
    fs::write(&fs_conf, text).unwrap();
    let fragments = Fragments::load(configs.path(), "x86_64", false).unwrap();
    let err = configure(
        source_tree(),
        tempfile::tempdir().unwrap().path(),
        &fragments,
        &mut Vec::new(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(
            "CONFIG_EROFS_FS: wanted y, got absent from .config (asked by common/fs.conf:"
        ),
        "{msg}"
    );
}

#[test]
#[ignore = "needs the Debian kernel source tarball (linux-source-6.1): run by cargo xtask test unit"]
fn a_whitelisted_missing_option_passes_with_a_note() {
    let configs = tempfile::tempdir().unwrap();
    copy_configs(configs.path());
    fs::write(
        configs.path().join("common/zz-test.conf"),
        "CONFIG_KATA_DOES_NOT_EXIST=y\n",
    )
    .unwrap();
    let mut whitelist = fs::read_to_string(configs.path().join("whitelist.conf")).unwrap();
    whitelist.push_str("CONFIG_KATA_DOES_NOT_EXIST\n");
    fs::write(configs.path().join("whitelist.conf"), whitelist).unwrap();
    let fragments = Fragments::load(configs.path(), "x86_64", false).unwrap();
    let build = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let report = configure(source_tree(), build.path(), &fragments, &mut log).unwrap();
    let noted: Vec<_> = report
        .whitelisted_missing
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(noted, ["CONFIG_KATA_DOES_NOT_EXIST"]);
    assert!(String::from_utf8_lossy(&log).contains("note: CONFIG_KATA_DOES_NOT_EXIST"));
    assert!(build.path().join(".config").is_file());
}
