//! Spans reach a real OTLP collector over every protocol the OTLP hook
//! speaks: gRPC, HTTP/protobuf and HTTP/JSON.
//!
//! Each test starts its own rotel (the Rust OpenTelemetry collector) on free
//! loopback ports with its debug log of traces, runs the seed example with the
//! `otlp-hook` pointed at it, and checks what rotel printed it received: the
//! three spans of one trace, parented across processes, with each process's
//! resource. `scripts/test.sh` installs rotel and sets `WTRACE_ROTEL`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wtrace_tests::{Wtrace, guests};

/// How long rotel may take to listen, and spans to show up in its debug log.
const WAIT: Duration = Duration::from_secs(10);

/// The `rotel-agent` binary: `$WTRACE_ROTEL`, else the one `scripts/test.sh`
/// installs into `target/tools/venv`. Panics (never skips) when it is missing.
fn rotel_agent() -> PathBuf {
    if let Some(path) = std::env::var_os("WTRACE_ROTEL").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "WTRACE_ROTEL={} is not a file: run scripts/test.sh, which installs rotel \
             and points WTRACE_ROTEL at its rotel-agent",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let venv_lib = workspace.join("target/tools/venv/lib");
    let found = std::fs::read_dir(&venv_lib).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path().join("site-packages/rotel/rotel-agent"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "rotel is not installed (WTRACE_ROTEL is unset and there is no \
             {}/python3.*/site-packages/rotel/rotel-agent): run scripts/test.sh, which \
             installs the rotel OTLP collector these tests send spans to",
            venv_lib.display()
        )
    })
}

/// A loopback port nothing listens on (right now).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// A running rotel-agent, killed (by its pid) when dropped — also when a test fails.
struct Rotel {
    child: Child,
    grpc_port: u16,
    http_port: u16,
    stdout: PathBuf,
    stderr: PathBuf,
    command_line: String,
    _dir: tempfile::TempDir,
}

enum Startup {
    Ready,
    Exited(ExitStatus),
    TimedOut,
}

