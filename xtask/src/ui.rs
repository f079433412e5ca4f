//! What the user sees: human output on stderr (so `--json` keeps stdout for
//! exactly one JSON object), spinners for long steps, `-v` detail.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone)]
pub struct Ui {
    verbose: bool,
    quiet: bool,
}

impl Ui {
    pub fn new(verbose: bool) -> Self {
        Ui {
            verbose,
            quiet: false,
        }
    }

    /// For tests: prints nothing.
    #[cfg(test)]
    pub fn quiet() -> Self {
        Ui {
            verbose: false,
            quiet: true,
        }
    }

    pub fn is_verbose(&self) -> bool {
        self.verbose && !self.quiet
    }

    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    pub fn verbose(&self, msg: &str) {
        if self.verbose && !self.quiet {
            eprintln!("  {msg}");
        }
    }

    /// A spinner for a step that takes a while; hidden when stderr is not a
    /// terminal (CI logs get the start and end lines only).
    pub fn step(&self, what: &str) -> StepProgress {
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("valid template"),
            );
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        };
        bar.set_message(what.to_string());
        if bar.is_hidden() && !self.quiet {
            eprintln!("{what} ...");
        }
        StepProgress {
            bar,
            what: what.to_string(),
            start: Instant::now(),
            quiet: self.quiet,
        }
    }
}

pub struct StepProgress {
    bar: ProgressBar,
    what: String,
    start: Instant,
    quiet: bool,
}

impl StepProgress {
    pub fn finish(self, outcome: &str) -> Duration {
        let took = self.start.elapsed();
        self.bar.finish_and_clear();
        if !self.quiet {
            eprintln!("{}: {outcome} ({:.1}s)", self.what, took.as_secs_f64());
        }
        took
    }
}

impl Drop for StepProgress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}
