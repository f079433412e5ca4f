//! `cargo xtask agent`: the static, stripped, musl-linked `kata-agent`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};

use crate::cache::StepInputs;
use crate::context::Ctx;
use crate::error::InputError;
use crate::graph::{Graph, StepId};
use crate::manifest::Kind;
use crate::runtime_bins::{cargo_home, require_static, rustflags_env};
use crate::tools::run_logged;
use crate::{host_tools, publish};

const FORMAT: u32 = 1;
/// The cargo profile tuned for size (LTO, one codegen unit, panic=abort).
pub const PROFILE: &str = "agent";

pub struct AgentBuild {
    pub binary: PathBuf,
    pub key: String,
    pub version: String,
}

/// What the stripped agent may weigh (issue 13: "at most 4 MiB, whatever
/// the other open issues add"). A target, not a gate: `cargo xtask agent`
/// and `bench build` report the size against it.
pub const SIZE_BUDGET: u64 = 4 << 20;

/// `N bytes (P% of the 4 MiB budget)`.
pub fn describe_size(bytes: u64) -> String {
    format!(
        "{bytes} bytes ({:.1}% of the {} MiB budget{})",
        bytes as f64 * 100.0 / SIZE_BUDGET as f64,
        SIZE_BUDGET >> 20,
        if bytes > SIZE_BUDGET { ", OVER it" } else { "" }
    )
}

/// The binary's name in the step's entry (and in dist).
pub const BINARY: &str = "kata-agent";

/// A target dir of its own: the agent build then never waits on (or holds)
/// the lock of a cargo that runs xtask or its tests.
pub fn agent_target_dir(ctx: &Ctx) -> std::path::PathBuf {
    ctx.root.join("target").join("agent")
}

/// The `agent` step. Everything the binary depends on is an input; path
/// dependencies of the agent (the protocols and rtnl crates) are source inputs too.
pub fn add<'g>(g: &mut Graph<'g>, ctx: &'g Ctx) -> Result<StepId> {
    if let Some(id) = g.find("agent") {
        return Ok(id);
    }
    let d = &ctx.digests;
    if let Some(prebuilt) = &ctx.agent_bin {
        if !prebuilt.is_file() {
            return Err(InputError::new(format!(
                "--agent-bin {}: no such file; give a kata-agent built by `cargo xtask agent`",
                prebuilt.display()
            ))
            .into());
        }
        let mut i = StepInputs::new("agent-bin", FORMAT);
        i.file(d, "binary", prebuilt)?;
        return Ok(g.add("agent", i, &[], &[], move |_, out| {
            require_static(prebuilt)
                .with_context(|| format!("--agent-bin {}", prebuilt.display()))?;
            std::fs::copy(prebuilt, out.join(BINARY))
                .with_context(|| format!("--agent-bin {}: cannot copy", prebuilt.display()))?;
            Ok(())
        }));
    }
    let mut i = StepInputs::new("agent", FORMAT);
    i.tree(d, "src.agent", &ctx.root.join("agent"))?
        .tree(d, "src.protocols", &ctx.root.join("protocols"))?
        .tree(d, "src.rtnl", &ctx.root.join("rtnl"))?
        .file(d, "Cargo.lock", &ctx.root.join("Cargo.lock"))?
        .file(d, "Cargo.toml", &ctx.root.join("Cargo.toml"))?
        .value("rustc", d.tool_version("rustc", "-vV"))
        .value("target", &ctx.versions.rust.musl_target)
        .value("profile", PROFILE);
    Ok(
        g.add("agent", i, &[], &[host_tools::MUSL_GCC], move |_, out| {
            build_into(ctx, out)
        }),
    )
}

fn build_into(ctx: &Ctx, out: &std::path::Path) -> Result<()> {
    let target = &ctx.versions.rust.musl_target;
    let log = crate::tools::fresh_log(&ctx.logs().join("agent.log"))?;
    // Paths of this clone and of the cargo home must not end up in the
    // binary, or two clones would build different agents.
    let flags = format!(
        "--remap-path-prefix={}=/kata --remap-path-prefix={}=/cargo",
        ctx.root.display(),
        cargo_home()
    );
    run_logged(
        Command::new("cargo")
            .args([
                "build",
                "--locked",
                "-p",
                "kata-agent",
                "--target",
                target,
                "--profile",
                PROFILE,
            ])
            .env(rustflags_env(target), flags)
            .env("CARGO_TARGET_DIR", agent_target_dir(ctx))
            .current_dir(&ctx.root),
        &log,
    )
    .context("building kata-agent (is the musl target installed? `cargo xtask doctor`)")?;
    let built = agent_target_dir(ctx)
        .join(target)
        .join(PROFILE)
        .join(BINARY);
    require_static(&built)?;
    std::fs::copy(&built, out.join(BINARY))?;
    Ok(())
}

/// Builds (or takes from the cache) the agent alone.
pub fn build(ctx: &Ctx) -> Result<AgentBuild> {
    let entry = crate::graph::build_one(ctx, |g| add(g, ctx))?;
    Ok(AgentBuild {
        binary: entry.path(BINARY),
        key: entry.key.clone(),
        version: AGENT_VERSION.to_string(),
    })
}

/// The agent's version (Health.Version reports it): the workspace shares one
/// version, so xtask's own is the agent's.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut g = Graph::new();
    let id = add(&mut g, ctx)?;
    let Some(out) = g.run_command(ctx, id)? else {
        return Ok(());
    };
    let entry = out.entry(id);
    let dest = publish::file(ctx, &entry.path(BINARY), BINARY)?;
    let art = publish::artifact(ctx, BINARY, Kind::Agent, &dest, entry, BINARY, None)?;
    let detail = format!("{}, static", describe_size(art.bytes));
    publish::report_one(ctx, "agent", art, &detail)
}
