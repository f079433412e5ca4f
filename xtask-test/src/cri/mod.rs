//! `cargo xtask test cri [--scenario NAME]... [--handler kata|runc]...
//! [--keep] [--json]`: pods through containerd's CRI plugin and CNI, inside
//! a network namespace the test makes.
//!
//! The e2e harness's pieces do the work (`e2e/containerd.rs`: the private
//! containerd, its leftover scan; `e2e/oci_image.rs`: images written
//! locally; `e2e/bounded.rs`: bounded commands); this module adds the CRI
//! side:
//! - `netns.rs`: the node's network namespace `kata-cri-<pid>` and the CNI
//!   bridge network. containerd is started inside it (a `setns` before
//!   exec), so the bridge, the veths and every pod address exist only
//!   there; the host's interfaces, routes and iptables are never touched.
//!   The namespace is deleted at the end, also after failures.
//! - `client.rs`: a blocking CRI (`runtime.v1`) client, k8s-cri's tonic
//!   stubs over containerd's unix socket.
//! - `scenarios.rs`: the scenarios, run once per runtime handler: `kata`
//!   (the built `containerd-shim-kata-v2` with the harness's
//!   configuration.toml, `internetworking_model = "tcfilter"`) and `runc`
//!   as a control of the harness itself (the scenarios marked so).
//!   `scenarios/three_pods.rs` runs three kata pods at once;
//!   `scenarios/bad_input.rs` hands the runtime broken pod networks.
//! - `fixture.rs`: the CNI plugin `kata-cri-fixture` the bad-input
//!   scenarios chain after the bridge: this very binary, run through a link
//!   of that name in the test's own CNI bin dir (beside links to Debian's
//!   plugins), dispatched on argv[0] in `main`.
//!
//! Images are local: a pause image (busybox running a shell that sleeps
//! until SIGTERM) named as the CRI plugin's `sandbox_image`, and the e2e
//! busybox image, both imported into containerd's `k8s.io` namespace; no
//! registry is ever asked.
//!
//! `--json` prints one object: each scenario's name (`HANDLER/NAME`),
//! result (pass or fail), duration and what it saw or why it failed, with
//! tails of the containerd (and so shim) log. Human output goes to stderr.
//!
//! For `bench start` this module exposes [`CriEnv::start`] and
//! [`time_pod_start`] (RunPodSandbox until the first container runs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::e2e::containerd::{
    ContainerdSetup, CriPlugin, PrivateContainerd, CNI_BIN_DIR, KATA_HANDLER, RUNC_HANDLER,
};
use crate::e2e::oci_image::{image_busybox, import_image, write_oci_archive, OciImage};
use crate::e2e::{kata_configuration, shim_binary, IMAGE_BASE_NAME};
use crate::e2e::{KATA_RUNTIME, SHIM_BINARY};
use crate::vmtest::{self, Media};
use xtask::context::Ctx;
use xtask::error::InputError;

mod client;
pub mod fixture;
mod netns;
mod scenarios;

use client::CriClient;
use netns::{cni_conflist, TestNetns};
pub use scenarios::time_pod_start;
use scenarios::{CriRunner, Scenario, ScenarioResult, SCENARIOS};

/// containerd's namespace for everything CRI does.
pub const CRI_NAMESPACE: &str = "k8s.io";
pub const PAUSE_IMAGE_BASE_NAME: &str = "localhost/kata-cri-pause";
/// The pause process: PID 1 of the sandbox container, which must end on
/// SIGTERM (StopPodSandbox) rather than wait for the SIGKILL.
const PAUSE_COMMAND: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done",
];
/// Debian's containernetworking-plugins the conflist uses.
const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];
/// The test network's conflist; a bad-input scenario puts its own in
/// front of it for a while.
const CNI_CONF_FILE: &str = "10-kata-cri.conflist";
/// A call that boots a VM on TCG on a loaded 2-core machine.
const KATA_SLOW_CALL: Duration = Duration::from_secs(240);
const RUNC_SLOW_CALL: Duration = Duration::from_secs(60);

