//! Agent configuration: kernel command line (`agent.*` keys) plus environment
//! overrides for running outside a VM (tests, development).

use std::path::{Path, PathBuf};

use log::LevelFilter;

/// Where the agent listens unless told otherwise: any CID, port 1024.
pub const DEFAULT_SERVER_ADDR: &str = "vsock://-1:1024";
/// The kernel command line of the running system.
pub const DEFAULT_CMDLINE_PATH: &str = "/proc/cmdline";

/// Environment overrides (all optional).
pub const ENV_CMDLINE: &str = "KATA_AGENT_CMDLINE";
pub const ENV_SERVER_ADDR: &str = "KATA_AGENT_SERVER_ADDR";
pub const ENV_LOG_LEVEL: &str = "KATA_AGENT_LOG_LEVEL";
pub const ENV_RESOLV_CONF: &str = "KATA_AGENT_RESOLV_CONF";
pub const ENV_HOSTNAME_FILE: &str = "KATA_AGENT_HOSTNAME_FILE";
pub const ENV_SYSFS: &str = "KATA_AGENT_SYSFS";
pub const ENV_CONSOLE: &str = "KATA_AGENT_CONSOLE";
pub const ENV_RUN_DIR: &str = "KATA_AGENT_RUN_DIR";
/// Set to `1` by a guest's init system (the `init: systemd` recipe's
/// kata-agent.service): the agent is a service, but of a VM that exists
/// for it, so it owns the guest as init would.
pub const ENV_GUEST_SERVICE: &str = "KATA_AGENT_GUEST_SERVICE";
/// Upstream's directory of container bundles and the shared filesystem.
pub const DEFAULT_RUN_DIR: &str = "/run/kata-containers";
/// The console of init mode (logs, debug shell).
pub const DEFAULT_CONSOLE: &str = "/dev/console";

/// `agent.*` keys that upstream Kata defines but this agent does not act on:
/// they are accepted quietly (logged at debug) rather than warned about.
const KNOWN_IGNORED_KEYS: &[&str] = &[
    "agent.devmode",
    "agent.trace",
    "agent.hotplug_timeout",
    "agent.container_pipe_size",
    "agent.unified_cgroup_hierarchy",
    "agent.log_vport",
    "agent.passfd_listener_port",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub log_level: LevelFilter,
    /// `vsock://CID:PORT` (CID -1 = any) or `unix:///path` / `unix://@abstract`.
    pub server_addr: String,
    /// A root shell for debugging: on the console (respawned), or per
    /// connection on [`Config::debug_console_vport`].
    pub debug_console: bool,
    /// `agent.debug_console_vport=N`: with `debug_console`, serve the shell
    /// on AF_VSOCK port N (upstream's runtime uses 1026) instead of the
    /// console; 0 = not set.
    pub debug_console_vport: u32,
    /// PID 1 inside the VM: early mounts, console, power-off.
    pub init_mode: bool,
    /// The agent owns the guest: it sets the hostname, DNS, clock and
    /// network. True in init mode and as the service of a systemd guest
    /// ([`ENV_GUEST_SERVICE`]); false for an agent run on a host (tests),
    /// which must not change the host.
    pub owns_guest: bool,
    /// Where CreateSandbox writes the DNS lines instead of the guest's
    /// /etc/resolv.conf. `None` in init mode: /etc/resolv.conf (via a file on
    /// /run bind-mounted over it, the rootfs being read-only); `None` in
    /// service mode: not written.
    pub resolv_conf: Option<PathBuf>,
    /// Where CreateSandbox writes the hostname instead of calling
    /// sethostname(2); `None` with init mode sets the real hostname,
    /// `None` in service mode only records it.
    pub hostname_file: Option<PathBuf>,
    /// Root of sysfs (GetGuestDetails, OnlineCPUMem).
    pub sysfs_root: PathBuf,
    /// Console device of init mode (logs, debug shell).
    pub console: PathBuf,
    /// Container bundles, the shared filesystem mount and libcontainer's
    /// state (see [`crate::container`]).
    pub run_dir: PathBuf,
    /// Lines to log once the logger is up (config problems are never fatal).
    pub notes: Vec<(log::Level, String)>,
}

/// What the kernel command line says, before environment overrides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CmdlineSettings {
    pub log_level: Option<LevelFilter>,
    pub server_addr: Option<String>,
    pub debug_console: bool,
    pub debug_console_vport: u32,
    pub notes: Vec<(log::Level, String)>,
}

