//! `--profile DIR`: each task's guest CPU profile, sampled at every epoch
//! tick, written in the Firefox Profiler's format as DIR/<task id>.json and
//! named on the task's execute span.

use wtrace_tests::{Spans, guests, span_dir};

#[test]
fn each_task_writes_its_guest_profile_named_on_its_execute_span() {
    let spans_dir = span_dir();
    let profiles = tempfile::tempdir().unwrap();
    let profile_arg = format!("--profile={}", profiles.path().join("p").display());
    let run = wtrace_tests::file_hooked_run(
        spans_dir.path(),
        &[
            profile_arg.as_str(),
            guests::SPAN_EDGES,
            "spin(200)",
            "add(1, 2)",
        ],
    )
    .run();
    run.success();
    let spans = Spans::read(spans_dir.path());
    for name in ["spin execute", "add execute"] {
        let execute = spans.one(name);
        let task_id = &execute.attributes["wtrace.task_id"];
        let path = &execute.attributes["wtrace.profile"];
        assert_eq!(
            std::path::Path::new(path),
            profiles.path().join("p").join(format!("{task_id}.json")),
            "{name}"
        );
        let profile: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("JSON");
        assert!(profile["meta"].is_object(), "a Firefox Profiler profile");
        assert!(profile["threads"].is_array(), "{name}");
    }
    // 200 ms of guest code sampled every 10 ms.
    let spin: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&spans.one("spin execute").attributes["wtrace.profile"]).unwrap(),
    )
    .unwrap();
    let samples = spin["threads"][0]["samples"]["length"].as_u64().unwrap();
    assert!(samples >= 5, "{samples} samples of 200 ms of guest code");
}