#[derive(Args, Clone)]
pub struct CriArgs {
    /// Run only this scenario (repeatable): pod-ready, exec-sync, localhost,
    /// pod-ip-in-guest, network, hostname-dns, oom-killed, update-resources,
    /// unknown-sandbox, teardown, three-pods, netns-missing,
    /// non-veth-interface, no-cni-addresses; or HANDLER/NAME for one handler only
    /// (runc/NAME also runs a scenario that is not a runc control). Default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Run only this runtime handler (repeatable): kata, runc. Default both
    /// (runc runs the scenarios that check the harness itself).
    #[arg(long = "handler", value_name = "HANDLER")]
    pub handlers: Vec<String>,
    /// Use this containerd-shim-kata-v2 instead of building it with cargo.
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,
    /// Keep the temp dir (containerd root, state, configs, pod logs).
    /// Processes, mounts and the network namespace are removed regardless.
    #[arg(long)]
    pub keep: bool,
    #[arg(long, default_value = "minimal")]
    pub recipe: String,
}

/// What `test all` and `bench start` use: clap's defaults.
impl Default for CriArgs {
    fn default() -> Self {
        CriArgs {
            scenarios: Vec::new(),
            handlers: Vec::new(),
            shim: None,
            keep: false,
            recipe: "minimal".into(),
        }
    }
}

/// Which (handler, scenario) pairs run, in order; bad names are input errors.
fn plan(args: &CriArgs) -> Result<Vec<(&'static str, &'static Scenario)>> {
    let handlers: Vec<&'static str> = if args.handlers.is_empty() {
        vec![KATA_HANDLER, RUNC_HANDLER]
    } else {
        let mut hs = Vec::new();
        for h in &args.handlers {
            match h.as_str() {
                KATA_HANDLER => hs.push(KATA_HANDLER),
                RUNC_HANDLER => hs.push(RUNC_HANDLER),
                other => {
                    return Err(InputError::new(format!(
                        "--handler {other}: unknown; use {KATA_HANDLER} or {RUNC_HANDLER}"
                    ))
                    .into())
                }
            }
        }
        hs
    };
    for wanted in &args.scenarios {
        let name = wanted.rsplit('/').next().unwrap_or(wanted);
        let handler_ok = match wanted.split_once('/') {
            Some((h, _)) => h == KATA_HANDLER || h == RUNC_HANDLER,
            None => true,
        };
        if !handler_ok || !SCENARIOS.iter().any(|s| s.name == name) {
            let names: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
            return Err(InputError::new(format!(
                "--scenario {wanted}: unknown; use one of {} (optionally as kata/NAME or runc/NAME)",
                names.join(", ")
            ))
            .into());
        }
    }
    let mut out = Vec::new();
    for h in handlers {
        for s in SCENARIOS {
            let named = args
                .scenarios
                .iter()
                .any(|w| *w == format!("{h}/{}", s.name));
            // runc runs the controls; another scenario only when named
            // as runc/NAME (to check the scenario itself).
            if h == RUNC_HANDLER && !s.runc_control && !named {
                continue;
            }
            let picked =
                args.scenarios.is_empty() || named || args.scenarios.iter().any(|w| w == s.name);
            if picked {
                out.push((h, s));
            }
        }
    }
    if out.is_empty() {
        return Err(InputError::new(
            "--scenario/--handler select nothing (runc runs only the control scenarios: pod-ready, exec-sync, network, teardown, unknown-sandbox)",
        )
        .into());
    }
    Ok(out)
}

/// Everything one run owns. Field order is drop order: the pods go through
/// CRI first (in `Drop`), then containerd stops and cleans up, then the
/// network namespace is deleted.
pub struct CriEnv {
    pub client: CriClient,
    pub containerd: PrivateContainerd,
    pub netns: TestNetns,
    pub image: OciImage,
    pub pause: OciImage,
    pub kata_config: Option<PathBuf>,
    /// Pod sandboxes this run created and has not removed.
    pub pods: std::cell::RefCell<Vec<String>>,
    /// Where pods' container logs go (under the temp dir).
    pub pod_logs: PathBuf,
    /// host-local's reservations (one file per pod address).
    pub ipam_dir: PathBuf,
    /// containerd's CNI config dir (the first conflist is the network; its
    /// bin dir holds links to Debian's plugins and to the fixture plugin).
    pub cni_conf_dir: PathBuf,
}

