//! Tracing startup hooks: naming, loading and running them.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use opentelemetry::trace::SpanContext;
use wasmtime::Store;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Type};

use super::store::{StoreState, hook_linker};
use crate::capabilities::provider::{ProviderState, WorkerInfo};
use crate::capabilities::tasks::TasksState;
use crate::capabilities::tracer::{BridgeLimits, SpanBridge};
use crate::config::{ExportPolicy, Limits};
use crate::error::{Error, Result, chain};
use crate::outcome::TaskErrorKind;
use crate::runtime::check::{list_or_none, root_export_names};
use crate::runtime::wave;
use crate::runtime::{Digest, Runtime};
use crate::sandbox::{self, CapturedOutput, Deadline};
use crate::telemetry::Telemetry;
use crate::telemetry::logs::{Origin, Stream, TaskLog};

/// The built-in default hook, built from `examples/hooks/local-tmp`: every
/// process writes its spans to `/tmp/spans/<pid>.json`.
pub const DEFAULT_HOOK: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/local_tmp_hook.wasm"));

/// The export a hook is called through unless the spec names another.
pub const DEFAULT_EXPORT: &str = "setup-tracing";

/// `--tracing-startup-hook`: `default`, `PATH` or `PATH:EXPORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSpec {
    /// Where the component comes from.
    pub source: HookSource,
    /// The export to call, in WIT's kebab-case (`setup_tracing` is accepted
    /// and becomes `setup-tracing`).
    pub export: String,
}

/// Where a hook component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookSource {
    /// The built-in [`DEFAULT_HOOK`].
    Default,
    /// A component file.
    File(PathBuf),
}

impl FromStr for HookSpec {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let (source, export) = match spec.rsplit_once(':') {
            Some((path, export)) if !export.contains(['/', '\\']) => (path, export),
            _ => (spec, DEFAULT_EXPORT),
        };
        if source.is_empty() || export.is_empty() {
            return Err(Error::Hook {
                hook: spec.to_owned(),
                cause: "expected PATH:EXPORT (e.g. hook.wasm:setup_tracing) or `default`".into(),
            });
        }
        let source = if source == "default" {
            HookSource::Default
        } else {
            HookSource::File(PathBuf::from(source))
        };
        Ok(Self {
            source,
            export: wave::kebab(export),
        })
    }
}

impl fmt::Display for HookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            HookSource::Default => write!(f, "default:{}", self.export),
            HookSource::File(path) => write!(f, "{}:{}", path.display(), self.export),
        }
    }
}

impl HookSpec {
    /// Reads the hook's bytes.
    pub fn load(&self) -> Result<HookComponent> {
        let (name, bytes): (PathBuf, Arc<[u8]>) = match &self.source {
            HookSource::Default => (PathBuf::from("default"), Arc::from(DEFAULT_HOOK)),
            HookSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|e| Error::Hook {
                    hook: self.to_string(),
                    cause: format!("cannot read {}: {e}", path.display()),
                })?;
                (path.clone(), bytes.into())
            }
        };
        Ok(HookComponent {
            display: self.to_string(),
            digest: Digest::of(&bytes),
            name,
            export: self.export.clone(),
            bytes,
        })
    }
}

/// What hooks are linked against (WASI, `tracer` and `provider`): built
/// once a process, and by a worker while it waits for its hook.
pub struct HookLinker(Linker<StoreState>);

impl HookLinker {
    /// Builds the linker for `runtime`'s engine.
    pub fn new(runtime: &Runtime) -> Result<Self> {
        hook_linker(runtime.engine())
            .map(Self)
            .map_err(|e| Error::Config(format!("cannot link hooks: {}", chain(&e))))
    }
}

impl fmt::Debug for HookLinker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookLinker").finish_non_exhaustive()
    }
}

/// A hook's component bytes and the export to call.
#[derive(Debug, Clone)]
pub struct HookComponent {
    /// How the user named it, for messages.
    pub display: String,
    /// The file it came from (`default` for the built-in one).
    pub name: PathBuf,
    /// The export to call.
    pub export: String,
    /// The component.
    pub bytes: Arc<[u8]>,
    /// The sha256 of `bytes`, made when they were read or checked when
    /// they arrived: the compiled hook is looked up by it.
    pub digest: Digest,
}

impl HookComponent {
    fn error(&self, cause: impl Into<String>) -> Error {
        Error::Hook {
            hook: self.display.clone(),
            cause: cause.into(),
        }
    }

    /// Runs the hook in this process (described by `info`) and builds the
    /// tracer provider it configured. gRPC exporters are built in `tokio`.
    pub fn run(
        &self,
        runtime: &Runtime,
        info: WorkerInfo,
        policy: &ExportPolicy,
        tokio: Option<tokio::runtime::Handle>,
    ) -> Result<Telemetry> {
        self.run_linked(&HookLinker::new(runtime)?, runtime, info, policy, tokio)
    }

