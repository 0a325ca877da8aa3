//! `wtrace-c-tool`: the two steps of building a wtrace hook or task in C that
//! are not the C compiler's job, without installing `wit-bindgen-cli` or
//! `wasm-tools`.
//!
//! ```text
//! wtrace-c-tool bindings --wit wit --wit hello.wit --world hello --out-dir gen
//! clang-19 --target=wasm32-wasi -mexec-model=reactor ... gen/hello.c gen/hello_component_type.o -o core.wasm
//! wtrace-c-tool component core.wasm -o hello.wasm
//! ```
//!
//! `bindings` runs wit-bindgen's C generator (the library behind
//! `wit-bindgen c`) and also writes `wtrace_world.h`, which names the world's
//! string type for the helper header `guest-sdk/c/wtrace.h`. `component`
//! wraps a core module into a component, adapting its `wasi_snapshot_preview1`
//! imports (wasi-libc's) to WASI 0.2 with wasmtime 48's reactor adapter
//! (or, with `--adapter proxy`, the proxy adapter: stdio without filesystem).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_bindgen_core::Files;
use wit_component::ComponentEncoder;
use wit_parser::Resolve;

#[derive(Debug, Parser)]
#[command(version, about = "Build wtrace hooks and tasks written in C")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generates C bindings for a world: `<world>.h`, `<world>.c`,
    /// `<world>_component_type.o` (compile and link all three) and
    /// `wtrace_world.h` (for `wtrace.h`).
    Bindings {
        /// A WIT directory or file, in dependency order: first the wtrace
        /// package (the repository's `wit/`), then the file holding your
        /// world. Repeatable.
        #[arg(long, required = true)]
        wit: Vec<PathBuf>,
        /// The world: a name in the last `--wit` package (`hello`), or a
        /// qualified one (`wtrace:tracing/hook@0.1.0`).
        #[arg(long)]
        world: String,
        /// Where to write the files (created if missing).
        #[arg(long)]
        out_dir: PathBuf,
    },
    /// Turns a core module built with the bindings into a component.
    Component {
        /// The core module (clang's output).
        module: PathBuf,
        /// The component to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Which WASI preview1 adapter implements wasi-libc's imports.
        #[arg(long, value_enum, default_value_t = Adapter::Reactor)]
        adapter: Adapter,
    },
}

/// wasmtime's `wasi_snapshot_preview1` adapters (of the host's wasmtime, 48).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Adapter {
    /// All of WASI 0.2's CLI world: stdio, environment, clocks, random,
    /// filesystem (its imports appear as soon as stdio is used), exit.
    Reactor,
    /// Only stdio, clocks and random: no filesystem, no environment
    /// (`getenv` finds nothing), no exit. For tasks, which get neither.
    Proxy,
}

impl Adapter {
    fn bytes(self) -> &'static [u8] {
        match self {
            Adapter::Reactor => WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
            Adapter::Proxy => WASI_SNAPSHOT_PREVIEW1_PROXY_ADAPTER,
        }
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Bindings {
            wit,
            world,
            out_dir,
        } => bindings(&wit, &world, &out_dir),
        Command::Component {
            module,
            output,
            adapter,
        } => component(&module, &output, adapter),
    }
}

fn bindings(wit: &[PathBuf], world: &str, out_dir: &Path) -> Result<()> {
    let mut resolve = Resolve::default();
    let mut main = None;
    for path in wit {
        let (package, _) = resolve
            .push_path(path)
            .with_context(|| format!("failed to read WIT from {}", path.display()))?;
        main = Some(package);
    }
    let main = main.context("no --wit given")?;
    let world_id = resolve.select_world(&[main], Some(world))?;

    let mut files = Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .with_context(|| format!("failed to generate C bindings for world `{world}`"))?;

    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("failed to create {}", out_dir.display()))?;
    let mut prefix = None;
    for (name, contents) in files.iter() {
        let path = out_dir.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("failed to write {}", path.display()))?;
        if let Some(world_prefix) = name.strip_suffix("_component_type.o") {
            prefix = Some(world_prefix.to_owned());
        }
        println!("{}", path.display());
    }
    let Some(prefix) = prefix else {
        bail!("wit-bindgen-c wrote no *_component_type.o; cannot name the world's C prefix");
    };
    let path = out_dir.join("wtrace_world.h");
    std::fs::write(&path, world_header(&prefix))
        .with_context(|| format!("failed to write {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// `wtrace_world.h`: the world-specific names `wtrace.h` needs. wit-bindgen-c
/// prefixes the string type with the world's name (`hello_string_t`), so a
/// header shared by every world reaches it through these aliases.
fn world_header(prefix: &str) -> String {
    format!(
        "// Generated by wtrace-c-tool for world `{prefix}`. DO NOT EDIT!\n\
         #ifndef WTRACE_WORLD_H\n\
         #define WTRACE_WORLD_H\n\
         #include \"{prefix}.h\"\n\
         typedef {prefix}_string_t wtrace_string_t;\n\
         #define wtrace_string_set {prefix}_string_set\n\
         #define wtrace_string_dup {prefix}_string_dup\n\
         #define wtrace_string_free {prefix}_string_free\n\
         #endif\n"
    )
}

fn component(module: &Path, output: &Path, adapter: Adapter) -> Result<()> {
    let bytes =
        std::fs::read(module).with_context(|| format!("failed to read {}", module.display()))?;
    let component = ComponentEncoder::default()
        .module(&bytes)
        .with_context(|| {
            format!(
                "{} has no component type: link the bindings' <world>_component_type.o into it",
                module.display()
            )
        })?
        .validate(true)
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, adapter.bytes())?
        .encode()
        .with_context(|| format!("failed to make a component of {}", module.display()))?;
    std::fs::write(output, &component)
        .with_context(|| format!("failed to write {}", output.display()))?;
    println!("{} ({} bytes)", output.display(), component.len());
    Ok(())
}
