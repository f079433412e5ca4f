//! `test e2e --template`: the run's sandboxes start from a VM template
//! (`[factory] enable_template`). [`Factory`] makes the template with the
//! built `kata-runtime factory init` before any sandbox starts and destroys
//! it at the end; the `t-*` scenarios check what templating promises:
//! every sandbox of the run's configuration was cloned, clones share no
//! writable state, each gets its own clock and random seed, and a missing or
//! damaged template costs a boot, not a failure.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use xtask::context::Ctx;

use super::bounded::{run_bounded, Outcome};
use super::scenarios::{kill_and_delete, Runner};
use super::{sandbox_footprint, E2eEnv, KATA_CONF_ENV};

/// A template guest boots under TCG on a loaded 2-core machine.
const FACTORY_TIMEOUT: Duration = Duration::from_secs(240);
/// How old the template must be before a clone's clock is compared with
/// the host's: a clone that kept the template's clock is then this far
/// behind, well outside the tolerance.
const MIN_TEMPLATE_AGE: Duration = Duration::from_secs(8);
/// A clone's clock may differ from the host's by this much (set by the
/// runtime before the container starts; `date` reads whole seconds).
const CLOCK_TOLERANCE_SECS: i64 = 3;

/// The run's template_path: on /run (a tmpfs, as upstream's), unique per run.
pub(crate) fn template_dir() -> PathBuf {
    PathBuf::from(format!("/run/kata-e2e-template-{}", std::process::id()))
}

/// The run's template, made by `kata-runtime factory init`; dropping it
/// destroys the template (and unmounts its tmpfs) if a scenario did not.
pub(crate) struct Factory {
    kata_runtime: PathBuf,
    config: PathBuf,
    pub(super) dir: PathBuf,
    created_unix: u64,
    destroyed: Cell<bool>,
}

impl Factory {
    pub(crate) fn init(ctx: &Ctx, env: &E2eEnv, dir: &Path, config: &Path) -> Result<Factory> {
        let shim = env
            .shim
            .as_ref()
            .context("--template needs the kata shim")?;
        let kata_runtime = shim.with_file_name("kata-runtime");
        if !kata_runtime.is_file() {
            bail!(
                "{} is missing beside the shim: --template needs the runtime-bins step's kata-runtime",
                kata_runtime.display()
            );
        }
        let mut factory = Factory {
            kata_runtime,
            config: config.to_owned(),
            dir: dir.to_owned(),
            created_unix: 0,
            destroyed: Cell::new(false),
        };
        let out = factory.run(&["factory", "init", "--json"])?;
        let out = out.require_success()?;
        let meta: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("factory init --json printed {:?}", out.stdout))?;
        factory.created_unix = meta["created_unix"].as_u64().context("created_unix")?;
        ctx.ui.info(&format!(
            "test e2e --template: template in {}: guest up in {} ms, saved in {} ms, state {} bytes",
            dir.display(),
            meta["boot_ms"],
            meta["save_ms"],
            meta["state_bytes"]
        ));
        // Bad input: a second init is refused, naming the fix, and the
        // template stays usable.
        let again = factory.run(&["factory", "init"])?;
        if again.success()
            || !again.stderr.contains("already exists")
            || !again.stderr.contains("factory destroy")
        {
            bail!(
                "a second `factory init` must fail saying a template exists: {}",
                again.describe()
            );
        }
        factory.run(&["factory", "status"])?.require_success()?;
        Ok(factory)
    }

    fn run(&self, args: &[&str]) -> Result<Outcome> {
        let mut cmd = Command::new(&self.kata_runtime);
        cmd.args(args).env(KATA_CONF_ENV, &self.config);
        run_bounded(cmd, None, FACTORY_TIMEOUT)
    }

    fn mounted(&self) -> bool {
        super::host::mount_points().contains(&self.dir)
    }

    /// `factory destroy`, then nothing may be mounted or left at the path.
    fn destroy(&self) -> Result<String> {
        self.destroyed.set(true);
        let out = self.run(&["factory", "destroy"])?.require_success()?;
        if self.mounted() {
            bail!(
                "{} is still mounted after `factory destroy`",
                self.dir.display()
            );
        }
        if self.dir.exists() {
            bail!(
                "{} still exists after `factory destroy`",
                self.dir.display()
            );
        }
        Ok(out.stdout.trim().to_string())
    }
}

