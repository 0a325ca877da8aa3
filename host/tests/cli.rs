//! The command line's own errors, before any component runs. (The wide
//! integration tests live in the `wtrace-tests` crate; having a test here also
//! makes `cargo test` build the `wtrace` binary they run.)

use std::process::Command;

fn wtrace(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_wtrace"))
        .args(args)
        .output()
        .expect("run wtrace");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_names_the_commands() {
    let (code, stdout, _) = wtrace(&["--help"]);
    assert_eq!(code, Some(0));
    for command in ["run", "spans"] {
        assert!(stdout.contains(command), "{stdout}");
    }
}

#[test]
fn a_missing_component_is_a_clear_error() {
    let (code, _, stderr) = wtrace(&["run", "/nonexistent/tasks.wasm", "f()"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("cannot read the task component /nonexistent/tasks.wasm"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_invocation_is_a_clear_error() {
    let (code, _, stderr) = wtrace(&["run", "/nonexistent/tasks.wasm", "add(1, "]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("invalid invocation \"add(1, \""),
        "{stderr}"
    );
    assert!(stderr.contains("WAVE"), "{stderr}");
}

#[test]
fn bad_limits_are_refused() {
    let (code, _, stderr) = wtrace(&["run", "--max-memory", "lots", "t.wasm", "f()"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("not a size like 512M"), "{stderr}");
}
