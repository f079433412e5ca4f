//! `kata-cri-fixture`: a CNI plugin that is this binary itself (run through
//! a link of that name in the test's own CNI bin dir), chained after the
//! real bridge plugin to hand the runtime a bad pod network on purpose.
//! Its network config says what to break (`mode`):
//! - `remove-netns`: unmount and remove the pod's netns file (CNI_NETNS,
//!   and only if it lies directly in `netnsDir`, containerd's own netns
//!   dir), so that the runtime is given a path that no longer exists;
//! - `macvlan-interface`: add a `macvlan` interface on the pod's veth
//!   (CNI_IFNAME), with an address, in the pod netns (only there) and
//!   report it (`dummy` would do as well, but kernels without its module
//!   refuse it; macvlan is more common);
//! - `no-addresses`: report the bridge's result without any address.
//!
//! Every call is appended to `recordFile` (`COMMAND CONTAINERID NETNS`), so
//! the test knows the sandbox id and that the fixture ran at all. DEL and
//! CHECK do nothing (the bridge plugin, after it, undoes its own work; the
//! macvlan goes with the netns). Only the test runs it; nothing outside the
//! pod netns containerd made inside the test's namespace is touched.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::e2e::bounded::run_bounded;

/// The plugin's `type`, and the name of its link in the CNI bin dir.
pub const PLUGIN: &str = "kata-cri-fixture";
/// The interface `macvlan-interface` adds, and its address (outside the
/// pod subnet, so that it is not mistaken for the pod's own).
pub const EXTRA_NAME: &str = "kcri-mv0";
pub const EXTRA_ADDRESS: &str = "10.214.9.2/24";
const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    RemoveNetns,
    MacvlanInterface,
    NoAddresses,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::RemoveNetns => "remove-netns",
            Mode::MacvlanInterface => "macvlan-interface",
            Mode::NoAddresses => "no-addresses",
        }
    }

    fn parse(s: &str) -> Result<Mode> {
        [Mode::RemoveNetns, Mode::MacvlanInterface, Mode::NoAddresses]
            .into_iter()
            .find(|m| m.name() == s)
            .with_context(|| {
                format!("mode {s:?}: use remove-netns, macvlan-interface or no-addresses")
            })
    }
}

/// One invocation: the CNI environment and the network config on stdin.
#[derive(Debug)]
pub struct Request {
    pub command: String,
    pub container_id: String,
    pub netns: PathBuf,
    /// The pod's interface the bridge plugin made (CNI_IFNAME).
    pub ifname: String,
    pub mode: Mode,
    pub netns_dir: PathBuf,
    pub record: PathBuf,
    pub cni_version: String,
    pub prev_result: Option<Value>,
}

/// Whether this process was started as the fixture plugin (argv[0]).
pub fn invoked_as_fixture() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == PLUGIN))
        .unwrap_or(false)
}

/// The plugin's entry point: the CNI result or error on stdout.
pub fn main() -> ExitCode {
    let mut stdin = String::new();
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let outcome = std::io::stdin()
        .read_to_string(&mut stdin)
        .context("read the network config from stdin")
        .and_then(|_| {
            if env("CNI_COMMAND") == "VERSION" {
                return Ok(Some(json!({
                    "cniVersion": "1.0.0",
                    "supportedVersions": SUPPORTED,
                })));
            }
            let req = parse_request(&env, &stdin)?;
            handle(&req)
        });
    let mut out = std::io::stdout();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                out,
                "{}",
                json!({"cniVersion": "1.0.0", "code": 999, "msg": format!("{PLUGIN}: {e:#}")})
            );
            ExitCode::from(1)
        }
    }
}

