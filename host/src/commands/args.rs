//! Flags shared by the commands that start workers.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use wtrace::{DirGrant, ExportPolicy, Grants, HookSpec, Limits};

/// The tracing startup hook.
#[derive(Debug, Clone, Args)]
pub struct HookArgs {
    /// The tracing startup hook every process runs before any task:
    /// `PATH:EXPORT` (e.g. `hook.wasm:setup_tracing`), or `default` to write
    /// each process's spans to /tmp/spans/<pid>.json. Without it, nothing is traced.
    #[arg(
        long,
        value_name = "PATH:EXPORT|default",
        env = "WTRACE_TRACING_STARTUP_HOOK"
    )]
    pub tracing_startup_hook: Option<String>,
}

impl HookArgs {
    pub fn spec(&self) -> anyhow::Result<Option<HookSpec>> {
        self.tracing_startup_hook
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .transpose()
            .map_err(Into::into)
    }
}

/// Limits and grants for tasks and hooks.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Largest linear memory of a task, e.g. 512M or 2G.
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub max_memory: u64,
    /// Longest a task may run, e.g. 300s, 5m or 500ms.
    #[arg(long, value_name = "DURATION", default_value = "300s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Fuel (about one unit per wasm instruction) per task; off by default.
    #[arg(long, value_name = "UNITS")]
    pub fuel: Option<u64>,
    /// Spans a task may start; later ones are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = Limits::default().spans_per_task)]
    pub max_spans: u32,
    /// Spans a task may have open at once; later ones are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = Limits::default().open_spans)]
    pub max_open_spans: u32,
    /// Attributes per span.
    #[arg(long, value_name = "N", default_value_t = Limits::default().attributes_per_span)]
    pub max_span_attributes: u32,
    /// Events per span.
    #[arg(long, value_name = "N", default_value_t = Limits::default().events_per_span)]
    pub max_span_events: u32,
    /// Longest attribute value in bytes; longer ones are truncated.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().attribute_value_length)]
    pub max_attribute_length: u32,
    /// Tasks one task may submit.
    #[arg(long, value_name = "N", default_value_t = Limits::default().nested_tasks)]
    pub max_nested_tasks: u32,
    /// How deep tasks may submit tasks that submit tasks.
    #[arg(long, value_name = "N", default_value_t = Limits::default().nesting_depth)]
    pub max_nesting_depth: u32,
    /// Largest result a task may return (its WAVE text), e.g. 1M.
    #[arg(long, value_name = "SIZE", default_value = "1M", value_parser = parse_size)]
    pub max_result_size: u64,
    /// Write each task's guest CPU profile (Firefox Profiler format) to
    /// DIR/<task id>.json, sampled every 10 ms; the execute span names it
    /// (`wtrace.profile`).
    #[arg(long, value_name = "DIR")]
    pub profile: Option<std::path::PathBuf>,
    /// Longest the tracing startup hook may run.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub hook_timeout: Duration,
    /// Let tasks use a host directory: HOST[:GUEST][:ro] (repeatable).
    #[arg(long, value_name = "HOST[:GUEST][:ro]")]
    pub allow_dir: Vec<DirGrant>,
    /// Pass this environment variable to tasks (repeatable).
    #[arg(long, value_name = "NAME")]
    pub allow_env: Vec<String>,
    /// Let tasks open sockets to HOST:PORT (`*` for any port or any address; repeatable).
    #[arg(long, value_name = "HOST:PORT")]
    pub allow_net: Vec<String>,
    /// Let tasks send HTTP requests (wasi:http) to HOST or HOST:PORT (`*`: anywhere; repeatable).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub allow_http: Vec<String>,
    /// Also let the hook's file exporters write under DIR (default: /tmp/spans only).
    #[arg(long, value_name = "DIR")]
    pub allow_span_dir: Vec<PathBuf>,
    /// Also let the hook's OTLP exporters reach HOST (loopback is always allowed).
    #[arg(long, value_name = "HOST")]
    pub allow_otlp_host: Vec<String>,
    /// Where compiled components are cached (default: ~/.cache/wtrace).
    #[arg(long, value_name = "DIR", env = "WTRACE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl SandboxArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            memory_bytes: self.max_memory,
            timeout: self.timeout,
            fuel: self.fuel,
            spans_per_task: self.max_spans,
            open_spans: self.max_open_spans,
            attributes_per_span: self.max_span_attributes,
            events_per_span: self.max_span_events,
            attribute_value_length: self.max_attribute_length,
            nested_tasks: self.max_nested_tasks,
            nesting_depth: self.max_nesting_depth,
            result_bytes: u32::try_from(self.max_result_size).unwrap_or(u32::MAX),
            hook_timeout: self.hook_timeout,
            profile_dir: self
                .profile
                .as_ref()
                .map(|dir| std::path::absolute(dir).unwrap_or(dir.clone())),
            ..Limits::default()
        }
    }

    pub fn policy(&self) -> anyhow::Result<ExportPolicy> {
        let mut policy = ExportPolicy::default();
        for dir in &self.allow_span_dir {
            let dir = std::path::absolute(dir)
                .with_context(|| format!("--allow-span-dir {}", dir.display()))?;
            policy.span_dirs.push(dir);
        }
        policy
            .otlp_hosts
            .extend(self.allow_otlp_host.iter().cloned());
        Ok(policy)
    }

    pub fn grants(&self) -> anyhow::Result<Grants> {
        let mut dirs = Vec::new();
        for grant in &self.allow_dir {
            let host = std::path::absolute(&grant.host)
                .with_context(|| format!("--allow-dir {}", grant.host.display()))?;
            if !host.is_dir() {
                bail!("--allow-dir {}: not a directory", host.display());
            }
            dirs.push(DirGrant {
                host,
                ..grant.clone()
            });
        }
        for pattern in &self.allow_net {
            let ok = pattern == "*"
                || pattern.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && (port == "*" || port.parse::<u16>().is_ok())
                });
            if !ok {
                bail!("--allow-net {pattern:?}: expected HOST:PORT, HOST:* or *");
            }
        }
        Ok(Grants {
            dirs,
            env: self.allow_env.clone(),
            net: self.allow_net.clone(),
            http: self.allow_http.clone(),
        })
    }

    pub fn cache_dir(&self) -> Option<PathBuf> {
        self.cache_dir
            .clone()
            .or_else(wtrace::runtime::default_cache_dir)
    }
}

pub fn parse_size(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a size like 512M or 2G"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        other => bail!("unknown size unit {other:?}; use K, M or G"),
    };
    value
        .checked_shl(shift)
        .filter(|v| *v > 0)
        .with_context(|| format!("{text:?} is not a usable size"))
}

pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (digits, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len()),
    );
    let value: f64 = digits
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 30s, 5m or 500ms"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => bail!("unknown duration unit {other:?}; use ms, s, m or h"),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        bail!("{text:?} must be a positive duration");
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("64KiB").unwrap(), 64 << 10);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1y").is_err());
    }
}
