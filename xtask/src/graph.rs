//! The step graph: what a command builds, as one value.
//!
//! A command first adds its steps to a [`Graph`] (each module's `add`
//! function adds its step and, first, the steps it consumes), then hands it
//! to the one executor, [`Graph::run`]. `--dry-run` prints the plan of that
//! same graph ([`Graph::plan`]) instead of running it, so what is printed is
//! what runs.
//!
//! A step is an id, the ids it depends on, its labelled inputs (hence its
//! cache key; the keys of its dependencies are inputs too, added here), the
//! host tools it runs, and a build function that fills an empty dir from its
//! dependencies' entries. The executor decides what runs: a wanted step
//! whose entry is cached (and matches its seal) is used as is, and its
//! dependencies are not even looked at; a step that is not cached runs
//! after its dependencies. For each step that runs: check its tools, take
//! the entry's lock, build into a temp dir, seal, rename into place
//! (`Cache::build`), then check its source inputs did not change meanwhile.
//! One progress line per step.

use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::cache::{Entry, Lookup, StepInputs};
use crate::context::Ctx;
use crate::host_tools::{self, HostTool};

/// A step of one graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepId(usize);

type BuildFn<'g> = Box<dyn Fn(&Outputs, &Path) -> Result<()> + 'g>;

struct Step<'g> {
    id: String,
    inputs: StepInputs,
    deps: Vec<StepId>,
    tools: Vec<HostTool>,
    build: BuildFn<'g>,
}

/// Steps in the order they were added, which is a topological order: a
/// step can only depend on steps added before it.
#[derive(Default)]
pub struct Graph<'g> {
    steps: Vec<Step<'g>>,
}

/// The entries of the steps a run used, by step.
pub struct Outputs {
    entries: Vec<Option<Entry>>,
    /// Every step the run used, in the order it took them.
    pub timings: Vec<StepTiming>,
}

/// What one step cost a run (`release --json` reports these).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StepTiming {
    pub id: String,
    /// Taken from the cache (or built by a concurrent run meanwhile).
    pub cached: bool,
    /// Wall time of its build (0 when cached).
    pub seconds: f64,
}

impl Outputs {
    /// The entry of a step the run used. Asking for another is a bug in the
    /// graph (a build function reading a step it does not depend on).
    pub fn entry(&self, id: StepId) -> &Entry {
        self.entries[id.0]
            .as_ref()
            .expect("a step's dependencies are built before it")
    }

    pub fn path(&self, id: StepId, rel: &str) -> std::path::PathBuf {
        self.entry(id).path(rel)
    }
}

/// One step as `--dry-run` shows it.
#[derive(Debug, Serialize)]
pub struct Planned {
    pub id: String,
    pub deps: Vec<String>,
    pub cache_key: String,
    /// An entry exists: verified against its seal for a wanted step, only
    /// found for one the run does not need.
    pub cached: bool,
    /// The run builds it (not cached, and wanted).
    pub runs: bool,
    pub why: String,
    #[serde(skip)]
    corrupt: bool,
}

impl<'g> Graph<'g> {
    pub fn new() -> Self {
        Graph::default()
    }

    /// The step with this id, if some module already added it (steps
    /// consumed by several others are added once).
    pub fn find(&self, id: &str) -> Option<StepId> {
        self.steps.iter().position(|s| s.id == id).map(StepId)
    }

    /// Adds a step. The keys of `deps` become inputs (`dep.<id>`), so a
    /// changed dependency changes this step's key.
    pub fn add(
        &mut self,
        id: impl Into<String>,
        mut inputs: StepInputs,
        deps: &[StepId],
        tools: &[HostTool],
        build: impl Fn(&Outputs, &Path) -> Result<()> + 'g,
    ) -> StepId {
        let id = id.into();
        assert!(self.find(&id).is_none(), "step {id} added twice");
        for d in deps {
            let dep = &self.steps[d.0];
            inputs.value(&format!("dep.{}", dep.id), dep.inputs.key());
        }
        self.steps.push(Step {
            id,
            inputs,
            deps: deps.to_vec(),
            tools: tools.to_vec(),
            build: Box::new(build),
        });
        StepId(self.steps.len() - 1)
    }

    pub fn key(&self, id: StepId) -> String {
        self.steps[id.0].inputs.key()
    }