/// Splits a kernel command line into parameters; double quotes group words
/// (`key="a b"`) as the kernel does, and are removed.
pub fn split_cmdline(text: &str) -> Vec<String> {
    let mut params = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_token = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_token = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_token {
                    params.push(std::mem::take(&mut current));
                    has_token = false;
                }
            }
            c => {
                current.push(c);
                has_token = true;
            }
        }
    }
    if has_token {
        params.push(current);
    }
    params
}

pub fn parse_log_level(value: &str) -> Option<LevelFilter> {
    match value.trim().to_ascii_lowercase().as_str() {
        "trace" => Some(LevelFilter::Trace),
        "debug" => Some(LevelFilter::Debug),
        "info" => Some(LevelFilter::Info),
        "warn" | "warning" => Some(LevelFilter::Warn),
        // upstream's slog levels above error map onto error
        "error" | "critical" | "fatal" | "panic" => Some(LevelFilter::Error),
        "off" => Some(LevelFilter::Off),
        _ => None,
    }
}

/// Checks a server address; returns a reason when ttrpc could not bind it.
pub fn validate_server_addr(addr: &str) -> Result<(), String> {
    if let Some(rest) = addr.strip_prefix("vsock://") {
        let (cid, port) = rest.split_once(':').ok_or_else(|| {
            format!("{addr:?}: expected vsock://CID:PORT, e.g. {DEFAULT_SERVER_ADDR}")
        })?;
        if cid != "-1" && cid.parse::<u32>().is_err() {
            return Err(format!("{addr:?}: CID {cid:?} is not a number or -1"));
        }
        port.parse::<u32>()
            .map_err(|_| format!("{addr:?}: port {port:?} is not a number"))?;
        Ok(())
    } else if let Some(path) = addr.strip_prefix("unix://") {
        if path.is_empty() || path == "@" {
            Err(format!(
                "{addr:?}: empty unix socket path, e.g. unix:///run/kata-agent.sock"
            ))
        } else {
            Ok(())
        }
    } else {
        Err(format!(
            "{addr:?}: unsupported scheme, use vsock://CID:PORT or unix:///path"
        ))
    }
}

fn parse_bool_flag(key: &str, value: Option<&str>, notes: &mut Vec<(log::Level, String)>) -> bool {
    match value.map(|v| v.to_ascii_lowercase()) {
        None => true,
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => true,
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => false,
        Some(v) => {
            notes.push((
                log::Level::Warn,
                format!("kernel parameter {key}={v}: expected a boolean (true/false); ignored"),
            ));
            false
        }
    }
}

/// Reads the `agent.*` keys of a kernel command line. Never fails: bad values
/// and unknown keys become notes.
pub fn parse_cmdline(text: &str) -> CmdlineSettings {
    let mut settings = CmdlineSettings::default();
    for param in split_cmdline(text) {
        let (key, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param.as_str(), None),
        };
        if !key.starts_with("agent.") {
            continue;
        }
        match key {
            "agent.log" => match value.and_then(parse_log_level) {
                Some(level) => settings.log_level = Some(level),
                None => settings.notes.push((
                    log::Level::Warn,
                    format!("kernel parameter {param}: unknown log level, use one of trace, debug, info, warn, error; keeping the default"),
                )),
            },
            "agent.server_addr" => match value {
                Some(addr) => match validate_server_addr(addr) {
                    Ok(()) => settings.server_addr = Some(addr.to_string()),
                    Err(why) => settings.notes.push((
                        log::Level::Error,
                        format!("kernel parameter agent.server_addr={why}; using {DEFAULT_SERVER_ADDR}"),
                    )),
                },
                None => settings.notes.push((
                    log::Level::Warn,
                    "kernel parameter agent.server_addr needs a value (agent.server_addr=vsock://-1:1024); ignored".into(),
                )),
            },
            "agent.debug_console" => {
                settings.debug_console = parse_bool_flag(key, value, &mut settings.notes)
            }
            "agent.debug_console_vport" => match value.and_then(|v| v.parse::<u32>().ok()) {
                Some(port) if port > 0 => settings.debug_console_vport = port,
                _ => settings.notes.push((
                    log::Level::Warn,
                    format!("kernel parameter {param}: expected a vsock port > 0 (agent.debug_console_vport=1026); ignored"),
                )),
            },
            k if KNOWN_IGNORED_KEYS.contains(&k) => settings
                .notes
                .push((log::Level::Debug, format!("kernel parameter {param}: not used by this agent"))),
            _ => settings
                .notes
                .push((log::Level::Warn, format!("kernel parameter {param}: unknown agent option, ignored"))),
        }
    }
    settings
}

