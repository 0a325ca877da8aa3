//! Builds the test guests and the example components for wasm32-wasip2 and
//! writes one path constant per guest, so tests name guests, never files.

use std::fmt::Write as _;

include!("../host/build-guests.rs");

/// (package, constant) for every guest the tests use.
const GUESTS: &[(&str, &str)] = &[
    ("hello", "HELLO"),
    ("console-hook", "CONSOLE_HOOK"),
    ("otlp-hook", "OTLP_HOOK"),
    ("local-tmp-hook", "LOCAL_TMP_HOOK"),
    ("file-hook", "FILE_HOOK"),
    ("misbehaving-hooks", "MISBEHAVING_HOOKS"),
    ("span-edges", "SPAN_EDGES"),
    ("fanout", "FANOUT"),
    ("unknown-import", "UNKNOWN_IMPORT"),
    ("hostile", "HOSTILE"),
    ("ecosystem", "ECOSYSTEM"),
    ("wasi-otel", "WASI_OTEL"),
    ("actors", "ACTORS"),
    ("counter", "COUNTER"),
    ("logging", "LOGGING"),
];

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let workspace = Path::new(&manifest).parent().unwrap();
    let packages: Vec<&str> = GUESTS.iter().map(|(p, _)| *p).collect();
    let watch = [workspace.join("examples"), workspace.join("tests/guests")];
    let watch: Vec<&Path> = watch.iter().map(|p| p.as_path()).collect();
    let built = build_guests(workspace, &packages, &watch);
    let mut code = String::new();
    for ((package, constant), path) in GUESTS.iter().zip(&built) {
        writeln!(code, "/// The `{package}` guest component.").unwrap();
        writeln!(
            code,
            "pub const {constant}: &str = {:?};",
            path.display().to_string()
        )
        .unwrap();
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("guests.rs");
    std::fs::write(out, code).unwrap();
    println!("cargo:rerun-if-changed=../host/build-guests.rs");
}
