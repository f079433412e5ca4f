//! `cargo xtask agent`: the static, stripped, musl-linked `kata-agent`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::manifest::{Kind, Manifest};
use crate::plan::Plan;
use crate::tools::{run_logged, version_line};
use crate::{elf, publish};

const FORMAT: u32 = 1;
/// The cargo profile tuned for size (LTO, one codegen unit, panic=abort).
pub const PROFILE: &str = "agent";

pub struct AgentBuild {
    pub binary: PathBuf,
    pub key: String,
    pub version: String,
}

/// Everything the agent binary depends on. Path dependencies of the agent
/// (the protocols crate) are source inputs too.
pub fn inputs(ctx: &Ctx) -> Result<StepInputs> {
    let mut i = StepInputs::new("agent", FORMAT);
    i.tree("src.agent", &ctx.root.join("agent"))?
        .tree("src.protocols", &ctx.root.join("protocols"))?
        .file("Cargo.lock", &ctx.root.join("Cargo.lock"))?
        .file("Cargo.toml", &ctx.root.join("Cargo.toml"))?
        .value("rustc", version_line("rustc", "-vV")?)
        .value("target", &ctx.versions.rust.musl_target)
        .value("profile", PROFILE);
    Ok(i)
}

/// A target dir of its own: the agent build then never waits on (or holds)
/// the lock of a cargo that runs xtask or its tests.
pub fn agent_target_dir(ctx: &Ctx) -> std::path::PathBuf {
    ctx.root.join("target").join("agent")
}

pub fn build(ctx: &Ctx) -> Result<AgentBuild> {
    let inputs = inputs(ctx)?;
    let cache = ctx.cache()?;
    let target = ctx.versions.rust.musl_target.clone();
    let log = ctx.logs().join("agent.log");
    let progress = ctx.ui.step("agent");
    let entry = cache.step(&inputs, &ctx.ui, |out| {
        crate::tools::fresh_log(&log)?;
        // Paths of this clone and of the cargo home must not end up in the
        // binary, or two clones would build different agents.
        let cargo_home = std::env::var("CARGO_HOME")
            .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
        let flags = format!(
            "--remap-path-prefix={}=/kata --remap-path-prefix={cargo_home}=/cargo",
            ctx.root.display()
        );
        let env_name = format!(
            "CARGO_TARGET_{}_RUSTFLAGS",
            target.to_uppercase().replace('-', "_")
        );
        run_logged(
            Command::new("cargo")
                .args([
                    "build",
                    "--locked",
                    "-p",
                    "kata-agent",
                    "--target",
                    &target,
                    "--profile",
                    PROFILE,
                ])
                .env(env_name, flags)
                .env("CARGO_TARGET_DIR", agent_target_dir(ctx))
                .current_dir(&ctx.root),
            &log,
        )
        .context("building kata-agent (is the musl target installed? `cargo xtask doctor`)")?;
        let built = agent_target_dir(ctx)
            .join(&target)
            .join(PROFILE)
            .join("kata-agent");
        let facts = elf::inspect(&built)?;
        if facts.has_interpreter || facts.needed_libraries > 0 {
            bail!(
                "{} is not static (interpreter: {}, needed libraries: {})",
                built.display(),
                facts.has_interpreter,
                facts.needed_libraries
            );
        }
        std::fs::copy(&built, out.join("kata-agent"))?;
        publish::seal(&out.join("kata-agent"))
    })?;
    progress.finish(if entry.hit { "cached" } else { "built" });
    Ok(AgentBuild {
        binary: entry.dir.join("kata-agent"),
        key: entry.key,
        version: AGENT_VERSION.to_string(),
    })
}

/// The agent's version (Health.Version reports it): the workspace shares one
/// version, so xtask's own is the agent's.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut plan = Plan::default();
    plan.add(ctx, &inputs(ctx)?);
    if plan.show_if_dry_run(ctx)? {
        return Ok(());
    }
    ctx.ensure_dist_writable()?;
    let agent = build(ctx)?;
    let dest = publish::file(ctx, &agent.binary, "kata-agent")?;
    let art = publish::artifact(
        ctx,
        "kata-agent",
        Kind::Agent,
        &dest,
        &agent.binary,
        &agent.key,
        None,
    )?;
    Manifest::record(
        &ctx.dist(),
        &ctx.versions.version,
        ctx.epoch,
        vec![art.clone()],
    )?;
    ctx.ui.info(&format!(
        "agent: {} ({} bytes, static)",
        art.path, art.bytes
    ));
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&art)?)?;
    }
    Ok(())
}