/// The console path: `KATA_AGENT_CONSOLE` or /dev/console. Needed before the
/// rest of the configuration (logs go there from the start).
pub fn console_path(env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    env(ENV_CONSOLE)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONSOLE))
}

impl Config {
    /// Builds the configuration from the kernel command line and the
    /// environment. `env` is a lookup so tests need not touch the process
    /// environment.
    pub fn load(init_mode: bool, env: &dyn Fn(&str) -> Option<String>) -> Config {
        let mut notes = Vec::new();
        let cmdline_path = env(ENV_CMDLINE).unwrap_or_else(|| DEFAULT_CMDLINE_PATH.into());
        let cmdline = match std::fs::read_to_string(&cmdline_path) {
            Ok(text) => text,
            Err(e) => {
                notes.push((
                    log::Level::Warn,
                    format!("cannot read kernel command line {cmdline_path}: {e}; using defaults"),
                ));
                String::new()
            }
        };
        let settings = parse_cmdline(&cmdline);
        notes.extend(settings.notes);

        let mut log_level = settings.log_level.unwrap_or(LevelFilter::Info);
        if let Some(v) = env(ENV_LOG_LEVEL) {
            match parse_log_level(&v) {
                Some(level) => log_level = level,
                None => notes.push((log::Level::Warn, format!("{ENV_LOG_LEVEL}={v}: unknown log level, use trace, debug, info, warn or error; ignored"))),
            }
        }

        let mut server_addr = settings
            .server_addr
            .unwrap_or_else(|| DEFAULT_SERVER_ADDR.into());
        if let Some(v) = env(ENV_SERVER_ADDR) {
            match validate_server_addr(&v) {
                Ok(()) => server_addr = v,
                Err(why) => notes.push((
                    log::Level::Error,
                    format!("{ENV_SERVER_ADDR}={why}; using {server_addr}"),
                )),
            }
        }

        let guest_service = match env(ENV_GUEST_SERVICE).as_deref() {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => {
                notes.push((
                    log::Level::Warn,
                    format!("{ENV_GUEST_SERVICE}={other}: use 1 or 0; taken as 0 (the host is left alone)"),
                ));
                false
            }
        };
        let resolv_conf = env(ENV_RESOLV_CONF).map(PathBuf::from);
        let hostname_file = env(ENV_HOSTNAME_FILE).map(PathBuf::from);
        let sysfs_root = env(ENV_SYSFS)
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new("/sys").into());

