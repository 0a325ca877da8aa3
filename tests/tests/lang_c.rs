//! Hooks and tasks written in C (guest-sdk/c): the example hook and the seed
//! example task are built from source with clang-19, wasi-libc and
//! wtrace-c-tool, then run on real worker processes like the Rust seed
//! example, alone and mixed with the Rust guests.
//!
//! The toolchain comes from `scripts/test.sh` (`scripts/setup-c.sh`), which
//! exports `WTRACE_CLANG` and `WTRACE_C_TOOL`. Without it these tests fail,
//! saying so; they never skip.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use guest_langs::workspace;
use wtrace_tests::{Spans, Wtrace, guests, span_dir};

mod guest_langs;

/// The C hook's `service.name` when `OTEL_SERVICE_NAME` is unset.
const C_HOOK_SERVICE: &str = "wtrace-c-file-hook";
/// The Rust file hook's (`tests/guests/file-hook`).
const RUST_HOOK_SERVICE: &str = "wtrace-tests";
const SETUP_HINT: &str = "run the tests with scripts/test.sh, which installs clang-19, lld-19, \
     libclang-rt-19-dev-wasm32 and wasi-libc and builds wtrace-c-tool \
     (or: source scripts/setup-c.sh && setup_c_guests)";

/// The C components, built once per test process.
#[derive(Debug)]
struct CGuests {
    /// guest-sdk/c/examples/file-hook, with the reactor adapter.
    hook: PathBuf,
    /// guest-sdk/c/examples/hello, with the reactor adapter.
    task: PathBuf,
    /// The same task with the proxy adapter (stdio only, no filesystem).
    task_proxy: PathBuf,
}

fn c_guests() -> &'static CGuests {
    static BUILT: OnceLock<CGuests> = OnceLock::new();
    BUILT.get_or_init(build_c_guests)
}

/// The C compiler and wtrace-c-tool, or a panic naming what is missing.
fn toolchain() -> (PathBuf, PathBuf) {
    let clang = std::env::var_os("WTRACE_CLANG")
        .map(PathBuf::from)
        .unwrap_or_else(|| "clang-19".into());
    match Command::new(&clang).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "C toolchain: `{} --version` failed: {}\n{SETUP_HINT}",
            clang.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(error) => panic!(
            "C toolchain missing: cannot run {} ({error})\n{SETUP_HINT}",
            clang.display()
        ),
    }
    let tool = std::env::var_os("WTRACE_C_TOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/release/wtrace-c-tool"));
    assert!(
        tool.is_file(),
        "wtrace-c-tool missing at {}\n{SETUP_HINT}",
        tool.display()
    );
    (clang, tool)
}

fn run_step(what: &str, command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start {command:?}: {e}\n{SETUP_HINT}"));
    assert!(
        out.status.success(),
        "{what} failed ({command:?}):\n{}{}\n{SETUP_HINT}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One C component to build.
struct Build<'a> {
    name: &'a str,
    /// `--wit` paths, in dependency order.
    wit: &'a [PathBuf],
    world: &'a str,
    source: PathBuf,
    /// `reactor` or `proxy`.
    adapter: &'a str,
    out: &'a Path,
}

/// Generates bindings for the world, compiles the source with them and makes
/// a component of it with the adapter: the commands of guest-sdk/c/README.md.
fn build_component((clang, tool): &(PathBuf, PathBuf), work: &Path, build: Build<'_>) {
    let Build {
        name,
        wit,
        world,
        source,
        adapter,
        out,
    } = build;
    let sdk = workspace().join("guest-sdk/c");
    let gen_dir = work.join(format!("{name}-bindings"));
    let mut bindings = Command::new(tool);
    bindings.arg("bindings");
    for path in wit {
        bindings.arg("--wit").arg(path);
    }
    bindings
        .args(["--world", world])
        .arg("--out-dir")
        .arg(&gen_dir);
    run_step(&format!("{name}: wtrace-c-tool bindings"), &mut bindings);

    // The generated <world>.c and <world>_component_type.o.
    let mut generated: Vec<PathBuf> = std::fs::read_dir(&gen_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "c" || e == "o"))
        .collect();
    generated.sort();
    assert_eq!(
        generated.len(),
        2,
        "bindings: one .c and one .o: {generated:?}"
    );

    let core = work.join(format!("{name}.core.wasm"));
    run_step(
        &format!("{name}: clang"),
        Command::new(clang)
            .args([
                "--target=wasm32-wasi",
                "-mexec-model=reactor",
                "-Os",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wl,--strip-all",
            ])
            .arg("-I")
            .arg(&gen_dir)
            .arg("-I")
            .arg(&sdk)
            .arg(&source)
            .args(&generated)
            .arg("-o")
            .arg(&core),
    );
    // Built beside the final path, then renamed: a concurrent test run never
    // sees half a file.
    let partial = work.join(out.file_name().unwrap());
    run_step(
        &format!("{name}: wtrace-c-tool component"),
        Command::new(tool)
            .arg("component")
            .arg(&core)
            .args(["--adapter", adapter])
            .arg("-o")
            .arg(&partial),
    );
    std::fs::rename(&partial, out).unwrap();
}

