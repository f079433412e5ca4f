//! Fragment and whitelist parsing, merge order, conflicts, and the config
//! check against hand-written `.config` files (no kernel source needed).

use std::fs;
use std::path::Path;

use kernel_builder::{check_config, ConfigValue, Error, Fragments, Patches};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A minimal valid tree: one common and one x86_64 fragment.
fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "common/b.conf", "CONFIG_B=y\n");
    write(
        dir.path(),
        "common/a.conf",
        "# comment\n\nCONFIG_A=y\n# CONFIG_OFF is not set\n",
    );
    write(
        dir.path(),
        "x86_64/base.conf",
        "CONFIG_NR=240\nCONFIG_S=\"a \\\"q\\\" b\"\nCONFIG_H=0x1000\n",
    );
    dir
}

fn load_err(dir: &Path) -> Error {
    Fragments::load(dir, "x86_64", false).expect_err("load should fail")
}

#[test]
fn loads_in_sorted_order_with_origins() {
    let dir = tree();
    let f = Fragments::load(dir.path(), "x86_64", false).unwrap();
    let names: Vec<_> = f.requests().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CONFIG_A",
            "CONFIG_OFF",
            "CONFIG_B",
            "CONFIG_NR",
            "CONFIG_S",
            "CONFIG_H"
        ]
    );
    let a = f.request("CONFIG_A").unwrap();
    assert_eq!(
        (a.origin.file.as_str(), a.origin.line),
        ("common/a.conf", 3)
    );
    assert_eq!(f.request("CONFIG_OFF").unwrap().value, ConfigValue::No);
    assert_eq!(
        f.request("CONFIG_NR").unwrap().value,
        ConfigValue::Number("240".into())
    );
    assert_eq!(
        f.request("CONFIG_S").unwrap().value,
        ConfigValue::Str("a \"q\" b".into())
    );
    assert_eq!(
        f.request("CONFIG_H").unwrap().value,
        ConfigValue::Number("0x1000".into())
    );
    let rel: Vec<_> = f.input_files().into_iter().map(|(r, _)| r).collect();
    assert_eq!(rel, ["common/a.conf", "common/b.conf", "x86_64/base.conf"]);
    // The merged seed round-trips quoting and "not set".
    let merged = f.merged();
    assert!(merged.contains("CONFIG_S=\"a \\\"q\\\" b\"\n"), "{merged}");
    assert!(merged.contains("# CONFIG_OFF is not set\n"), "{merged}");
}

#[test]
fn the_module_flavour_may_change_common_options_but_not_contradict_itself() {
    let dir = tree();
    write(
        dir.path(),
        "modules/modules.conf",
        "CONFIG_OFF=y\nCONFIG_DUMMY=m\nCONFIG_A=y\n",
    );
    let plain = Fragments::load(dir.path(), "x86_64", false).unwrap();
    assert_eq!(plain.request("CONFIG_OFF").unwrap().value, ConfigValue::No);
    assert!(plain.request("CONFIG_DUMMY").is_none());
    let modules = Fragments::load_flavour(dir.path(), "x86_64", false, true).unwrap();
    let off = modules.request("CONFIG_OFF").unwrap();
    assert_eq!(off.value, ConfigValue::Yes);
    // The place that decides is the one named when the check fails.
    assert_eq!(
        (off.origin.file.as_str(), off.origin.line),
        ("modules/modules.conf", 1)
    );
    assert_eq!(
        modules.request("CONFIG_DUMMY").unwrap().value,
        ConfigValue::Module
    );
    // Asking again for what common/ asked keeps common's place.
    assert_eq!(
        modules.request("CONFIG_A").unwrap().origin.file,
        "common/a.conf"
    );
    assert!(modules.merged().contains("CONFIG_OFF=y\n"));
    assert!(!modules.merged().contains("# CONFIG_OFF is not set"));

    // Within modules/, a contradiction is still an error naming both,
    // also for an option that modules/ first asked to keep as it was.
    write(dir.path(), "modules/zz.conf", "# CONFIG_DUMMY is not set\n");
    let err = Fragments::load_flavour(dir.path(), "x86_64", false, true).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("modules/modules.conf:2") && text.contains("modules/zz.conf:1"),
        "{text}"
    );
    write(dir.path(), "modules/zz.conf", "# CONFIG_A is not set\n");
    let err = Fragments::load_flavour(dir.path(), "x86_64", false, true).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("modules/modules.conf:3") && text.contains("modules/zz.conf:1"),
        "{text}"
    );
    // A flavour asked for without its directory is named.
    let bare = tree();
    let err = Fragments::load_flavour(bare.path(), "x86_64", false, true).unwrap_err();
    assert!(err.to_string().contains("modules"), "{err}");
}

#[test]
fn debug_fragments_only_when_asked_and_whitelist_is_an_input() {
    let dir = tree();
    write(dir.path(), "debug/debug.conf", "CONFIG_DEBUG_KERNEL=y\n");
    write(
        dir.path(),
        "whitelist.conf",
        "# may be missing\nCONFIG_GONE\n",
    );
    let plain = Fragments::load(dir.path(), "x86_64", false).unwrap();
    assert!(plain.request("CONFIG_DEBUG_KERNEL").is_none());
    let debug = Fragments::load(dir.path(), "x86_64", true).unwrap();
    assert!(debug.request("CONFIG_DEBUG_KERNEL").is_some());
    assert!(debug.is_whitelisted("CONFIG_GONE"));
    let rel: Vec<_> = debug.input_files().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        rel,
        [
            "common/a.conf",
            "common/b.conf",
            "x86_64/base.conf",
            "debug/debug.conf",
            "whitelist.conf"
        ]
    );
}