impl Drop for CriEnv {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *self.pods.borrow_mut());
        for pod in pods {
            let _ = self.client.stop_pod_sandbox(&pod);
            let _ = self.client.remove_pod_sandbox(&pod);
        }
    }
}

fn check_host() -> Result<()> {
    for p in CNI_PLUGINS {
        let path = Path::new(CNI_BIN_DIR).join(p);
        if !path.is_file() {
            bail!("{} is missing: apt-get install containernetworking-plugins (or `cargo xtask doctor --install`)", path.display());
        }
    }
    for tool in ["ip", "tc"] {
        if xtask::tools::which(tool).is_none() {
            bail!("{tool} is not installed: apt-get install iproute2");
        }
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("test cri needs root (network namespaces, containerd, QEMU)");
    }
    Ok(())
}

/// What runs the `kata` handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KataHandler {
    /// This checkout's shim (or `--shim`) and guest, with the harness's
    /// configuration.toml, named by the handler's `ConfigPath` only.
    Built,
    /// The release's .deb installed on this host (`test e2e --install-deb`):
    /// the shim containerd finds on its PATH and the `kata` runtime table of
    /// the package's containerd snippet, wired in as its comment tells an
    /// administrator to; its `ConfigPath` names the package's configuration,
    /// which the shim reads ahead of `KATA_CONF_FILE` and /etc.
    Installed,
}

/// The `kata` runtime table of a shipped containerd snippet (upstream's
/// `containerd-kata.toml` equivalent): checked to be containerd's config
/// version 2 naming this runtime's shim.
pub fn shipped_kata_runtime(snippet: &str) -> Result<toml::Table> {
    let doc: toml::Table = toml::from_str(snippet).context("not valid TOML")?;
    if doc.get("version").and_then(toml::Value::as_integer) != Some(2) {
        bail!("`version = 2` missing: containerd 1.6 reads version 2 configs only");
    }
    let kata = [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
        KATA_HANDLER,
    ]
    .iter()
    .try_fold(&doc, |t, k| t.get(*k).and_then(toml::Value::as_table))
    .with_context(|| {
        format!(
            "no [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{KATA_HANDLER}] table"
        )
    })?;
    let runtime_type = kata.get("runtime_type").and_then(toml::Value::as_str);
    if runtime_type != Some(KATA_RUNTIME) {
        bail!("runtimes.{KATA_HANDLER}.runtime_type is {runtime_type:?}, not {KATA_RUNTIME:?}");
    }
    Ok(kata.clone())
}

impl CriEnv {
    /// Builds what is needed (the shim and guest when `kata`), creates the
    /// netns, starts containerd with CRI in it and imports the images.
    pub fn start(ctx: &Ctx, args: &CriArgs, kata: bool) -> Result<CriEnv> {
        CriEnv::start_with(ctx, args, kata.then_some(KataHandler::Built))
    }

