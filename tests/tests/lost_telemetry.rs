//! Lost spans said plainly: every process whose exporter lost spans says,
//! at exit, one line per exporter: how many of how many, where they were
//! going and why. `wtrace run` keeps its exit status unless
//! `--fail-on-lost-telemetry`, which makes it 3.

use wtrace_tests::{Wtrace, guests};

/// A port on 127.0.0.1 where nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn run_to_nowhere(port: u16, extra: &[&str]) -> wtrace_tests::Run {
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}:setup-tracing", guests::OTLP_HOOK),
        "--num-workers=2".to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args.extend([
        guests::HELLO.to_owned(),
        "my-func()".to_owned(),
        "my-func()".to_owned(),
    ]);
    Wtrace::new(args)
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")
        .run()
}

#[test]
fn spans_no_receiver_took_are_counted_and_said_with_the_reason_and_the_flag_makes_it_exit_3() {
    let port = closed_port();
    let run = run_to_nowhere(port, &[]);
    assert_eq!(
        run.status,
        Some(0),
        "the run keeps its status: {}",
        run.stderr
    );
    assert_eq!(
        run.stdout.matches("hello from inside span foo").count(),
        2,
        "{}",
        run.stdout
    );
    let target = format!("OTLP http/protobuf to http://127.0.0.1:{port}/v1/traces");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("lost ") && l.contains(&target))
        .collect();
    // The driver lost its 2 submit spans; the workers their execute and foo
    // spans, 4 in all, however the two tasks were spread.
    let lost: u64 = lines
        .iter()
        .map(|l| {
            let after = &l[l.find("lost ").unwrap() + 5..];
            let (n, rest) = after.split_once(" of ").unwrap();
            let (of, _) = rest.split_once(' ').unwrap();
            assert_eq!(n, of, "all of them: {l}");
            n.parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(lost, 6, "{}", run.stderr);
    assert!(
        lines.len() >= 2,
        "the driver and a worker each say theirs: {}",
        run.stderr
    );
    for line in &lines {
        assert!(line.starts_with("wtrace (pid "), "{line}");
        let why = line.split(": ").skip(2).collect::<Vec<_>>().join(": ");
        assert!(!why.is_empty(), "and why: {line}");
    }

    // The workers' log records (each task's line) and every process's
    // metrics were bound there too.
    let lost_records: u64 = run
        .stderr
        .lines()
        .filter_map(|l| {
            let target = format!(
                " log records bound for OTLP http/protobuf to http://127.0.0.1:{port}/v1/logs: "
            );
            let (head, _) = l.split_once(&target)?;
            head.rsplit_once("lost ")?
                .1
                .split_once(" of ")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(lost_records, 2, "{}", run.stderr);
    let metrics_target = format!(
        "metric exports bound for OTLP http/protobuf to http://127.0.0.1:{port}/v1/metrics"
    );
    assert!(
        run.stderr
            .lines()
            .filter(|l| l.contains(&metrics_target))
            .count()
            >= 2,
        "the driver's and a worker's: {}",
        run.stderr
    );

    let failing = run_to_nowhere(port, &["--fail-on-lost-telemetry"]);
    assert_eq!(failing.status, Some(3), "{}", failing.stderr);
    assert_eq!(
        failing.stdout.matches("hello from inside span foo").count(),
        2
    );
}

#[test]
fn without_losses_the_flag_changes_nothing() {
    let dir = wtrace_tests::span_dir();
    let run = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "--fail-on-lost-telemetry".to_owned(),
        guests::HELLO.to_owned(),
        "my-func()".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path())
    .run();
    assert_eq!(run.status, Some(0), "{}", run.stderr);
    assert!(!run.stderr.contains("lost "), "{}", run.stderr);
}
