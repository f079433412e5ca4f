//! A command's plan: the steps it would run, with their cache keys and
//! whether each is already cached. `--dry-run` prints it and stops.

use anyhow::Result;
use serde::Serialize;

use crate::cache::StepInputs;
use crate::context::Ctx;

#[derive(Serialize)]
pub struct PlannedStep {
    pub step: String,
    pub key: String,
    pub cached: bool,
    pub inputs: std::collections::BTreeMap<String, String>,
}

#[derive(Default)]
pub struct Plan {
    steps: Vec<PlannedStep>,
}

impl Plan {
    /// The plan of these steps, in order.
    pub fn of<'a>(ctx: &Ctx, steps: impl IntoIterator<Item = &'a StepInputs>) -> Plan {
        let mut plan = Plan::default();
        for s in steps {
            plan.add(ctx, s);
        }
        plan
    }

    pub fn add(&mut self, ctx: &Ctx, inputs: &StepInputs) {
        let cached = ctx
            .cache_dir
            .join("steps")
            .join(inputs.step())
            .join(inputs.key())
            .is_dir();
        self.steps.push(PlannedStep {
            step: inputs.step().to_string(),
            key: inputs.key(),
            cached,
            inputs: inputs.items().clone(),
        });
    }

    /// With `--dry-run`: prints the plan and returns true (the caller stops).
    pub fn show_if_dry_run(&self, ctx: &Ctx) -> Result<bool> {
        if !ctx.dry_run {
            return Ok(false);
        }
        if ctx.json {
            ctx.print_json(&serde_json::json!({ "dry_run": true, "steps": self.steps }))?;
        }
        for s in &self.steps {
            let state = if s.cached { "cached" } else { "would run" };
            ctx.ui
                .info(&format!("{:<8} {}  {state}", s.step, &s.key[..16]));
            for (k, v) in &s.inputs {
                ctx.ui.info(&format!("           {k} = {v}"));
            }
        }
        Ok(true)
    }
}