fn build_c_guests() -> CGuests {
    let toolchain = toolchain();
    let root = workspace();
    let examples = root.join("guest-sdk/c/examples");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lang-c");
    std::fs::create_dir_all(&out_dir).unwrap();
    let work = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&out_dir)
        .unwrap();
    let guests = CGuests {
        hook: out_dir.join("c_file_hook.wasm"),
        task: out_dir.join("hello_c.wasm"),
        task_proxy: out_dir.join("hello_c_proxy.wasm"),
    };
    build_component(
        &toolchain,
        work.path(),
        Build {
            name: "file-hook",
            wit: &[root.join("wit")],
            world: "wtrace:tracing/hook@0.1.0",
            source: examples.join("file-hook/file_hook.c"),
            adapter: "reactor",
            out: &guests.hook,
        },
    );
    let task_wit = [root.join("wit"), examples.join("hello/hello.wit")];
    for (adapter, out) in [("reactor", &guests.task), ("proxy", &guests.task_proxy)] {
        build_component(
            &toolchain,
            work.path(),
            Build {
                name: &format!("hello-{adapter}"),
                wit: &task_wit,
                world: "hello",
                source: examples.join("hello/hello.c"),
                adapter,
                out,
            },
        );
    }
    guests
}

/// `wtrace run` of the seed invocations with `hook` and `task`, spans to a
/// fresh directory, asserting the seed example's output and span tree (as the
/// other languages' tests do); `service` sets `OTEL_SERVICE_NAME`, and is
/// otherwise the hook's own `service.name`.
fn run_seed(
    hook: &Path,
    task: &Path,
    service: Option<&str>,
    expected_service: &str,
) -> (Spans, tempfile::TempDir) {
    let dir = span_dir();
    let env: Vec<(&str, &str)> = service
        .map(|s| ("OTEL_SERVICE_NAME", s))
        .into_iter()
        .collect();
    let spans = guest_langs::run_seed(
        &guest_langs::hook_spec(hook),
        task,
        dir.path(),
        &[],
        &env,
        expected_service,
    );
    (spans, dir)
}

#[test]
fn c_hook_and_c_task_trace_the_seed_example() {
    let c = c_guests();
    let (spans, dir) = run_seed(&c.hook, &c.task, Some("hello-c-service"), "hello-c-service");

    // `wtrace spans` prints the same tree.
    let submit = spans.one("my-func submit").trace_id.clone();
    let shown = Wtrace::new([
        "spans".to_owned(),
        "--trace".to_owned(),
        submit,
        dir.path().display().to_string(),
    ])
    .run();
    let tree = shown.success();
    let order: Vec<usize> = ["my-func submit", "my-func execute", "└─ foo"]
        .iter()
        .map(|name| {
            tree.find(name)
                .unwrap_or_else(|| panic!("{name} missing from:\n{tree}"))
        })
        .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "parents print before children:\n{tree}"
    );
}

#[test]
fn c_task_runs_under_the_rust_file_hook() {
    let c = c_guests();
    run_seed(
        Path::new(guests::FILE_HOOK),
        &c.task,
        None,
        RUST_HOOK_SERVICE,
    );
}

#[test]
fn rust_hello_task_runs_under_the_c_hook() {
    let c = c_guests();
    run_seed(&c.hook, Path::new(guests::HELLO), None, C_HOOK_SERVICE);
}

#[test]
fn c_task_with_the_proxy_adapter_runs_too() {
    let c = c_guests();
    run_seed(&c.hook, &c.task_proxy, None, C_HOOK_SERVICE);
}

