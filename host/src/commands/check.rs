//! `wtrace check`: will this component run, and what may it reach?

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use wtrace::runtime::check::{self, ImportStatus, World};
use wtrace::{Limits, Runtime};

use super::args::SandboxArgs;

/// Check a component for CI: validate it, list its imports and exports, say
/// which imports the sandbox would deny under the given flags, and check a
/// hook's export. Exits 0 when it would run, 1 when not.
#[derive(Debug, Args)]
pub struct CheckCommand {
    /// The world to check against.
    #[arg(long, value_enum, default_value = "task")]
    world: WorldArg,
    /// For --world hook: the export to call.
    #[arg(long, value_name = "EXPORT", default_value = "setup-tracing")]
    export: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// The component (.wasm).
    component: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorldArg {
    Task,
    Hook,
}

impl CheckCommand {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let bytes = std::fs::read(&self.component)
            .with_context(|| format!("cannot read {}", self.component.display()))?;
        let runtime = Runtime::new(Limits::default(), self.sandbox.cache_dir())?;
        let world = match self.world {
            WorldArg::Task => World::Task,
            WorldArg::Hook => World::Hook,
        };
        let report = match check::check(
            &runtime,
            &self.component,
            &bytes,
            world,
            &wtrace::runtime::wave::kebab(&self.export),
            &self.sandbox.grants()?,
        ) {
            Ok(report) => report,
            Err(error) if self.json => {
                let value = serde_json::json!({
                    "component": self.component.display().to_string(),
                    "ok": false,
                    "problems": [error.to_string()],
                });
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(ExitCode::FAILURE);
            }
            Err(error) => return Err(error.into()),
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{} ({})", report.component, report.digest);
            println!("imports:");
            for import in &report.imports {
                let status = match &import.status {
                    ImportStatus::Provided => "provided".to_owned(),
                    ImportStatus::Denied { grant } => format!("denied unless granted ({grant})"),
                    ImportStatus::Missing => "MISSING: not provided, cannot instantiate".to_owned(),
                };
                println!("  {:<44} {status}", import.name);
            }
            println!("exports:");
            for export in &report.exports {
                println!("  {}: {}", export.name, export.ty);
            }
            if !report.actor_classes.is_empty() {
                println!("actor classes:");
                for class in &report.actor_classes {
                    println!("  {} (in {})", class.name, class.interface);
                    println!("    {}", class.constructor);
                    for method in &class.methods {
                        println!("    {}: {}", method.name, method.ty);
                    }
                }
            }
            if report.ok {
                let world = match report.world {
                    World::Task if report.exports.iter().all(|e| !e.ty.starts_with("func(")) => {
                        "an actor component"
                    }
                    World::Task => "a task",
                    World::Hook => "a tracing startup hook",
                };
                println!("ok: it would run as {world}");
            }
            for problem in &report.problems {
                println!("problem: {problem}");
            }
        }
        Ok(if report.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