impl Rotel {
    /// Starts rotel on free loopback ports and waits until both receivers
    /// accept connections. Retries with new ports if another process took one.
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Rotel::start`] with more arguments for rotel.
    fn start_with(extra: &[&str]) -> Self {
        let agent = rotel_agent();
        for _attempt in 0..5 {
            let mut rotel = Self::spawn(&agent, extra);
            match rotel.wait_until_listening() {
                Startup::Ready => return rotel,
                Startup::Exited(_) if rotel.output().contains("Address already in use") => {
                    continue;
                }
                Startup::Exited(status) => panic!(
                    "rotel exited at startup ({status}); is libpython3.11 installed? run \
                     scripts/test.sh, which installs it\n{}\noutput:\n{}",
                    rotel.command_line,
                    rotel.output()
                ),
                Startup::TimedOut => panic!(
                    "rotel did not listen on 127.0.0.1:{} and 127.0.0.1:{} within {WAIT:?}\n{}\noutput:\n{}",
                    rotel.grpc_port,
                    rotel.http_port,
                    rotel.command_line,
                    rotel.output()
                ),
            }
        }
        panic!("rotel could not bind free loopback ports in 5 attempts");
    }

    fn spawn(agent: &Path, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wtrace-rotel-")
            .tempdir()
            .expect("create a directory for rotel");
        let grpc_port = free_port();
        let http_port = loop {
            let port = free_port();
            if port != grpc_port {
                break port;
            }
        };
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let mut args: Vec<String> = vec![
            "start".into(),
            "--otlp-grpc-endpoint".into(),
            format!("127.0.0.1:{grpc_port}"),
            "--otlp-http-endpoint".into(),
            format!("127.0.0.1:{http_port}"),
            "--exporter".into(),
            "blackhole".into(),
            "--debug-log".into(),
            "traces".into(),
            "--debug-log".into(),
            "logs".into(),
            "--debug-log".into(),
            "metrics".into(),
            "--debug-log-verbosity".into(),
            "detailed".into(),
            "--pid-file".into(),
            dir.path().join("rotel.pid").display().to_string(),
            "--log-file".into(),
            dir.path().join("rotel.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let mut command = Command::new(agent);
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create rotel's stdout file"))
            .stderr(File::create(&stderr).expect("create rotel's stderr file"))
            .env("NO_COLOR", "1");
        // Only the command line configures rotel, whatever the caller's environment.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ROTEL_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", agent.display()));
        Self {
            child,
            grpc_port,
            http_port,
            stdout,
            stderr,
            command_line: format!("{} {}", agent.display(), args.join(" ")),
            _dir: dir,
        }
    }

    fn wait_until_listening(&mut self) -> Startup {
        let accepts = |port: u16| {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        };
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Startup::Exited(status);
            }
            if accepts(self.grpc_port) && accepts(self.http_port) {
                // rotel exits right away when a port is taken: make sure it
                // is rotel, not a stranger, that answered.
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Startup::Exited(status);
                }
                return Startup::Ready;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Startup::TimedOut
    }

    /// Everything rotel printed so far (stdout then stderr), without colours.
    fn output(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        strip_ansi(&format!("{}{}", read(&self.stdout), read(&self.stderr)))
    }

    /// Polls rotel's debug log until it shows a log record whose body is
    /// `body`; returns that record's part of the log.
    fn wait_for_log_record(&self, body: &str, context: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let output = self.output();
            let wanted = format!("Body: Str({body})");
            if let Some(record) = output.split("LogRecord #").find(|r| r.contains(&wanted)) {
                return record.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "rotel received no log record {body:?} within {WAIT:?}\n{context}\nrotel output:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls rotel's debug log until it shows the metric `name`; returns
    /// that metric's part of the log.
    fn wait_for_metric(&self, name: &str, context: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let output = self.output();
            let wanted = format!("-> Name: {name}\n");
            if let Some(metric) = output.split("Metric #").find(|m| m.contains(&wanted)) {
                return metric.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "rotel received no metric {name} within {WAIT:?}\n{context}\nrotel output:\n{output}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls rotel's debug log until it shows every span in `names`, then
    /// returns everything it received.
    fn wait_for_spans(&mut self, names: &[&str], context: &str) -> Vec<ReceivedSpan> {
        let deadline = Instant::now() + WAIT;
        loop {
            let spans = parse_debug_log(&self.output());
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                // Let anything still in flight (a duplicate, say) arrive too.
                std::thread::sleep(Duration::from_millis(500));
                return parse_debug_log(&self.output());
            }
            let exited = self.child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() >= deadline {
                panic!(
                    "rotel did not receive the spans {names:?} within {WAIT:?} (rotel exited: \
                     {exited:?}); it received {:?}\n{context}\nrotel output:\n{}",
                    spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One span as rotel's detailed debug log prints it.
#[derive(Debug, Default, Clone)]
struct ReceivedSpan {
    name: String,
    kind: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: BTreeMap<String, String>,
    /// The attributes of the resource it came with.
    resource: BTreeMap<String, String>,
}

/// Parses rotel's `--debug-log traces --debug-log-verbosity detailed` output,
/// the OpenTelemetry Collector's debug exporter format:
///
/// ```text
/// ResourceSpans #0
/// Resource attributes:
///      -> service.name: Str(my-service)
///      -> process.pid: Int(1234)
/// ScopeSpans #0
/// InstrumentationScope wtrace 0.1.0
/// Span #0
///     Trace ID       : c8d27f86979cb3e06d176d6d462920ba
///     Parent ID      : d7f2d2d61393c002
///     ID             : 90b3048fca956405
///     Name           : foo
///     Kind           : SPAN_KIND_INTERNAL
/// Attributes:
///      -> wtrace.function: Str(my-func)
/// ```
fn parse_debug_log(text: &str) -> Vec<ReceivedSpan> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Resource,
        Span,
        SpanAttributes,
        Other,
    }
    let mut spans = Vec::new();
    let mut resource = BTreeMap::new();
    let mut current: Option<ReceivedSpan> = None;
    let mut section = Section::None;
    // Inside a block of log records (or metrics), up to the next spans.
    let mut elsewhere = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            resource.clear();
            section = Section::None;
            elsewhere = false;
        } else if line.starts_with("ResourceLog #") || line.starts_with("ResourceMetrics #") {
            spans.extend(current.take());
            elsewhere = true;
        } else if elsewhere {
            continue;
        } else if line == "Resource attributes:" {
            section = Section::Resource;
        } else if line.starts_with("ScopeSpans #") {
            spans.extend(current.take());
            section = Section::None;
        } else if line.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(ReceivedSpan {
                resource: resource.clone(),
                ..ReceivedSpan::default()
            });
            section = Section::Span;
        } else if line == "Attributes:" && current.is_some() {
            section = Section::SpanAttributes;
        } else if line.ends_with(':') && !line.contains(' ')
            || line.starts_with("SpanEvent #")
            || line.starts_with("SpanLink #")
        {
            // `Events:`, `Links:` and their entries: not checked here.
            section = Section::Other;
        } else if let Some(attribute) = line.strip_prefix("->") {
            let Some((key, value)) = attribute.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim().to_owned(), attribute_value(value.trim()));
            match (&section, current.as_mut()) {
                (Section::Resource, _) => {
                    resource.insert(key, value);
                }
                (Section::SpanAttributes, Some(span)) => {
                    span.attributes.insert(key, value);
                }
                _ => {}
            }
        } else if section == Section::Span
            && let (Some(span), Some((key, value))) = (current.as_mut(), line.split_once(':'))
        {
            let value = value.trim().to_owned();
            match key.trim() {
                "Trace ID" => span.trace_id = value,
                "Parent ID" => span.parent_span_id = value,
                "ID" => span.span_id = value,
                "Name" => span.name = value,
                "Kind" => span.kind = value,
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

/// `Str(abc)` → `abc`, `Int(12)` → `12`.
fn attribute_value(value: &str) -> String {
    if let Some((kind, rest)) = value.split_once('(')
        && !kind.is_empty()
        && kind.chars().all(|c| c.is_ascii_alphanumeric())
        && let Some(inner) = rest.strip_suffix(')')
    {
        return inner.to_owned();
    }
    value.to_owned()
}

fn is_hex_id(id: &str, len: usize) -> bool {
    id.len() == len && id.chars().all(|c| c.is_ascii_hexdigit()) && id.chars().any(|c| c != '0')
}

/// A service name no other test (or run) uses.
fn unique_service_name(protocol: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "wtrace-otlp-{}-{}-{nanos:x}",
        protocol.replace('/', "-"),
        std::process::id()
    )
}

/// Runs the seed example with the OTLP hook sending to a fresh rotel over
/// `protocol`, and checks the trace rotel received.
/// `wtrace` without the caller's `OTEL_*` variables: only those a test sets
/// configure the hook.
fn only_our_otel_variables(mut wtrace: Wtrace) -> Wtrace {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            wtrace.command().env_remove(key);
        }
    }
    wtrace
}