    /// [`CriEnv::start`] with the `kata` handler run by `kata` (none: runc
    /// only).
    pub fn start_with(ctx: &Ctx, args: &CriArgs, kata: Option<KataHandler>) -> Result<CriEnv> {
        check_host()?;
        // Built before anything starts: a build failure leaves nothing behind.
        let kata_parts = if kata == Some(KataHandler::Built) {
            let shim = shim_binary(ctx, args.shim.as_deref())?;
            let guest = vmtest::prepare(ctx, Media::Initrd, &args.recipe)?;
            Some((shim, kata_configuration(&guest, None)?))
        } else {
            None
        };
        let shipped_kata_runtime = if kata == Some(KataHandler::Installed) {
            Some(installed_kata_runtime()?)
        } else {
            None
        };
        let logs = ctx.logs();
        std::fs::create_dir_all(&logs)?;
        let temp = PrivateContainerd::temp_dir()?;
        let dir = temp.path().to_path_buf();
        let busybox = image_busybox(ctx)?;
        let image_work = dir.join("images");
        let (busybox_work, pause_work) = (image_work.join("busybox"), image_work.join("pause"));
        std::fs::create_dir_all(&busybox_work)?;
        std::fs::create_dir_all(&pause_work)?;
        let image = write_oci_archive(
            &busybox,
            &busybox_work,
            ctx.epoch,
            IMAGE_BASE_NAME,
            &["/bin/sh"],
        )?;
        let pause = write_oci_archive(
            &busybox,
            &pause_work,
            ctx.epoch,
            PAUSE_IMAGE_BASE_NAME,
            PAUSE_COMMAND,
        )?;
        let cni_conf_dir = dir.join("cni");
        let ipam_dir = dir.join("cni-ipam");
        std::fs::create_dir_all(&cni_conf_dir)?;
        std::fs::create_dir_all(&ipam_dir)?;
        std::fs::write(cni_conf_dir.join(CNI_CONF_FILE), cni_conflist(&ipam_dir))?;
        let cni_bin_dir = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin_dir)?;
        for p in CNI_PLUGINS {
            let (target, link) = (Path::new(CNI_BIN_DIR).join(p), cni_bin_dir.join(p));
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("link {} to {}", link.display(), target.display()))?;
        }
        let me = std::env::current_exe().context("find the xtask-test binary")?;
        std::os::unix::fs::symlink(&me, cni_bin_dir.join(fixture::PLUGIN))
            .with_context(|| format!("link {} into {}", me.display(), cni_bin_dir.display()))?;
        let pod_logs = dir.join("pod-logs");
        std::fs::create_dir_all(&pod_logs)?;

        let env = vec![("RUST_LOG".to_string(), "debug".to_string())];
        let (shim, kata_config) = match kata_parts {
            Some((shim, text)) => {
                let p = dir.join("configuration.toml");
                std::fs::write(&p, text)?;
                std::fs::copy(&p, logs.join("cri-configuration.toml"))?;
                // No KATA_CONF_FILE: as under a distro's containerd, the
                // shim finds its configuration only through the handler's
                // runtime option ConfigPath (there is none in /etc or the
                // prefix on a test host), so the CRI runs prove it is read.
                (Some(shim), Some(p))
            }
            None => (None, None),
        };
        let netns = TestNetns::create(&format!("kata-cri-{}", std::process::id()))?;
        let setup = ContainerdSetup {
            namespace: CRI_NAMESPACE.into(),
            cri: Some(CriPlugin {
                sandbox_image: pause.name.clone(),
                cni_conf_dir: cni_conf_dir.clone(),
                cni_bin_dir,
                kata_config: kata_config.clone(),
                shipped_kata_runtime,
            }),
            netns: Some(netns.path.clone()),
        };
        let containerd = PrivateContainerd::start(
            temp,
            &logs.join("cri-containerd.log"),
            shim.as_deref(),
            &env,
            args.keep,
            setup,
        )?;
        std::fs::copy(&containerd.layout.config, logs.join("cri-containerd.toml"))?;
        if kata == Some(KataHandler::Installed) {
            check_installed_shim(&containerd)?;
        }
        import_image(&containerd, &image)?;
        import_image(&containerd, &pause)?;
        let slow = if kata.is_some() {
            KATA_SLOW_CALL
        } else {
            RUNC_SLOW_CALL
        };
        let client = CriClient::connect(&containerd.layout.address, slow)?;
        let version = client.version()?;
        if version.runtime_api_version != "v1" {
            bail!(
                "containerd's CRI answers runtime API {:?}, not v1 (runtime {} {})",
                version.runtime_api_version,
                version.runtime_name,
                version.runtime_version
            );
        }
        // The CRI plugin learns of `ctr images import` through events.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for img in [&image.name, &pause.name] {
            while !client.image_present(img)? {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "CRI ImageStatus does not see {img} 30 s after its import into {CRI_NAMESPACE}; containerd log:\n{}",
                        containerd.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(CriEnv {
            client,
            containerd,
            netns,
            image,
            pause,
            kata_config,
            pods: Default::default(),
            pod_logs,
            ipam_dir,
            cni_conf_dir,
        })
    }
}

/// The installed package's containerd snippet, its `kata` table.
fn installed_kata_runtime() -> Result<toml::Table> {
    let prefix = Path::new(xtask::release::PREFIX);
    let snippet = prefix.join(packaging::layout::CONTAINERD_SNIPPET_PATH);
    let text = std::fs::read_to_string(&snippet)
        .with_context(|| format!("the installed package has no {}", snippet.display()))?;
    shipped_kata_runtime(&text).with_context(|| format!("{}", snippet.display()))
}