#[test]
fn c_hook_errors_are_the_hooks_errors() {
    guest_langs::assert_hook_errors(&c_guests().hook, Path::new(guests::HELLO));
}

#[test]
fn c_hook_reads_every_sampler_of_the_environment() {
    wtrace_tests::assert_env_samplers(&guest_langs::hook_spec(&c_guests().hook), &[]);
}

/// `wtrace check --json` of a C component: its report.
fn check(world: &str, component: &Path) -> serde_json::Value {
    let run = Wtrace::new([
        "check".to_owned(),
        "--json".to_owned(),
        format!("--world={world}"),
        component.display().to_string(),
    ])
    .run();
    let report: serde_json::Value = serde_json::from_str(run.success())
        .unwrap_or_else(|e| panic!("check --json: {e}\n{}", run.stdout));
    assert_eq!(report["ok"], true, "{world} would run: {report:#}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    report
}

/// Import names by status (`provided`, `denied`, `missing`).
fn imports_by_status(report: &serde_json::Value) -> [BTreeSet<String>; 3] {
    let mut by_status: [BTreeSet<String>; 3] = Default::default();
    for import in report["imports"].as_array().expect("imports") {
        let name = import["name"].as_str().unwrap().to_owned();
        let status = &import["status"];
        let slot = if status == "provided" {
            0
        } else if status.get("denied").is_some() {
            1
        } else {
            2
        };
        by_status[slot].insert(name);
    }
    by_status
}

/// The interface names, without versions.
fn unversioned(names: &BTreeSet<String>) -> BTreeSet<&str> {
    names
        .iter()
        .map(|n| n.split_once('@').map_or(n.as_str(), |(name, _)| name))
        .collect()
}

#[test]
fn wtrace_check_finds_every_import_of_the_c_components_provided() {
    let c = c_guests();

    let hook = check("hook", &c.hook);
    let exports: Vec<&str> = hook["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(exports, ["setup-tracing"]);
    let [provided, denied, missing] = imports_by_status(&hook);
    assert!(
        missing.is_empty(),
        "hook imports nothing wtrace lacks: {missing:?}"
    );
    let provided = unversioned(&provided);
    for needed in [
        "wtrace:tracing/provider",
        "wasi:cli/environment", // getenv
    ] {
        assert!(
            provided.contains(needed),
            "hook imports {needed}: {provided:?}"
        );
    }
    // wasi-libc's stdio (snprintf) links the reactor adapter's fd_write,
    // fd_seek and fd_close, whose file paths reference wasi:filesystem. It is
    // linked and refused; the hook never opens a file. Nothing else may be
    // short of provided.
    assert_eq!(
        unversioned(&denied),
        BTreeSet::from(["wasi:filesystem/preopens", "wasi:filesystem/types"]),
        "only the adapter's filesystem imports are not plainly provided"
    );

    for (task, expect_fs) in [(&c.task, true), (&c.task_proxy, false)] {
        let report = check("task", task);
        let exports: BTreeSet<String> = report["exports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["name"].as_str().unwrap(),
                    e["type"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            exports,
            BTreeSet::from([
                "my-func: func()".to_owned(),
                "my-function: func() -> s32".to_owned()
            ])
        );
        let [provided, denied, missing] = imports_by_status(&report);
        assert!(missing.is_empty(), "{}: {missing:?}", task.display());
        let provided = unversioned(&provided);
        for needed in [
            "wtrace:tracing/tracer",
            "wasi:cli/stdout",
            "wasi:io/streams",
        ] {
            assert!(
                provided.contains(needed),
                "{} imports {needed}: {provided:?}",
                task.display()
            );
        }
        if expect_fs {
            assert_eq!(
                unversioned(&denied),
                BTreeSet::from(["wasi:filesystem/preopens", "wasi:filesystem/types"]),
                "reactor adapter: only its filesystem imports are denied"
            );
        } else {
            assert!(
                denied.is_empty(),
                "proxy adapter: every import provided, none denied: {denied:?}"
            );
            assert!(
                !provided
                    .iter()
                    .any(|n| n.starts_with("wasi:filesystem") || *n == "wasi:cli/environment"),
                "proxy adapter: no filesystem or environment: {provided:?}"
            );
        }
    }
}