    pub fn id(&self, id: StepId) -> &str {
        &self.steps[id.0].id
    }

    /// What running `targets` would do, step by step (every step of the
    /// graph, in order; those not needed say why).
    pub fn plan(&self, ctx: &Ctx, targets: &[StepId]) -> Result<Vec<Planned>> {
        Ok(self.plan_with_hits(ctx, targets)?.0)
    }

    /// The plan, and the verified entries of the wanted steps that are cached.
    fn plan_with_hits(
        &self,
        ctx: &Ctx,
        targets: &[StepId],
    ) -> Result<(Vec<Planned>, Vec<Option<Entry>>)> {
        let cache = ctx.cache()?;
        let n = self.steps.len();
        let mut wanted = vec![false; n];
        for t in targets {
            wanted[t.0] = true;
        }
        // Consumers come after what they consume, so walking backwards
        // settles whether a step is wanted before it is reached. Only wanted
        // steps are verified against their seals (hashing an unused kernel
        // source tree would cost seconds for nothing).
        let mut planned: Vec<Option<Planned>> = (0..n).map(|_| None).collect();
        let mut hits: Vec<Option<Entry>> = (0..n).map(|_| None).collect();
        for i in (0..n).rev() {
            let s = &self.steps[i];
            let (cached, corrupt, why) = if wanted[i] {
                match cache.lookup(&s.inputs) {
                    Lookup::Hit(entry) => {
                        hits[i] = Some(entry);
                        (true, false, "cached".to_string())
                    }
                    Lookup::Miss => (false, false, cache.why_missing(&s.inputs)),
                    Lookup::Corrupt(why) => (false, true, format!("{why}; it is rebuilt")),
                }
            } else {
                let consumers: Vec<&str> = self
                    .steps
                    .iter()
                    .filter(|c| c.deps.contains(&StepId(i)))
                    .map(|c| c.id.as_str())
                    .collect();
                (
                    cache.has_entry(&s.inputs),
                    false,
                    format!("not needed: {} cached", consumers.join(", ")),
                )
            };
            let runs = wanted[i] && !cached;
            if runs {
                for d in &s.deps {
                    wanted[d.0] = true;
                }
            }
            planned[i] = Some(Planned {
                id: s.id.clone(),
                deps: s.deps.iter().map(|d| self.steps[d.0].id.clone()).collect(),
                cache_key: s.inputs.key(),
                cached,
                runs,
                why,
                corrupt,
            });
        }
        let planned = planned
            .into_iter()
            .map(|p| p.expect("every step"))
            .collect();
        Ok((planned, hits))
    }

    /// With `--dry-run`: prints the plan of `targets` (one JSON object with
    /// `--json`) and returns true; the caller then stops.
    pub fn show_if_dry_run(&self, ctx: &Ctx, targets: &[StepId]) -> Result<bool> {
        if !ctx.dry_run {
            return Ok(false);
        }
        let plan = self.plan(ctx, targets)?;
        if ctx.json {
            ctx.print_json(&serde_json::json!({ "dry_run": true, "steps": plan }))?;
        }
        for p in &plan {
            let state = if p.runs {
                "runs"
            } else if p.cached {
                "cached"
            } else {
                "skipped"
            };
            ctx.ui.info(&format!(
                "{:<24} {}  {state:<7} {}",
                p.id,
                &p.cache_key[..16],
                if p.why == "cached" { "" } else { &p.why }
            ));
            if ctx.ui.is_verbose() {
                for d in &p.deps {
                    ctx.ui.info(&format!("{:<24} after {d}", ""));
                }
            }
        }
        Ok(true)
    }

    /// A one-target command: with `--dry-run` prints the plan and returns
    /// `None`; otherwise checks the dist dir is writable and runs.
    pub fn run_command(&self, ctx: &Ctx, target: StepId) -> Result<Option<Outputs>> {
        if self.show_if_dry_run(ctx, &[target])? {
            return Ok(None);
        }
        ctx.ensure_dist_writable()?;
        self.run(ctx, &[target]).map(Some)
    }