/// The shim containerd will run for the `kata` handler is the package's
/// (`/usr/bin/containerd-shim-kata-v2`, a link into the prefix), not one
/// that happens to come first on PATH.
fn check_installed_shim(containerd: &PrivateContainerd) -> Result<()> {
    let prefix = Path::new(xtask::release::PREFIX);
    let packaged = prefix.join("bin").join(SHIM_BINARY);
    let found = containerd.program_on_path(SHIM_BINARY).with_context(|| {
        format!("no {SHIM_BINARY} on containerd's PATH: the package must put it there (/usr/bin)")
    })?;
    let target = std::fs::canonicalize(&found)?;
    if target != std::fs::canonicalize(&packaged)? {
        bail!(
            "containerd would run {} ({}) for the kata handler, not the package's {}: remove it from PATH",
            found.display(),
            target.display(),
            packaged.display()
        );
    }
    Ok(())
}

/// What one run of CRI scenarios found.
#[derive(serde::Serialize)]
pub struct CriReport {
    pub containerd_log: String,
    pub netns: String,
    pub scenarios: Vec<ScenarioResult>,
    pub passed: usize,
    pub failed: Vec<String>,
}

/// Runs `plan` in `env`, one runner per handler in turn.
fn run_plan(
    ctx: &Ctx,
    env: &CriEnv,
    plan: &[(&'static str, &'static Scenario)],
) -> Vec<ScenarioResult> {
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut current: Option<CriRunner> = None;
    for (handler, scenario) in plan {
        if current.as_ref().map(|r| r.handler) != Some(*handler) {
            if let Some(r) = current.take() {
                r.finish();
            }
            current = Some(CriRunner::new(ctx, env, handler));
        }
        let r = current.as_mut().expect("set above");
        results.push(r.run(scenario));
    }
    if let Some(r) = current.take() {
        r.finish();
    }
    results
}

/// The `kata` scenarios against the release's .deb installed on this host
/// (`test e2e --install-deb` calls it between `dpkg -i` and the purge):
/// containerd's CRI runs the package's shim from PATH with the package's
/// configuration and containerd snippet.
pub fn run_installed(ctx: &Ctx) -> Result<CriReport> {
    let args = CriArgs {
        handlers: vec![KATA_HANDLER.into()],
        ..Default::default()
    };
    let plan = plan(&args)?;
    let env = CriEnv::start_with(ctx, &args, Some(KataHandler::Installed))?;
    ctx.ui.info(&format!(
        "test e2e --install-deb: CRI scenarios through containerd {} in netns {}, kata handler from {}",
        env.containerd.layout.address.display(),
        env.netns.name,
        Path::new(xtask::release::PREFIX)
            .join(packaging::layout::CONTAINERD_SNIPPET_PATH)
            .display()
    ));
    let scenarios = run_plan(ctx, &env, &plan);
    let report = CriReport {
        containerd_log: ctx.rel(&env.containerd.log),
        netns: env.netns.name.clone(),
        failed: scenarios
            .iter()
            .filter(|s| !s.passed)
            .map(|s| s.name.clone())
            .collect(),
        passed: scenarios.iter().filter(|s| s.passed).count(),
        scenarios,
    };
    drop(env);
    Ok(report)
}