        Config {
            log_level,
            server_addr,
            debug_console: settings.debug_console,
            debug_console_vport: settings.debug_console_vport,
            init_mode,
            owns_guest: init_mode || guest_service,
            resolv_conf,
            hostname_file,
            sysfs_root,
            console: console_path(env),
            run_dir: env(ENV_RUN_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_with_quotes() {
        assert_eq!(
            split_cmdline("  a=1 b=\"x y\"\tc \n"),
            vec!["a=1".to_string(), "b=x y".into(), "c".into()]
        );
        assert_eq!(split_cmdline(""), Vec::<String>::new());
        assert_eq!(split_cmdline("e=\"\""), vec!["e=".to_string()]);
    }

    #[test]
    fn reads_agent_keys() {
        let s = parse_cmdline(
            "console=ttyS0 root=/dev/pmem0p1 agent.log=debug agent.server_addr=unix:///tmp/a.sock agent.debug_console quiet",
        );
        assert_eq!(s.log_level, Some(LevelFilter::Debug));
        assert_eq!(s.server_addr.as_deref(), Some("unix:///tmp/a.sock"));
        assert!(s.debug_console);
        assert_eq!(
            s.debug_console_vport, 0,
            "serial console unless a port is given"
        );
        assert!(s.notes.is_empty(), "{:?}", s.notes);
    }

    #[test]
    fn reads_the_debug_console_port() {
        // what the runtime appends with debug_console_enabled = true
        let s = parse_cmdline("quiet agent.debug_console agent.debug_console_vport=1026");
        assert!(s.debug_console);
        assert_eq!(s.debug_console_vport, 1026);
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        // the port alone does not enable the console
        let s = parse_cmdline("agent.debug_console_vport=1026");
        assert!(!s.debug_console);
        assert_eq!(s.debug_console_vport, 1026);
        for bad in ["0", "-1", "x", "", "4294967296"] {
            let s = parse_cmdline(&format!(
                "agent.debug_console agent.debug_console_vport={bad}"
            ));
            assert!(s.debug_console);
            assert_eq!(s.debug_console_vport, 0, "{bad:?}");
            assert!(
                s.notes.iter().any(|(l, m)| *l == log::Level::Warn
                    && m.contains(&format!(
                        "agent.debug_console_vport={bad}: expected a vsock port > 0"
                    ))),
                "{bad:?}: {:?}",
                s.notes
            );
        }
        let s = parse_cmdline("agent.debug_console_vport");
        assert_eq!(s.debug_console_vport, 0);
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_notes_not_errors() {
        let s = parse_cmdline("agent.log=loud agent.server_addr=tcp://1.2.3.4:5 agent.frobnicate=1 agent.devmode agent.debug_console=maybe");
        assert_eq!(s.log_level, None);
        assert_eq!(s.server_addr, None);
        assert!(!s.debug_console);
        let text: Vec<&str> = s.notes.iter().map(|(_, m)| m.as_str()).collect();
        assert!(
            text.iter().any(|m| m.contains("agent.log=loud")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|m| m.contains("unsupported scheme")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|m| m.contains("agent.frobnicate=1: unknown")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|m| m.contains("agent.debug_console=maybe")),
            "{text:?}"
        );
        assert_eq!(
            s.notes
                .iter()
                .filter(|(l, _)| *l == log::Level::Debug)
                .count(),
            1
        );
    }

    #[test]
    fn a_guest_service_owns_the_guest_and_a_host_agent_does_not() {
        let load = |init: bool, v: Option<&'static str>| {
            Config::load(init, &move |k: &str| match k {
                ENV_CMDLINE => Some("/nonexistent/cmdline".into()),
                ENV_GUEST_SERVICE => v.map(String::from),
                _ => None,
            })
        };
        assert!(load(true, None).owns_guest);
        assert!(!load(false, None).owns_guest);
        assert!(!load(false, Some("0")).owns_guest);
        let c = load(false, Some("1"));
        assert!(c.owns_guest && !c.init_mode);
        let c = load(false, Some("yes"));
        assert!(!c.owns_guest);
        assert!(
            c.notes
                .iter()
                .any(|(_, n)| n.contains("KATA_AGENT_GUEST_SERVICE=yes: use 1 or 0")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn validates_addresses() {
        assert!(validate_server_addr("vsock://-1:1024").is_ok());
        assert!(validate_server_addr("vsock://3:1024").is_ok());
        assert!(validate_server_addr("unix:///run/x.sock").is_ok());
        assert!(validate_server_addr("unix://@abstract").is_ok());
        assert!(validate_server_addr("vsock://-1").is_err());
        assert!(validate_server_addr("vsock://x:1").is_err());
        assert!(validate_server_addr("unix://").is_err());
        assert!(validate_server_addr("/run/x.sock").is_err());
    }

    #[test]
    fn environment_overrides_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let cmdline = dir.path().join("cmdline");
        std::fs::write(
            &cmdline,
            "agent.log=error agent.server_addr=vsock://-1:2000\n",
        )
        .unwrap();
        let cmdline_s = cmdline.to_str().unwrap().to_string();
        let env = move |k: &str| match k {
            ENV_CMDLINE => Some(cmdline_s.clone()),
            ENV_SERVER_ADDR => Some("unix:///tmp/t.sock".into()),
            _ => None,
        };
        let c = Config::load(false, &env);
        assert_eq!(c.log_level, LevelFilter::Error);
        assert_eq!(c.server_addr, "unix:///tmp/t.sock");
        assert_eq!(c.resolv_conf, None);
        let c = Config::load(true, &|k: &str| {
            if k == ENV_CMDLINE {
                Some("/nonexistent/cmdline".into())
            } else {
                None
            }
        });
        assert_eq!(c.server_addr, DEFAULT_SERVER_ADDR);
        assert_eq!(c.resolv_conf, None);
        assert_eq!(c.sysfs_root, Path::new("/sys"));
        assert!(c
            .notes
            .iter()
            .any(|(_, m)| m.contains("/nonexistent/cmdline")));
    }
}