fn spans_reach_rotel_over(protocol: &str) {
    let mut rotel = Rotel::start();
    let port = match protocol {
        "grpc" => rotel.grpc_port,
        _ => rotel.http_port,
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let service = unique_service_name(protocol);

    let wtrace = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::OTLP_HOOK),
        "--num-workers=2".to_owned(),
        guests::HELLO.to_owned(),
        "my-func()".to_owned(),
    ]);
    let run = only_our_otel_variables(wtrace)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_SERVICE_NAME", &service)
        .run();
    let stdout = run.success();
    let worker_pid: u32 = stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("(my-func pid=")?
                .strip_suffix(") hello from inside span foo")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("the task's output is missing:\n{stdout}"));

    let context = format!(
        "wtrace ran with OTEL_EXPORTER_OTLP_PROTOCOL={protocol} \
         OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}\nrotel: {}\nwtrace stderr:\n{}",
        rotel.command_line, run.stderr
    );
    let spans = rotel.wait_for_spans(&["my-func submit", "my-func execute", "foo"], &context);
    let dump = || format!("{spans:#?}\n{context}");

    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["foo", "my-func execute", "my-func submit"],
        "rotel received each span exactly once\n{}",
        dump()
    );
    let one = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
    let (submit, execute, guest) = (one("my-func submit"), one("my-func execute"), one("foo"));

    for span in [submit, execute, guest] {
        assert!(
            is_hex_id(&span.trace_id, 32) && is_hex_id(&span.span_id, 16),
            "{}: trace id {:?} / span id {:?} are not valid hex ids\n{}",
            span.name,
            span.trace_id,
            span.span_id,
            dump()
        );
        assert_eq!(
            span.resource.get("service.name"),
            Some(&service),
            "{}'s resource has OTEL_SERVICE_NAME\n{}",
            span.name,
            dump()
        );
    }
    assert_eq!(
        submit.parent_span_id,
        "",
        "without TRACEPARENT the submit span is a root\n{}",
        dump()
    );
    assert!(
        submit.trace_id == execute.trace_id && execute.trace_id == guest.trace_id,
        "the three spans share one trace id\n{}",
        dump()
    );
    assert_eq!(
        execute.parent_span_id,
        submit.span_id,
        "execute's parent is the submit span\n{}",
        dump()
    );
    assert_eq!(
        guest.parent_span_id,
        execute.span_id,
        "foo's parent is the execute span\n{}",
        dump()
    );
    assert_eq!(submit.kind, "SPAN_KIND_PRODUCER", "{}", dump());
    assert_eq!(execute.kind, "SPAN_KIND_CONSUMER", "{}", dump());
    for span in [submit, execute] {
        assert_eq!(
            span.attributes.get("wtrace.function").map(String::as_str),
            Some("my-func"),
            "{} carries its function\n{}",
            span.name,
            dump()
        );
    }

    let pid = |span: &ReceivedSpan| -> u32 {
        span.resource
            .get("process.pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}'s resource has no numeric process.pid\n{}",
                    span.name,
                    dump()
                )
            })
    };
    assert_eq!(
        pid(submit),
        run.pid,
        "the submit span comes from the driver\n{}",
        dump()
    );
    assert_eq!(
        pid(execute),
        worker_pid,
        "the execute span comes from the worker that printed the output\n{}",
        dump()
    );
    assert_eq!(
        pid(guest),
        worker_pid,
        "the guest's span comes from that worker too\n{}",
        dump()
    );
    assert_ne!(
        pid(submit),
        pid(execute),
        "driver and worker are different processes\n{}",
        dump()
    );

    // The task's output line arrived too, as a log record in span foo.
    let record = rotel.wait_for_log_record("hello from inside span foo", &context);
    assert!(
        record.contains(&format!("Span ID        : {}", guest.span_id))
            && record.contains(&format!("Trace ID       : {}", guest.trace_id)),
        "the record is joined to foo ({}):\n{record}",
        guest.span_id
    );
    assert!(
        record.contains("SeverityText: INFO") && record.contains("wtrace.function: Str(my-func)"),
        "{record}"
    );

    // And the worker's metrics: one my-func task started. (Over http/json
    // the count travels as the string "1", as OTLP/JSON writes 64-bit
    // integers, and rotel's debug log shows no value for it.)
    let metric = rotel.wait_for_metric("wtrace.tasks.started", &context);
    assert!(metric.contains("wtrace.function: Str(my-func)"), "{metric}");
    if protocol != "http/json" {
        assert!(metric.contains("Value: 1"), "{metric}");
    }
}