    /// Runs what `targets` need, in order; returns the entries used.
    pub fn run(&self, ctx: &Ctx, targets: &[StepId]) -> Result<Outputs> {
        let (plan, mut hits) = self.plan_with_hits(ctx, targets)?;
        // Every tool of every step that runs, before any work.
        let needs: Vec<(&str, &[HostTool])> = self
            .steps
            .iter()
            .zip(&plan)
            .filter(|(_, p)| p.runs)
            .map(|(s, _)| (s.id.as_str(), s.tools.as_slice()))
            .collect();
        host_tools::require(&needs)?;
        let used: Vec<usize> = (0..self.steps.len())
            .filter(|&i| plan[i].runs || hits[i].is_some())
            .collect();
        let cache = ctx.cache()?;
        let mut outputs = Outputs {
            entries: (0..self.steps.len()).map(|_| None).collect(),
            timings: Vec::with_capacity(used.len()),
        };
        let total = used.len();
        for (n, &i) in used.iter().enumerate() {
            let s = &self.steps[i];
            let label = format!("[{}/{total}] {}", n + 1, s.id);
            if let Some(entry) = hits[i].take() {
                ctx.ui.info(&format!("{label}: cached"));
                outputs.timings.push(StepTiming {
                    id: s.id.clone(),
                    cached: true,
                    seconds: 0.0,
                });
                outputs.entries[i] = Some(entry);
                continue;
            }
            if plan[i].corrupt {
                ctx.ui.info(&format!("{}: {}", s.id, plan[i].why));
            } else {
                ctx.ui
                    .verbose(&format!("{}: runs because {}", s.id, plan[i].why));
            }
            let progress = ctx.ui.step(&label);
            let entry = cache.build(&s.inputs, &ctx.ui, |out| {
                (s.build)(&outputs, out)?;
                // Checked before the entry is sealed: an entry never holds
                // what other inputs than its key's produced.
                let changed = s.inputs.changed_sources()?;
                if !changed.is_empty() {
                    bail!(
                        "{}: {} changed while the step ran, so its result may not match its key; rerun",
                        s.id,
                        changed.join(", ")
                    );
                }
                Ok(())
            })?;
            let took = progress.finish(if entry.hit {
                "built by a concurrent run"
            } else {
                "built"
            });
            outputs.timings.push(StepTiming {
                id: s.id.clone(),
                cached: entry.hit,
                seconds: took.as_secs_f64(),
            });
            outputs.entries[i] = Some(entry);
        }
        Ok(outputs)
    }
}