pub fn run(ctx: &Ctx, args: &CriArgs) -> Result<()> {
    let plan = plan(args)?;
    let kata = plan.iter().any(|(h, _)| *h == KATA_HANDLER);
    if ctx.dry_run {
        let names: Vec<String> = plan
            .iter()
            .map(|(h, s)| format!("{h}/{}", s.name))
            .collect();
        ctx.ui.info(&format!(
            "test cri plan: {}; write the pause and busybox OCI images; ip netns add kata-cri-PID; \
             start a private containerd with CRI inside it (log {}); scenarios {}",
            if kata {
                "build (or take from the cache) the release's shim, the kernel and guest, write configuration.toml"
            } else {
                "no shim (runc only)"
            },
            ctx.rel(&ctx.logs().join("cri-containerd.log")),
            names.join(", ")
        ));
        return Ok(());
    }
    let env = CriEnv::start(ctx, args, kata)?;
    ctx.ui.info(&format!(
        "test cri: containerd {} (pid {}) in netns {}, images {} and {} (sandbox image)",
        env.containerd.layout.address.display(),
        env.containerd.pid.get(),
        env.netns.name,
        env.image.name,
        env.pause.name,
    ));
    let results = run_plan(ctx, &env, &plan);
    let failed: Vec<&str> = results
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.name.as_str())
        .collect();
    let passed = results.len() - failed.len();
    if ctx.json {
        ctx.print_json(&json!({
            "containerd_log": ctx.rel(&env.containerd.log),
            "kata_config": env.kata_config.as_ref().map(|_| ctx.rel(&ctx.logs().join("cri-configuration.toml"))),
            "netns": env.netns.name,
            "image": &env.image,
            "sandbox_image": &env.pause,
            "scenarios": &results,
            "passed": passed,
            "failed": failed.len(),
        }))?;
    }
    drop(env);
    ctx.ui.info(&format!(
        "test cri: {passed} passed, {} failed",
        failed.len()
    ));
    if !failed.is_empty() {
        bail!("test cri failed: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{plan, shipped_kata_runtime, CriArgs};

    #[test]
    fn the_shipped_snippet_gives_the_kata_runtime_table() {
        let snippet = packaging::layout::containerd_snippet("/opt/kata");
        let kata = shipped_kata_runtime(&snippet).unwrap();
        assert_eq!(kata["runtime_type"].as_str(), Some("io.containerd.kata.v2"));
        assert_eq!(
            kata["options"]["ConfigPath"].as_str(),
            Some("/opt/kata/share/defaults/kata-containers/configuration.toml")
        );
        let e = shipped_kata_runtime(&snippet.replace("version = 2", "version = 1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version = 2"), "{e}");
        let e = shipped_kata_runtime(&snippet.replace("runtimes.kata", "runtimes.other"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("runtimes.kata] table"), "{e}");
        let e = shipped_kata_runtime(
            &snippet.replace("io.containerd.kata.v2", "io.containerd.runc.v2"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("runtime_type"), "{e}");
    }

    fn names(args: &CriArgs) -> Vec<String> {
        plan(args)
            .unwrap()
            .iter()
            .map(|(h, s)| format!("{h}/{}", s.name))
            .collect()
    }

    #[test]
    fn default_args_are_the_command_lines() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            cri: CriArgs,
        }
        let parsed = Cli::parse_from(["cri"]).cri;
        let default = CriArgs::default();
        assert_eq!(parsed.recipe, default.recipe);
        assert_eq!(parsed.scenarios, default.scenarios);
        assert_eq!(parsed.handlers, default.handlers);
        assert_eq!(parsed.keep, default.keep);
        assert_eq!(parsed.shim, default.shim);
    }

    #[test]
    fn plan_runs_kata_then_the_runc_controls() {
        let all = names(&CriArgs::default());
        assert_eq!(all.first().map(String::as_str), Some("kata/pod-ready"));
        assert!(all.contains(&"runc/network".to_string()));
        assert!(!all.contains(&"runc/oom-killed".to_string()));
        let kata_end = all.iter().rposition(|n| n.starts_with("kata/")).unwrap();
        let runc_start = all.iter().position(|n| n.starts_with("runc/")).unwrap();
        assert!(kata_end < runc_start, "{all:?}");
    }

    #[test]
    fn plan_picks_scenarios_and_handlers() {
        let args = CriArgs {
            scenarios: vec!["exec-sync".into(), "kata/teardown".into()],
            ..Default::default()
        };
        assert_eq!(
            names(&args),
            ["kata/exec-sync", "kata/teardown", "runc/exec-sync"]
        );
        let args = CriArgs {
            scenarios: vec!["oom-killed".into()],
            handlers: vec!["runc".into()],
            ..Default::default()
        };
        assert!(plan(&args).is_err(), "runc has no oom-killed control");
        let args = CriArgs {
            scenarios: vec!["runc/oom-killed".into()],
            handlers: vec!["runc".into()],
            ..Default::default()
        };
        assert_eq!(names(&args), ["runc/oom-killed"], "named explicitly");
        let args = CriArgs {
            scenarios: vec!["nope".into()],
            ..Default::default()
        };
        let e = plan(&args).err().unwrap().to_string();
        assert!(e.contains("--scenario nope: unknown"), "{e}");
    }
}
