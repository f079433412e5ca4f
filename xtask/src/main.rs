//! `cargo xtask`: the build, release and test pipeline of this project.
//!
//! Data flows one way: `versions.yaml` + recipe -> plan (labelled step
//! inputs, hence cache keys) -> steps -> artifacts recorded in
//! `target/dist/manifest.json`. One module per task; external tools are only
//! ever invoked through `tools.rs`. `--dry-run` prints the plan of a command
//! without running any step.
//!
//! Exit status: 0 success, 1 the work failed, 2 bad usage or bad input.

mod agent;
mod bench;
mod bench_build;
mod bench_release;
mod bench_start;
mod bench_vm;
mod cache;
mod context;
mod doctor;
mod e2e;
mod elf;
mod error;
mod fetch;
mod hash;
mod image;
mod initrd;
mod kernel;
mod kernel_boot;
mod manifest;
mod plan;
mod publish;
mod release;
mod repro;
mod rootfs;
mod runtime_bins;
mod test_cmd;
mod tools;
mod ui;
mod versions;
mod vmtest;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use context::Ctx;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Build, release and test the Kata guest and runtime from pinned sources"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct GlobalOpts {
    /// The pin file.
    #[arg(long, global = true, value_name = "FILE")]
    versions: Option<PathBuf>,
    /// Where step results and verified downloads are kept [env: KATA_XTASK_CACHE_DIR] [default: target/cache]
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Where artifacts and manifest.json go [env: KATA_XTASK_DIST_DIR] [default: target/dist]
    #[arg(long, global = true, value_name = "DIR")]
    dist_dir: Option<PathBuf>,
    /// Use only cached inputs; never download.
    #[arg(long, global = true)]
    offline: bool,
    /// Say why each step ran and show tool output.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print the plan (steps, cache keys, hit or miss) and run nothing.
    #[arg(long, global = true)]
    dry_run: bool,
    /// Print exactly one JSON object on stdout (human output stays on stderr).
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check host tools, targets and helpers; print the command fixing each gap.
    Doctor {
        /// Run those commands (apt-get, rustup, cargo install).
        #[arg(long)]
        install: bool,
    },
    /// Validate versions.yaml and print the resolved pins.
    Versions {
        /// Re-pin an entry to what its source serves now (kernel, busybox, vhost_device_vsock).
        #[arg(long, value_name = "NAME")]
        update: Option<String>,
        /// With --update: which source of the entry to re-pin.
        #[arg(long, value_enum, default_value = "debian", requires = "update")]
        source: versions_cmd::Source,
    },
    /// The guest kernel from pinned source and kernel-configs/ fragments.
    Kernel(kernel::KernelArgs),
    /// The static musl kata-agent.
    Agent,
    /// A rootfs tree from image-recipes/NAME.yaml.
    Rootfs {
        #[arg(long, default_value = "minimal")]
        recipe: String,
    },
    /// An initrd (cpio newc, compressed) from that rootfs.
    Initrd(initrd::InitrdArgs),
    /// A rootfs disk image (DAX header by default).
    Image(image::ImageArgs),
    /// Everything, plus the static tarball, .deb, .rpm, SHA256SUMS and SBOM.
    Release(release::ReleaseArgs),
    /// The tests: unit (cargo test), vm (boot and talk to the agent), all.
    Test(test_cmd::TestArgs),
    /// Benchmarks.
    Bench {
        #[arg(value_enum)]
        name: bench::BenchName,
    },
}

mod versions_cmd;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(error::exit_code(&e) as u8)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Doctor { install } => doctor_cmd(&ctx, install),
        Command::Versions { update, source } => versions_cmd::run(&ctx, update.as_deref(), source),
        Command::Kernel(args) => kernel::run(&ctx, &args),
        Command::Agent => agent::run(&ctx),
        Command::Rootfs { recipe } => rootfs::run(&ctx, &recipe),
        Command::Initrd(args) => initrd::run(&ctx, &args),
        Command::Image(args) => image::run(&ctx, &args),
        Command::Release(args) => release::run(&ctx, &args),
        Command::Test(args) => test_cmd::run(&ctx, &args),
        Command::Bench { name } => bench::run(&ctx, name),
    }
}

fn doctor_cmd(ctx: &Ctx, install: bool) -> Result<()> {
    if install && !ctx.dry_run {
        doctor::install(&ctx.versions, &ctx.ui)?;
    }
    let gaps = doctor::gaps(&ctx.versions);
    if ctx.json {
        ctx.print_json(&serde_json::json!({ "ok": gaps.is_empty(), "gaps": gaps }))?;
    }
    if gaps.is_empty() {
        ctx.ui
            .info("doctor: this host has everything the pipeline needs");
        return Ok(());
    }
    for g in &gaps {
        ctx.ui.info(&format!(
            "missing: {} ({}), for {}\n    fix: {}",
            g.what, g.problem, g.needed_for, g.fix
        ));
    }
    if install && ctx.dry_run {
        ctx.ui.info("--dry-run: nothing installed");
    }
    anyhow::bail!(
        "{} host requirement(s) missing; `cargo xtask doctor --install` installs them",
        gaps.len()
    )
}
