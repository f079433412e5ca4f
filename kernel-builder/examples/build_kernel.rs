//! Developer driver for the library without xtask's pins and cache:
//!   cargo run -p kernel-builder --example build_kernel -- \
//!       SRC_DIR BUILD_DIR CONFIGS_DIR [--debug] [--jobs N] [--config-only]

use std::path::PathBuf;
use std::process::ExitCode;

use kernel_builder::{build, configure, BuildOptions, Fragments};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let positional: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let jobs = args
        .iter()
        .position(|a| a == "--jobs")
        .and_then(|i| args.get(i + 1))
        .map(|j| j.parse().expect("--jobs takes a number"))
        .unwrap_or(2);
    let positional: Vec<&String> = positional
        .into_iter()
        .filter(|a| a.parse::<usize>().is_err())
        .collect();
    let [src, build_dir, configs] = positional[..] else {
        eprintln!("usage: build_kernel SRC_DIR BUILD_DIR CONFIGS_DIR [--debug] [--jobs N] [--config-only]");
        return ExitCode::from(2);
    };
    let (src, build_dir) = (PathBuf::from(src), PathBuf::from(build_dir));
    let debug = args.iter().any(|a| a == "--debug");
    let run = || -> kernel_builder::Result<()> {
        let fragments = Fragments::load(configs.as_ref(), "x86_64", debug)?;
        let report = configure(&src, &build_dir, &fragments, &mut std::io::stderr())?;
        for note in &report.whitelisted_missing {
            eprintln!("note: {note}");
        }
        eprintln!("configured: {}", report.config.display());
        if args.iter().any(|a| a == "--config-only") {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let outputs = build(
            &src,
            &build_dir,
            "x86_64",
            &BuildOptions {
                jobs,
                log_path: build_dir.join("build.log"),
                progress: true,
                source_date_epoch: 0,
            },
        )?;
        eprintln!(
            "built {} in {:.0?}: {outputs:#?}",
            outputs.version,
            started.elapsed()
        );
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(if e.is_bad_input() { 2 } else { 1 })
        }
    }
}