#[test]
fn spans_reach_a_collector_over_grpc() {
    spans_reach_rotel_over("grpc");
}

#[test]
fn spans_reach_a_collector_over_http_protobuf() {
    spans_reach_rotel_over("http/protobuf");
}

#[test]
fn spans_reach_a_collector_over_http_json() {
    spans_reach_rotel_over("http/json");
}

/// A receiver that answers, but not at the path the spans go to: every
/// process says at exit how many spans it lost, where to, the receiver's
/// answer and what to do about it; the run itself still succeeds.
#[test]
fn spans_a_receiver_refuses_are_said_lost_with_its_answer_and_what_to_do() {
    let rotel = Rotel::start_with(&["--otlp-receiver-traces-http-path", "/elsewhere"]);
    let endpoint = format!("http://127.0.0.1:{}", rotel.http_port);
    let wtrace = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::OTLP_HOOK),
        guests::HELLO.to_owned(),
        "my-func()".to_owned(),
    ]);
    let run = only_our_otel_variables(wtrace)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .run();
    run.success();
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains(": lost "))
        .collect();
    let worker_said = format!(
        "lost 2 of 2 spans bound for OTLP http/json to {endpoint}/v1/traces: \
         Operation failed: HTTP export failed with status code: 404 (the receiver has \
         nothing at that path"
    );
    let driver_said = worker_said.replace("lost 2 of 2", "lost 1 of 1");
    assert_eq!(
        said.len(),
        2,
        "one line each from the driver and the worker:\n{}",
        run.stderr
    );
    assert!(
        said.iter().any(|line| line.contains(&worker_said)),
        "the worker's execute and foo spans:\n{}",
        run.stderr
    );
    assert!(
        said.iter().any(|line| line.contains(&driver_said)),
        "the driver's submit span:\n{}",
        run.stderr
    );
}

