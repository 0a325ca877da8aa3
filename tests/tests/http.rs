//! Outgoing HTTP from tasks: denied unless granted; with the hook's
//! `http-client` instrumentation, each request is a CLIENT span whose
//! `traceparent` reaches the server — and only then.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;

use wtrace_tests::{Spans, Wtrace, assert_child_of, guests, span_dir};

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers 200 and reports each
/// request's lower-cased headers.
fn server() -> (String, mpsc::Receiver<Vec<(String, String)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = Vec::new();
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            headers.push((":request".to_owned(), line.trim().to_owned()));
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.trim().split_once(':') {
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = tx.send(headers);
        }
    });
    (address, rx)
}

fn run(address: &str, grant: bool, instrument: bool) -> (wtrace_tests::Run, Spans) {
    let dir = span_dir();
    let mut args = vec![
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "-n1".to_owned(),
    ];
    if grant {
        args.push(format!("--allow-http={address}"));
    }
    args.push(guests::HOSTILE.to_owned());
    args.push(format!("http-get({address:?}, \"/hello?x=1\")"));
    let mut command = Wtrace::new(args).env("WTRACE_SPAN_DIR", dir.path());
    if instrument {
        command = command.env("WTRACE_TEST_INSTRUMENT", "http-client");
    }
    let run = command.run();
    (run, Spans::read(dir.path()))
}

#[test]
fn instrumented_requests_are_client_spans_that_propagate_their_context() {
    let (address, requests) = server();
    let (run, spans) = run(&address, true, true);
    assert_eq!(run.success(), "ok(200)\n");
    let headers = requests.recv().unwrap();
    assert_eq!(headers[0].1, "GET /hello?x=1 HTTP/1.1");
    let traceparent = headers
        .iter()
        .find(|(k, _)| k == "traceparent")
        .map(|(_, v)| v.clone())
        .expect("the request carries a traceparent");

    let fetch = spans.one("fetch");
    let client = spans.one("GET");
    assert_eq!(client.kind, "CLIENT");
    assert_child_of(client, fetch);
    assert_eq!(
        traceparent,
        format!("00-{}-{}-01", client.trace_id, client.span_id)
    );
    assert_eq!(client.attributes["http.request.method"], "GET");
    assert_eq!(client.attributes["http.response.status_code"], "200");
    assert_eq!(client.attributes["server.address"], "127.0.0.1");
    assert!(client.attributes["url.full"].ends_with("/hello?x=1"));
}

#[test]
fn without_the_instrumentation_no_span_and_no_header() {
    let (address, requests) = server();
    let (run, spans) = run(&address, true, false);
    assert_eq!(run.success(), "ok(200)\n");
    let headers = requests.recv().unwrap();
    assert!(
        !headers.iter().any(|(k, _)| k == "traceparent"),
        "{headers:?}"
    );
    assert!(spans.named("GET").is_empty());
    spans.one("fetch");
}

#[test]
fn http_is_denied_unless_granted() {
    let (address, requests) = server();
    let (run, _) = run(&address, false, true);
    assert!(
        run.failure().contains("HttpRequestDenied"),
        "{}",
        run.stderr
    );
    assert!(
        requests.try_recv().is_err(),
        "no request reached the server"
    );
}

#[test]
fn unknown_instrumentations_are_an_error_listing_the_known_ones() {
    let dir = span_dir();
    let run = Wtrace::new([
        "run".to_owned(),
        format!("--tracing-startup-hook={}", guests::FILE_HOOK),
        format!("--allow-span-dir={}", dir.path().display()),
        "-n1".to_owned(),
        guests::HELLO.to_owned(),
        "my-function()".to_owned(),
    ])
    .env("WTRACE_SPAN_DIR", dir.path())
    .env("WTRACE_TEST_INSTRUMENT", "telepathy")
    .run();
    let stderr = run.failure();
    assert!(
        stderr.contains("unknown instrumentation \"telepathy\"; known: http-client"),
        "{stderr}"
    );
}
