//! `cargo xtask test [lint|unit|kernel|vm|rootless|fuzz|e2e|cri|soak|repro|all]`: the project's test command.
//!
//! `lint` is `cargo fmt --check` and clippy with warnings denied; `unit` is
//! `cargo test` over the workspace including the tests marked `#[ignore]`
//! (those that need the host: root, QEMU, apt-get and the network, the
//! kernel source...; plain `cargo test` stays hermetic), with the verified
//! kernel source and the pipeline's kernel handed to them; `kernel` boots
//! the pipeline's kernel to init; `vm` boots the built guest and drives the
//! agent (vmtest.rs); `rootless` builds the minimal guest as an
//! unprivileged user and compares it with root's (rootless.rs); `fuzz` sends random and malformed requests to the
//! agent in the built guest for a bounded time (fuzz.rs); `e2e` runs
//! containers through a private containerd (e2e/); `cri` runs pods through
//! containerd's CRI plugin and CNI in a test-made netns (cri/); `soak` runs many
//! sandboxes through one containerd and checks for leaks (soak.rs); `repro`
//! compares this checkout's release with one built in a clean clone
//! (repro.rs). `all` (the default, and what CI runs) runs each of them, lint
//! first, the VM test with the initrd and with the DAX image, 60 s of
//! fuzzing, e2e from the build (booted, and started from a VM template),
//! from the release tarball and (as root) from the installed .deb, and cri.

use std::process::Command;

use anyhow::{bail, Result};

use clap::{Args, Subcommand};
use xtask::tools::run_visible;

use xtask::context::Ctx;

#[derive(Args, Clone)]
pub struct TestArgs {
    #[command(subcommand)]
    pub what: Option<TestWhat>,
}

#[derive(Subcommand, Clone)]
pub enum TestWhat {
    /// cargo fmt --check and clippy (warnings are errors).
    Lint,
    /// cargo test over the workspace, the host-dependent (ignored) tests included.
    Unit,
    /// The pipeline's kernel boots to init in a project-made initrd.
    Kernel,
    /// Boot the built guest and drive the agent.
    Vm(crate::vmtest::VmArgs),
    /// Send random and malformed requests to the agent in the built guest.
    Fuzz(crate::fuzz::FuzzArgs),
    /// Run containers through a private containerd with the built shim.
    E2e(crate::e2e::E2eArgs),
    /// Pods through containerd's CRI plugin and CNI, inside a test-made netns.
    Cri(crate::cri::CriArgs),
    /// This checkout's release and a clean clone's give the same SHA256SUMS.
    Repro(crate::repro::ReproArgs),
    /// Many sandboxes through containerd, then no leaks (processes, mounts, fds, RSS).
    Soak(crate::soak::SoakArgs),
    /// The minimal guest's tree, initrds and image built by an unprivileged
    /// user are byte-identical to root's.
    Rootless,
    /// Everything CI runs (the default).
    All,
}

/// Where the kernel-builder tests find the pinned kernel source.
pub const KERNEL_TARBALL_ENV: &str = "KATA_KERNEL_TARBALL";
/// The kernel the runtime's VM tests boot.
pub const TEST_KERNEL_ENV: &str = "KATA_TEST_KERNEL";

/// Formatting and clippy over the workspace, exactly as a contributor runs
/// them before pushing.
pub fn lint(ctx: &Ctx) -> Result<()> {
    ctx.ui.info("test lint: cargo fmt --all --check");
    run_visible(
        Command::new("cargo")
            .args(["fmt", "--all", "--check"])
            .current_dir(&ctx.root),
    )?;
    ctx.ui
        .info("test lint: cargo clippy --workspace --all-targets --locked -- -D warnings");
    run_visible(
        Command::new("cargo")
            .args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--locked",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(&ctx.root),
    )
}

/// The one ignored test `unit` leaves out: it needs a whole release named by
/// KATA_REAL_SHIM, KATA_REAL_RUNTIME and KATA_REAL_DIST, which `unit` does
/// not build. The same lintian and rpm checks of a real release run in
/// xtask/tests/release.rs, which builds one.
const NEEDS_A_RELEASE: &str = "real_artifacts_pass_lintian_and_rpm";