#[test]
fn the_debug_log_parser_reads_rotel_output() {
    let log = "\x1b[2m2026-11-25T13:00:33Z\x1b[0m \x1b[32m INFO\x1b[0m Starting Rotel.
ResourceSpans #0
Resource SchemaURL: 
Resource attributes:
     -> service.name: Str(svc (a))
     -> process.pid: Int(16555)
ScopeSpans #0
ScopeSpans SchemaURL: 
InstrumentationScope wtrace 0.1.0
Span #0
    Trace ID       : c8d27f86979cb3e06d176d6d462920ba
    Parent ID      : d7f2d2d61393c002
    ID             : 90b3048fca956405
    Name           : foo: bar
    Kind           : SPAN_KIND_INTERNAL
Start time: 1795611638364267029
    Status code    : STATUS_CODE_UNSET
    Status message : 
Events:
SpanEvent #0
     -> Name: ignored
Span #1
    Trace ID       : c8d27f86979cb3e06d176d6d462920ba
    Parent ID      : 
    ID             : d7f2d2d61393c002
    Name           : root
    Kind           : SPAN_KIND_PRODUCER
Attributes:
     -> wtrace.function: Str(my-func)
ResourceLog #0
Resource attributes:
     -> process.pid: Int(99)
LogRecord #0
Body: Str(a line)
Attributes:
     -> log.iostream: Str(stdout)
ResourceSpans #1
Resource attributes:
     -> process.pid: Int(7)
ScopeSpans #0
Span #0
    Trace ID       : 00000000000000000000000000000001
    Parent ID      : 
    ID             : 0000000000000002
    Name           : other
    Kind           : SPAN_KIND_INTERNAL
";
    let spans = parse_debug_log(&strip_ansi(log));
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(spans[0].name, "foo: bar");
    assert_eq!(spans[0].parent_span_id, "d7f2d2d61393c002");
    assert_eq!(spans[0].span_id, "90b3048fca956405");
    assert_eq!(spans[0].kind, "SPAN_KIND_INTERNAL");
    assert_eq!(spans[0].resource["service.name"], "svc (a)");
    assert_eq!(spans[0].resource["process.pid"], "16555");
    assert!(spans[0].attributes.is_empty(), "{:?}", spans[0].attributes);
    assert_eq!(spans[1].name, "root");
    assert_eq!(spans[1].parent_span_id, "");
    assert_eq!(
        spans[1].attributes.len(),
        1,
        "a log record's attributes are not the span's: {:?}",
        spans[1].attributes
    );
    assert_eq!(spans[1].attributes["wtrace.function"], "my-func");
    assert_eq!(spans[1].resource["process.pid"], "16555");
    assert_eq!(spans[2].name, "other");
    assert_eq!(spans[2].resource.get("service.name"), None);
    assert_eq!(spans[2].resource["process.pid"], "7");
}
