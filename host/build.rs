//! Builds the default tracing startup hook (`examples/hooks/local-tmp`) as a
//! component and places it in `OUT_DIR` for `include_bytes!`.

include!("build-guests.rs");

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let workspace = Path::new(&manifest).parent().unwrap();
    let hook_dir = workspace.join("examples/hooks/local-tmp");
    let built = build_guests(workspace, &["local-tmp-hook"], &[&hook_dir]);
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("local_tmp_hook.wasm");
    std::fs::copy(&built[0], &out).expect("copy the default hook into OUT_DIR");
    println!("cargo:rerun-if-changed=build-guests.rs");
}