/// The request from the CNI environment (`env`) and the config text.
pub fn parse_request(env: &dyn Fn(&str) -> String, config: &str) -> Result<Request> {
    let conf: Value = serde_json::from_str(config).context("network config is not JSON")?;
    let field = |k: &str| {
        conf[k]
            .as_str()
            .map(String::from)
            .with_context(|| format!("network config has no string {k:?}"))
    };
    let command = env("CNI_COMMAND");
    if command.is_empty() {
        bail!("CNI_COMMAND is not set");
    }
    Ok(Request {
        container_id: env("CNI_CONTAINERID"),
        netns: PathBuf::from(env("CNI_NETNS")),
        ifname: env("CNI_IFNAME"),
        command,
        mode: Mode::parse(&field("mode")?)?,
        netns_dir: PathBuf::from(field("netnsDir")?),
        record: PathBuf::from(field("recordFile")?),
        cni_version: field("cniVersion")?,
        prev_result: conf.get("prevResult").cloned(),
    })
}

/// The calls the fixture recorded: (command, container id, netns).
pub fn read_record(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some((
                w.next()?.to_string(),
                w.next()?.to_string(),
                w.next().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

fn handle(req: &Request) -> Result<Option<Value>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&req.record)
        .with_context(|| format!("open {}", req.record.display()))?;
    writeln!(
        f,
        "{} {} {}",
        req.command,
        req.container_id,
        req.netns.display()
    )?;
    if req.command != "ADD" {
        return Ok(None);
    }
    let prev = req
        .prev_result
        .clone()
        .context("ADD without prevResult: chain this plugin after bridge")?;
    match req.mode {
        Mode::RemoveNetns => {
            check_netns_is_containerds(&req.netns, &req.netns_dir)?;
            nix::mount::umount2(&req.netns, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmount {}", req.netns.display()))?;
            std::fs::remove_file(&req.netns)
                .with_context(|| format!("remove {}", req.netns.display()))?;
            Ok(Some(with_version(prev, &req.cni_version)))
        }
        Mode::MacvlanInterface => {
            check_netns_is_containerds(&req.netns, &req.netns_dir)?;
            let ns = format!("--net={}", req.netns.display());
            if req.ifname.is_empty() {
                bail!("CNI_IFNAME is not set");
            }
            for args in [
                vec![
                    "ip",
                    "link",
                    "add",
                    "link",
                    req.ifname.as_str(),
                    "name",
                    EXTRA_NAME,
                    "type",
                    "macvlan",
                    "mode",
                    "bridge",
                ],
                vec!["ip", "addr", "add", EXTRA_ADDRESS, "dev", EXTRA_NAME],
                vec!["ip", "link", "set", EXTRA_NAME, "up"],
            ] {
                let mut cmd = Command::new("nsenter");
                cmd.arg(&ns).args(&args);
                run_bounded(cmd, None, Duration::from_secs(20))?
                    .require_success()
                    .with_context(|| format!("in {}: {}", req.netns.display(), args.join(" ")))?;
            }
            Ok(Some(with_extra(
                with_version(prev, &req.cni_version),
                &req.netns,
            )))
        }
        Mode::NoAddresses => Ok(Some(without_addresses(with_version(
            prev,
            &req.cni_version,
        )))),
    }
}

/// Refuses any netns path but a `cni-*` file directly in `dir`.
pub fn check_netns_is_containerds(netns: &Path, dir: &Path) -> Result<()> {
    let name_ok = netns
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("cni-"));
    if !name_ok || netns.parent() != Some(dir) {
        bail!(
            "CNI_NETNS {} is not a cni-* file in {}: refusing to touch it",
            netns.display(),
            dir.display()
        );
    }
    Ok(())
}

fn with_version(mut result: Value, version: &str) -> Value {
    result["cniVersion"] = json!(version);
    result
}

/// The result with the macvlan interface and its address added.
pub fn with_extra(mut result: Value, netns: &Path) -> Value {
    let interfaces = result["interfaces"].as_array().cloned().unwrap_or_default();
    let index = interfaces.len();
    let mut interfaces = interfaces;
    interfaces.push(json!({"name": EXTRA_NAME, "sandbox": netns.display().to_string()}));
    result["interfaces"] = json!(interfaces);
    let mut ips = result["ips"].as_array().cloned().unwrap_or_default();
    ips.push(json!({"address": EXTRA_ADDRESS, "interface": index}));
    result["ips"] = json!(ips);
    result
}

/// The result without addresses (and so without the routes through them).
pub fn without_addresses(mut result: Value) -> Value {
    if let Some(o) = result.as_object_mut() {
        o.remove("ips");
        o.remove("routes");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &'static str) -> impl Fn(&str) -> String {
        move |k: &str| {
            match k {
                "CNI_COMMAND" => command,
                "CNI_CONTAINERID" => "abc",
                "CNI_NETNS" => "/tmp/s/netns/cni-1",
                "CNI_IFNAME" => "eth0",
                _ => "",
            }
            .to_string()
        }
    }

    const CONF: &str = r#"{"cniVersion": "1.0.0", "name": "n", "type": "kata-cri-fixture",
        "mode": "no-addresses", "netnsDir": "/tmp/s/netns", "recordFile": "/tmp/r",
        "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                       "ips": [{"address": "10.214.0.2/24", "interface": 0}],
                       "routes": [{"dst": "0.0.0.0/0"}]}}"#;

    #[test]
    fn a_request_is_parsed_from_env_and_config() {
        let r = parse_request(&env("ADD"), CONF).unwrap();
        assert_eq!(r.command, "ADD");
        assert_eq!(r.container_id, "abc");
        assert_eq!(r.netns, Path::new("/tmp/s/netns/cni-1"));
        assert_eq!(r.ifname, "eth0");
        assert_eq!(r.mode, Mode::NoAddresses);
        assert_eq!(r.netns_dir, Path::new("/tmp/s/netns"));
        assert_eq!(r.record, Path::new("/tmp/r"));
        assert!(r.prev_result.is_some());
        assert!(parse_request(&env(""), CONF).is_err(), "no CNI_COMMAND");
        let bad = CONF.replace("no-addresses", "explode");
        let e = parse_request(&env("ADD"), &bad).unwrap_err().to_string();
        assert!(e.contains("explode"), "{e}");
    }

    #[test]
    fn argv0_names_the_plugin() {
        // The test binary's own argv[0] is not the fixture.
        assert!(!invoked_as_fixture());
    }

    #[test]
    fn results_are_altered_as_the_mode_says() {
        let prev = parse_request(&env("ADD"), CONF)
            .unwrap()
            .prev_result
            .unwrap();
        let none = without_addresses(prev.clone());
        assert!(none.get("ips").is_none() && none.get("routes").is_none());
        assert_eq!(none["interfaces"][0]["name"], "eth0");
        let extra = with_extra(prev, Path::new("/tmp/s/netns/cni-1"));
        assert_eq!(extra["interfaces"][1]["name"], EXTRA_NAME);
        assert_eq!(extra["interfaces"][1]["sandbox"], "/tmp/s/netns/cni-1");
        assert_eq!(extra["ips"][1]["address"], EXTRA_ADDRESS);
        assert_eq!(extra["ips"][1]["interface"], 1);
    }

    #[test]
    fn only_containerds_netns_files_are_touched() {
        let dir = Path::new("/tmp/s/netns");
        assert!(check_netns_is_containerds(Path::new("/tmp/s/netns/cni-1"), dir).is_ok());
        for bad in [
            "/run/netns/kata-cri-1",
            "/tmp/s/netns/other",
            "/tmp/s/netns/x/cni-1",
            "/proc/self/ns/net",
        ] {
            assert!(
                check_netns_is_containerds(Path::new(bad), dir).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_record_is_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r");
        std::fs::write(&p, "ADD abc /tmp/s/netns/cni-1\nDEL abc \n").unwrap();
        assert_eq!(
            read_record(&p),
            [
                ("ADD".into(), "abc".into(), "/tmp/s/netns/cni-1".into()),
                ("DEL".into(), "abc".into(), "".into())
            ]
        );
    }
}