impl Drop for Factory {
    fn drop(&mut self) {
        if !self.destroyed.get() {
            let _ = self.run(&["factory", "destroy"]);
        }
        if self.mounted() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn exec(r: &Runner, id: &str, exec_id: &str, script: &str) -> Result<String> {
    let out = run_bounded(
        r.ctr().exec_command(id, exec_id, &["sh", "-c", script]),
        None,
        r.timeout,
    )?
    .require_success()?;
    Ok(out.stdout.trim().to_string())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Two sandboxes from the template: each QEMU restored the saved state
/// (`-incoming defer`, then QMP `migrate-incoming`), a file one writes to its guest memory (`/dev/shm`, a
/// tmpfs in the guest) is not in the other, their random generators differ
/// and their clocks are the host's, not the template's.
pub(super) fn scenario_clones(r: &mut Runner, ids: &[String], factory: &Factory) -> Result<String> {
    let age = Duration::from_secs(now_unix().saturating_sub(factory.created_unix));
    if age < MIN_TEMPLATE_AGE {
        std::thread::sleep(MIN_TEMPLATE_AGE - age);
    }
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    for id in [a, b] {
        r.run(id, &["-d"], &["sleep", "300"], None)?
            .require_success()?;
        r.ctr()
            .wait_task_status(id, "RUNNING", Duration::from_secs(60))?;
        let footprint = sandbox_footprint(id)?;
        let (qemu, _, _) = footprint
            .processes
            .iter()
            .find(|p| p.1 == "qemu-system-x86_64")
            .with_context(|| format!("no QEMU under the shim of {id}: {footprint:?}"))?;
        let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline"))?;
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmdline.contains("-incoming defer") || !cmdline.contains("memory-backend-file,id=mem,")
        {
            bail!("the QEMU of {id} was not started from the template: {cmdline}");
        }
    }
    exec(r, a, "write", "echo only-a > /dev/shm/written-in-a")?;
    let in_a = exec(
        r,
        a,
        "look-a",
        "cat /dev/shm/written-in-a 2>/dev/null || echo absent",
    )?;
    let in_b = exec(
        r,
        b,
        "look-b",
        "cat /dev/shm/written-in-a 2>/dev/null || echo absent",
    )?;
    if in_a != "only-a" || in_b != "absent" {
        bail!("guest memory is shared between clones: /dev/shm/written-in-a reads {in_a:?} in {a} and {in_b:?} in {b}");
    }
    let uuid_a = exec(r, a, "uuid-a", "cat /proc/sys/kernel/random/uuid")?;
    let uuid_b = exec(r, b, "uuid-b", "cat /proc/sys/kernel/random/uuid")?;
    if uuid_a == uuid_b || uuid_a.len() != 36 {
        bail!("the clones' random generators agree: {uuid_a:?} and {uuid_b:?}");
    }
    let mut clocks = Vec::new();
    for (id, exec_id) in [(a, "date-a"), (b, "date-b")] {
        let guest: i64 = exec(r, id, exec_id, "date +%s")?
            .parse()
            .context("date +%s in the guest")?;
        let host = now_unix() as i64;
        if (guest - host).abs() > CLOCK_TOLERANCE_SECS {
            bail!(
                "the clock of {id} is {}s off the host's (the template was saved {}s ago): SetGuestDateTime did not take",
                guest - host,
                host - factory.created_unix as i64
            );
        }
        clocks.push(guest - host);
    }
    kill_and_delete(r, a)?;
    kill_and_delete(r, b)?;
    Ok(format!(
        "both QEMUs restored the template (-incoming defer, RAM a copy of the template's); /dev/shm written in one is absent in the other; \
         uuids {uuid_a} / {uuid_b}; clocks {}s / {}s off the host with the template {}s old",
        clocks[0],
        clocks[1],
        now_unix().saturating_sub(factory.created_unix)
    ))
}

/// Every sandbox of the run that could use the template did: the only
/// boots are those whose configuration is another VM (the debug console's
/// kernel parameters, the verity image), each logged with that reason.
pub(super) fn scenario_every_sandbox_cloned(r: &mut Runner, _ids: &[String]) -> Result<String> {
    let log = std::fs::read_to_string(&r.env.containerd.log)?;
    // The shim's line once the agent serves: "(accel A, cloned from the
    // template in DIR)" or "(accel A, booted)".
    let cloned = log.matches("cloned from the template in").count();
    let booted = log.matches(", booted)").count();
    let fallbacks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the template cannot be used"))
        .collect();
    let unexpected: Vec<&&str> = fallbacks
        .iter()
        .filter(|l| !l.contains("was made for another VM"))
        .collect();
    if !unexpected.is_empty() {
        bail!(
            "{} sandboxes fell back to a boot for a reason other than another VM configuration:\n{}",
            unexpected.len(),
            unexpected.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
        );
    }
    // A fallback may end in a failed boot (s-verity's tampered image), so
    // there can be more fallbacks than boots, never fewer.
    if booted > fallbacks.len() {
        bail!(
            "{booted} sandboxes booted, but only {} fallbacks from the template were logged: a boot went unexplained",
            fallbacks.len()
        );
    }
    if cloned == 0 {
        bail!("no sandbox was cloned from the template");
    }
    Ok(format!(
        "{cloned} sandboxes cloned from the template; {} booted because their configuration is another VM",
        fallbacks.len()
    ))
}

/// A damaged template, then none: a sandbox still starts (booted), and the
/// log says why; `factory destroy` leaves nothing mounted.
pub(super) fn scenario_no_template(
    r: &mut Runner,
    ids: &[String],
    factory: &Factory,
) -> Result<String> {
    let id = ids[0].as_str();
    let log_len =
        |r: &Runner| std::fs::metadata(&r.env.containerd.log).map_or(0, |m| m.len() as usize);
    // Damage the saved state in place, keeping its size (which the runtime
    // checks): its header, so that QEMU refuses the stream. (Damage further
    // in may hit a ROM's bytes, which QEMU cannot tell from good ones.)
    let state = factory.dir.join(runtime::hypervisor::template::STATE_FILE);
    let mut bytes = std::fs::read(&state)?;
    for b in bytes.iter_mut().take(8) {
        *b ^= 0x5a;
    }
    std::fs::write(&state, &bytes)?;
    let before = log_len(r);
    r.run(id, &["--rm"], &["true"], None)?.require_success()?;
    let log = std::fs::read_to_string(&r.env.containerd.log)?;
    let damaged: Vec<&str> = log[before.min(log.len())..]
        .lines()
        .filter(|l| l.contains("the template cannot be used"))
        .collect();
    if damaged.is_empty() {
        bail!("a damaged template went unnoticed: no fallback logged");
    }

    let destroyed = factory.destroy()?;
    let status = factory.run(&["factory", "status"])?;
    if status.success() || !status.stdout.contains("no VM template") {
        bail!(
            "`factory status` without a template must fail saying so: {}",
            status.describe()
        );
    }
    let before = log_len(r);
    r.run(id, &["--rm"], &["true"], None)?.require_success()?;
    let log = std::fs::read_to_string(&r.env.containerd.log)?;
    let missing = log[before.min(log.len())..]
        .lines()
        .find(|l| l.contains("the template cannot be used") && l.contains("no VM template"))
        .context(
            "without a template the sandbox started, but the log does not say why it booted",
        )?;
    Ok(format!(
        "damaged state: started booted ({}); destroy: {destroyed:?}, nothing mounted; \
         no template: started booted ({})",
        damaged[0].trim(),
        missing.trim()
    ))
}