/// Builds (or takes from the cache) the step `add` adds, with what it
/// needs; its entry.
pub fn build_one<'g>(
    ctx: &'g Ctx,
    add: impl FnOnce(&mut Graph<'g>) -> Result<StepId>,
) -> Result<Entry> {
    let mut g = Graph::new();
    let id = add(&mut g)?;
    Ok(g.run(ctx, &[id])?.entry(id).clone())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::fs;

    use super::*;
    use crate::cache::StepInputs;

    fn ctx(cache: &Path) -> Ctx {
        Ctx::for_tests(cache)
    }

    fn inputs(step: &str, v: &str) -> StepInputs {
        let mut i = StepInputs::new(step, 1);
        i.value("v", v);
        i
    }

    #[test]
    fn a_cached_step_hides_its_dependencies_and_a_change_reaches_consumers() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let runs = Cell::new(0);
        let graph = |v: &'static str| {
            let mut g = Graph::new();
            let runs = &runs;
            let a = g.add("a", inputs("a", v), &[], &[], move |_, out| {
                runs.set(runs.get() + 1);
                Ok(fs::write(out.join("a"), v)?)
            });
            let b = g.add("b", inputs("b", "1"), &[a], &[], move |o, out| {
                runs.set(runs.get() + 1);
                let a = fs::read_to_string(o.path(a, "a"))?;
                Ok(fs::write(out.join("b"), format!("{a}+b"))?)
            });
            (g, b)
        };
        let (g, b) = graph("x");
        let out = g.run(&ctx, &[b]).unwrap();
        assert_eq!(runs.get(), 2);
        assert_eq!(fs::read_to_string(out.path(b, "b")).unwrap(), "x+b");
        let timed: Vec<(&str, bool)> = out
            .timings
            .iter()
            .map(|t| (t.id.as_str(), t.cached))
            .collect();
        assert_eq!(timed, [("a", false), ("b", false)]);

        // All cached: a is not wanted at all.
        let plan = g.plan(&ctx, &[b]).unwrap();
        assert!(plan.iter().all(|p| !p.runs));
        assert!(plan[0].why.starts_with("not needed: b"), "{}", plan[0].why);
        let out = g.run(&ctx, &[b]).unwrap();
        assert_eq!(runs.get(), 2, "nothing ran again");
        let timed: Vec<(&str, bool, f64)> = out
            .timings
            .iter()
            .map(|t| (t.id.as_str(), t.cached, t.seconds))
            .collect();
        assert_eq!(timed, [("b", true, 0.0)], "only the wanted entry is used");

        // A changed input of a: both run, and the plan says why.
        let (g, b) = graph("y");
        let plan = g.plan(&ctx, &[b]).unwrap();
        assert!(plan.iter().all(|p| p.runs));
        assert!(plan[0].why.contains("v changed"), "{}", plan[0].why);
        assert!(plan[1].why.contains("dep.a changed"), "{}", plan[1].why);
        let out = g.run(&ctx, &[b]).unwrap();
        assert_eq!(runs.get(), 4);
        assert_eq!(fs::read_to_string(out.path(b, "b")).unwrap(), "y+b");
    }

    #[test]
    fn a_corrupt_entry_is_rebuilt_not_used() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let mut g = Graph::new();
        let a = g.add("a", inputs("a", "1"), &[], &[], |_, out| {
            Ok(fs::write(out.join("f"), "good")?)
        });
        let first = g.run(&ctx, &[a]).unwrap().entry(a).clone();
        fs::write(first.path("f"), "evil").unwrap();
        let plan = g.plan(&ctx, &[a]).unwrap();
        assert!(plan[0].runs && !plan[0].cached, "{plan:?}");
        assert!(plan[0].why.contains("f does not match"), "{}", plan[0].why);
        let out = g.run(&ctx, &[a]).unwrap();
        assert_eq!(fs::read_to_string(out.path(a, "f")).unwrap(), "good");
        assert_eq!(
            out.entry(a).sha256("f").unwrap(),
            crate::hash::bytes_sha256(b"good")
        );
    }

    #[test]
    fn a_failed_step_stops_the_run_and_leaves_no_entry() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let mut g = Graph::new();
        let a = g.add("a", inputs("a", "1"), &[], &[], |_, out| {
            fs::write(out.join("half"), "x")?;
            bail!("boom")
        });
        let b = g.add("b", inputs("b", "1"), &[a], &[], |_, _| {
            panic!("must not run after a failed dependency")
        });
        assert_eq!(g.run(&ctx, &[b]).err().unwrap().to_string(), "boom");
        assert!(g.plan(&ctx, &[b]).unwrap()[0].runs, "no entry for a");
    }

    #[test]
    fn missing_tools_are_named_before_any_step_runs() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(d.path());
        let ran = Cell::new(false);
        let mut g = Graph::new();
        let a = g.add("a", inputs("a", "1"), &[], &[], |_, _| {
            ran.set(true);
            Ok(())
        });
        let tool = HostTool {
            name: "surely-not-a-real-tool",
            probe: host_tools::Probe::Program("surely-not-a-real-tool"),
            package: "not-a-package",
            needed_for: "testing",
        };
        let b = g.add("b", inputs("b", "1"), &[a], &[tool], |_, _| Ok(()));
        let e = g.run(&ctx, &[b]).err().unwrap().to_string();
        assert!(
            e.starts_with(
                "host tools missing: surely-not-a-real-tool (package not-a-package) for b;"
            ),
            "{e}"
        );
        assert!(!ran.get());
    }

    #[test]
    fn a_source_edited_during_the_build_fails_the_step() {
        let d = tempfile::tempdir().unwrap();
        let ctx = ctx(&d.path().join("cache"));
        let src = d.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("main.c"), "1").unwrap();
        let mut i = StepInputs::new("a", 1);
        i.tree(&ctx.digests, "src", &src).unwrap();
        let mut g = Graph::new();
        let src2 = src.clone();
        let a = g.add("a", i, &[], &[], move |_, _| {
            Ok(fs::write(src2.join("main.c"), "2")?)
        });
        let e = g.run(&ctx, &[a]).err().unwrap().to_string();
        assert!(e.contains("src changed while the step ran"), "{e}");
        assert!(
            !g.plan(&ctx, &[a]).unwrap()[0].cached,
            "no entry under the old key"
        );
    }
}