#[test]
fn broken_lines_name_file_line_and_problem() {
    let cases = [
        ("CONFIG_X\n", "expected `CONFIG_NAME=value`"),
        ("CONFIG_X=yes\n", "value `yes` is not y, m, n"),
        ("CONFIG_X=\n", "missing value"),
        ("CONFIG_X=\"open\n", "missing its closing quote"),
        ("CONFIG_X = y\n", "no spaces around `=`"),
        ("FOO=y\n", "must start with CONFIG_"),
        ("CONFIG_A-B=y\n", "may only contain"),
    ];
    for (text, problem) in cases {
        let dir = tree();
        write(dir.path(), "common/c.conf", &format!("# ok\n{text}"));
        let err = load_err(dir.path());
        let msg = err.to_string();
        assert!(matches!(err, Error::Syntax { .. }), "{text:?}: {msg}");
        assert!(err.is_bad_input());
        assert!(msg.starts_with("common/c.conf:2: "), "{text:?}: {msg}");
        assert!(msg.contains(problem), "{text:?}: {msg}");
    }
}

#[test]
fn conflicting_values_name_both_places() {
    let dir = tree();
    write(dir.path(), "x86_64/zz.conf", "\n# CONFIG_A is not set\n");
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains("CONFIG_A"), "{msg}");
    assert!(msg.contains("common/a.conf:3"), "{msg}");
    assert!(msg.contains("x86_64/zz.conf:2"), "{msg}");
}

#[test]
fn same_value_twice_is_allowed_and_keeps_first_origin() {
    let dir = tree();
    write(dir.path(), "x86_64/zz.conf", "CONFIG_A=y\n");
    let f = Fragments::load(dir.path(), "x86_64", false).unwrap();
    assert_eq!(f.request("CONFIG_A").unwrap().origin.file, "common/a.conf");
}

#[test]
fn missing_arch_dir_and_bad_whitelist_are_input_errors() {
    let dir = tree();
    let err = Fragments::load(dir.path(), "arm64", false).unwrap_err();
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("arm64"), "{err}");

    write(dir.path(), "whitelist.conf", "CONFIG_OK\nCONFIG_BAD=y\n");
    let msg = load_err(dir.path()).to_string();
    assert!(msg.starts_with("whitelist.conf:2: "), "{msg}");
}

#[test]
fn check_config_reports_each_difference_with_origin() {
    let dir = tree();
    write(dir.path(), "whitelist.conf", "CONFIG_B\nCONFIG_NR\n");
    let f = Fragments::load(dir.path(), "x86_64", false).unwrap();
    let config = dir.path().join(".config");
    // A ok; OFF absent (fine for n); B absent (whitelisted); NR wrong value
    // (whitelisted but present, so still a failure); S ok; H absent.
    fs::write(
        &config,
        "CONFIG_A=y\nCONFIG_NR=64\nCONFIG_S=\"a \\\"q\\\" b\"\n",
    )
    .unwrap();
    let missing = check_config(&config, &f).unwrap();
    let summary: Vec<_> = missing
        .iter()
        .map(|m| (m.name.as_str(), m.is_tolerated()))
        .collect();
    assert_eq!(
        summary,
        [
            ("CONFIG_B", true),
            ("CONFIG_NR", false),
            ("CONFIG_H", false)
        ]
    );
    let nr = missing[1].to_string();
    assert!(
        nr.contains("wanted 240, got 64") && nr.contains("x86_64/base.conf:1"),
        "{nr}"
    );
    let h = missing[2].to_string();
    assert!(
        h.contains("absent from .config") && h.contains("x86_64/base.conf:3"),
        "{h}"
    );
}

#[test]
fn patches_are_listed_in_name_order_and_series_must_exist() {
    let dir = tree();
    write(dir.path(), "patches/6.1/README.md", "order by name\n");
    write(dir.path(), "patches/6.1/0002-b.patch", "");
    write(dir.path(), "patches/6.1/0001-a.patch", "");
    let p = Patches::load(dir.path(), "6.1").unwrap();
    let rel: Vec<_> = p.input_files().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        rel,
        ["patches/6.1/0001-a.patch", "patches/6.1/0002-b.patch"]
    );
    let err = Patches::load(dir.path(), "6.2").unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("6.2"),
        "{err}"
    );
}

#[test]
fn project_fragments_parse_and_never_ask_for_modules() {
    let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernel-configs");
    for debug in [false, true] {
        let f = Fragments::load(&configs, "x86_64", debug).unwrap();
        assert_eq!(
            f.request("CONFIG_MODULES").map(|r| &r.value),
            Some(&ConfigValue::No)
        );
        let modular: Vec<_> = f
            .requests()
            .iter()
            .filter(|r| r.value == ConfigValue::Module)
            .collect();
        assert!(modular.is_empty(), "=m with MODULES off: {modular:?}");
    }
    Patches::load(&configs, "6.1").unwrap();
}