    /// [`HookComponent::run`] with a linker built beforehand.
    pub fn run_linked(
        &self,
        linker: &HookLinker,
        runtime: &Runtime,
        info: WorkerInfo,
        policy: &ExportPolicy,
        tokio: Option<tokio::runtime::Handle>,
    ) -> Result<Telemetry> {
        let component = self.load_component(runtime)?;
        let pre = linker.0.instantiate_pre(&component).map_err(|e| {
            self.error(format!(
                "it imports something wtrace does not provide to hooks: {}",
                chain(&e)
            ))
        })?;

        let output = CapturedOutput::new(runtime.limits().output_bytes as usize);
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("OTEL_") || k.starts_with("WTRACE_"))
            .filter(|(k, _)| k != "WTRACE_TOKEN")
            .collect();
        let wasi = sandbox::wasi_ctx(
            &output,
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            None,
        )
        .map_err(|e| self.error(e))?;
        let limits = runtime.limits();
        let bridge = SpanBridge::new(
            None,
            SpanContext::empty_context(),
            BridgeLimits::from(limits),
        );
        let tasks = TasksState::new(None, limits);
        let deadline = Deadline::new(limits.hook_timeout, "a faster hook", None);
        let mut state = StoreState::new(wasi, bridge, tasks, limits.memory_bytes, deadline);
        state.provider = Some(ProviderState::new(info, policy.clone(), tokio));
        let mut store = Store::new(runtime.engine(), state);
        store.limiter(|s| &mut s.memory);
        sandbox::arm_deadline(&mut store);

        let outcome = pre.instantiate(&mut store).and_then(|instance| {
            let func = instance
                .get_typed_func::<(), (Result<(), String>,)>(&mut store, self.export.as_str())?;
            func.call(&mut store, ())
        });
        forward_output(&output, &self.export);
        match outcome {
            Ok((Ok(()),)) => {}
            Ok((Err(message),)) => {
                return Err(self.error(format!("{} returned an error: {message}", self.export)));
            }
            Err(e) => {
                let cause = match e.downcast_ref::<sandbox::Stopped>() {
                    Some(stopped) if stopped.kind == TaskErrorKind::Timeout => {
                        format!(
                            "{} did not return within {:?}; a hook must finish quickly",
                            self.export, limits.hook_timeout
                        )
                    }
                    Some(stopped) => format!("{} was stopped: {stopped}", self.export),
                    None => format!("{} trapped: {}", self.export, chain(&e)),
                };
                return Err(self.error(cause));
            }
        }
        let state = store
            .into_data()
            .provider
            .expect("hook store has provider state");
        let telemetry = state.build(limits);
        log_output(&telemetry, &output, &self.export, limits);
        Ok(telemetry)
    }

    fn load_component(&self, runtime: &Runtime) -> Result<Component> {
        let loaded = runtime.load_digested(&self.name, &self.bytes, self.digest);
        let (_, component) = loaded.map_err(|e| match e {
            Error::Component { cause, .. } => self.error(cause),
            other => other,
        })?;
        let exports = root_export_names(runtime, &component);
        let Some((item, _)) = component.get_export(None, self.export.as_str()) else {
            return Err(self.error(format!(
                "it has no export `{}` (its exports: {}); a tracing startup hook exports \
                 `setup-tracing: func() -> result<_, string>`",
                self.export,
                list_or_none(&exports)
            )));
        };
        let ok = match &item {
            ComponentItem::ComponentFunc(func) => {
                let results: Vec<Type> = func.results().collect();
                func.params().len() == 0
                    && matches!(results.as_slice(), [Type::Result(r)]
                        if r.ok().is_none() && matches!(r.err(), Some(Type::String)))
            }
            _ => false,
        };
        if !ok {
            return Err(self.error(format!(
                "export `{}` is {}, but a tracing startup hook must export \
                 `{}: func() -> result<_, string>`",
                self.export,
                wave::describe_item(&item),
                self.export
            )));
        }
        Ok(component)
    }
}

/// Prints a hook's output on stderr, each line prefixed with the export and pid.
fn forward_output(output: &CapturedOutput, export: &str) {
    let prefix = format!("({export} pid={})", std::process::id());
    for bytes in [output.stdout.contents(), output.stderr.contents()] {
        for line in String::from_utf8_lossy(&bytes).lines() {
            eprintln!("{prefix} {line}");
        }
    }
}

/// The hook's output as log records (`wtrace.hook` naming the export), now
/// that its hook chose where they go: it ran before there was a logger.
fn log_output(telemetry: &Telemetry, output: &CapturedOutput, export: &str, limits: &Limits) {
    let Some(logger) = telemetry.logger() else {
        return;
    };
    let log = TaskLog::new(
        logger.clone(),
        limits.attribute_value_length as usize,
        Origin::Hook(export.to_owned()),
        SpanContext::empty_context(),
    );
    log.write(Stream::Stdout, &output.stdout.contents());
    log.write(Stream::Stderr, &output.stderr.contents());
    log.finish();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_specs_parse() {
        let spec: HookSpec = "hook.wasm:setup_tracing".parse().unwrap();
        assert_eq!(spec.source, HookSource::File("hook.wasm".into()));
        assert_eq!(spec.export, "setup-tracing");
        assert_eq!(spec.to_string(), "hook.wasm:setup-tracing");

        let spec: HookSpec = "default".parse().unwrap();
        assert_eq!(spec.source, HookSource::Default);
        assert_eq!(spec.export, "setup-tracing");

        let spec: HookSpec = "./dir/h.wasm".parse().unwrap();
        assert_eq!(spec.source, HookSource::File("./dir/h.wasm".into()));

        let spec: HookSpec = "/a/b.wasm:other-setup".parse().unwrap();
        assert_eq!(spec.export, "other-setup");

        assert!("".parse::<HookSpec>().is_err());
        assert!(":setup".parse::<HookSpec>().is_err());
    }
}