pub fn unit(ctx: &Ctx) -> Result<()> {
    let tarball = ctx.debian_member("kernel", &ctx.versions.kernel.debian)?;
    // The runtime's real-QEMU tests boot the pipeline's own kernel.
    let kernel = xtask::kernel::build(ctx, &xtask::kernel::KernelArgs::default())?;
    // The runtime's VM tests find the vsock daemon on $PATH: put the
    // release's (patched) daemon first, ahead of any other installed one.
    let vsock = xtask::release::build_vsock(ctx)?;
    let path = std::env::join_paths(std::iter::once(vsock.path("")).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    ctx.ui
        .info("test unit: cargo test --workspace --locked -- --include-ignored");
    run_visible(
        Command::new("cargo")
            // --include-ignored: the tests that need this host (root, QEMU,
            // apt-get, the kernel source) are #[ignore]d so that plain
            // `cargo test` is hermetic; here, on a host `doctor` set up,
            // they run too.
            .args([
                "test",
                "--workspace",
                "--locked",
                "--",
                "--include-ignored",
                "--skip",
                NEEDS_A_RELEASE,
            ])
            .env(KERNEL_TARBALL_ENV, &tarball)
            .env(TEST_KERNEL_ENV, kernel.bzimage())
            .env("PATH", path)
            // The kernel tests reuse this run's cache (the kernel is in it).
            .env(xtask::context::CACHE_ENV, &ctx.cache_dir)
            .current_dir(&ctx.root),
    )
}

pub fn run(ctx: &Ctx, args: &TestArgs) -> Result<()> {
    match args.what.clone().unwrap_or(TestWhat::All) {
        TestWhat::Lint => lint(ctx),
        TestWhat::Unit => unit(ctx),
        TestWhat::Kernel => crate::kernel_boot::test(ctx),
        TestWhat::Vm(args) => crate::vmtest::run(ctx, &args),
        TestWhat::Fuzz(args) => crate::fuzz::run(ctx, &args),
        TestWhat::E2e(args) => crate::e2e::run(ctx, &args),
        TestWhat::Cri(args) => crate::cri::run(ctx, &args),
        TestWhat::Repro(args) => crate::repro::test(ctx, &args),
        TestWhat::Soak(args) => crate::soak::run(ctx, &args),
        TestWhat::Rootless => crate::rootless::test(ctx),
        TestWhat::All => all(ctx),
    }
}

/// CI's bounded soak: enough sandboxes past the warm-up for the fd and RSS
/// checks to mean something, few enough for the CI budget on TCG.
const CI_SOAK_COUNT: u32 = 20;

/// The scenarios CI runs on the released debian guest.
const DEBIAN_RELEASE_SCENARIOS: &[&str] = &[
    "a-kernel",
    "d-detached-exec-kill",
    "k-pod",
    "q-direct-volume",
    "e-no-leftovers",
];

/// Everything CI runs; ends with each stage's wall time (the CI budget is
/// judged from them) and one `N passed, N failed` line.
fn all(ctx: &Ctx) -> Result<()> {
    let mut stages: Vec<(String, bool, std::time::Duration)> = Vec::new();
    let started = std::time::Instant::now();
    let mut record = |name: &str, run: &dyn Fn() -> Result<()>| {
        let start = std::time::Instant::now();
        let result = run();
        let took = start.elapsed();
        if let Err(e) = &result {
            ctx.ui.info(&format!("FAIL {name}: {e:#}"));
        }
        ctx.ui.info(&format!(
            "test all: {name}: {} in {:.0} s",
            if result.is_ok() { "passed" } else { "FAILED" },
            took.as_secs_f64()
        ));
        stages.push((name.to_string(), result.is_ok(), took));
    };
    record("lint", &|| lint(ctx));
    record("unit", &|| unit(ctx));
    record("kernel boots to init", &|| crate::kernel_boot::test(ctx));
    let initrd = crate::vmtest::VmArgs {
        initrd: true,
        faults: true,
        recipe: "minimal".into(),
        ..Default::default()
    };
    record("vm --initrd --faults", &|| crate::vmtest::run(ctx, &initrd));
    let image = crate::vmtest::VmArgs {
        image: true,
        recipe: "minimal".into(),
        ..Default::default()
    };
    record("vm --image", &|| crate::vmtest::run(ctx, &image));
    // The measured root: boots through dm-verity, and a tampered copy and
    // a wrong root hash are refused.
    let verity = crate::vmtest::VmArgs {
        image: true,
        verity: true,
        recipe: "minimal".into(),
        ..Default::default()
    };
    record("vm --image --verity", &|| crate::vmtest::run(ctx, &verity));
    // The Debian guest: systemd is init and starts the agent as a service.
    let debian = crate::vmtest::VmArgs {
        image: true,
        recipe: "debian".into(),
        ..Default::default()
    };
    record("vm --image --recipe debian", &|| {
        crate::vmtest::run(ctx, &debian)
    });
    // The module flavour kernel with a guest that carries its modules: the
    // agent loads some with parameters at CreateSandbox.
    let modules = crate::vmtest::VmArgs {
        initrd: true,
        kernel_modules: true,
        recipe: "minimal".into(),
        ..Default::default()
    };
    record("vm --initrd --kernel-modules", &|| {
        crate::vmtest::run(ctx, &modules)
    });
    record("rootless", &|| crate::rootless::test(ctx));
    // Bounded: a fresh seed each run, printed for replay.
    let fuzz = crate::fuzz::FuzzArgs {
        seconds: 60,
        ..Default::default()
    };
    record("fuzz --seconds 60", &|| crate::fuzz::run(ctx, &fuzz));
    let e2e = crate::e2e::E2eArgs {
        faults: true,
        ..Default::default()
    };
    record("e2e --faults", &|| crate::e2e::run(ctx, &e2e));
    // The same scenarios with every sandbox started from a VM template,
    // then the template's own checks (t-*).
    let template = crate::e2e::E2eArgs {
        template: true,
        ..Default::default()
    };
    record("e2e --template", &|| crate::e2e::run(ctx, &template));
    record("cri", &|| {
        crate::cri::run(ctx, &crate::cri::CriArgs::default())
    });
    let soak = crate::soak::SoakArgs {
        count: CI_SOAK_COUNT,
        parallel: 3,
        keep: false,
    };
    record(&format!("soak --count {CI_SOAK_COUNT}"), &|| {
        crate::soak::run(ctx, &soak)
    });
    let from_release = crate::e2e::E2eArgs {
        from_release: true,
        ..Default::default()
    };
    record("e2e --from-release", &|| {
        crate::e2e::run(ctx, &from_release)
    });
    // The second guest as shipped: `release --recipes minimal,debian`, run
    // with its configuration-debian.toml (systemd guest, DAX image). A few
    // scenarios: booting, exec and kill, a pod, a hot-plugged volume; every
    // scenario passed on it by hand (README), but each sandbox takes about
    // 5 s more to boot than the minimal guest.
    let from_release_debian = crate::e2e::E2eArgs {
        from_release: true,
        recipe: "debian".into(),
        scenario: DEBIAN_RELEASE_SCENARIOS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..Default::default()
    };
    record("e2e --from-release --recipe debian", &|| {
        crate::e2e::run(ctx, &from_release_debian)
    });
    if nix::unistd::Uid::effective().is_root() {
        let deb = crate::e2e::E2eArgs {
            from_release: true,
            install_deb: true,
            ..Default::default()
        };
        record("e2e --from-release --install-deb", &|| {
            crate::e2e::run(ctx, &deb)
        });
    } else {
        ctx.ui
            .info("SKIP e2e --from-release --install-deb: dpkg -i into /opt/kata needs root");
    }
    record("release reproducible across clones", &|| {
        crate::repro::test(ctx, &crate::repro::ReproArgs::default())
    });
    ctx.ui.info("test all: wall time per stage");
    for (name, ok, took) in &stages {
        ctx.ui.info(&format!(
            "  {:>7.0} s  {}  {name}",
            took.as_secs_f64(),
            if *ok { "passed" } else { "FAILED" }
        ));
    }
    ctx.ui.info(&format!(
        "  {:>7.0} s  total",
        started.elapsed().as_secs_f64()
    ));
    let failed: Vec<&str> = stages
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(name, _, _)| name.as_str())
        .collect();
    let passed = stages.len() - failed.len();
    println!("test: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("failed: {}", failed.join(", "))
    }
}
