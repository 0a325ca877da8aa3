//! Test task: one export per attack on the sandbox. Each must be contained
//! (the task fails or is limited) while its worker stays healthy.

wit_bindgen::generate!({
    inline: "
        package tests:hostile;
        world hostile {
            export spin-forever: func();
            export memory-bomb: func() -> u64;
            export stack-overflow: func(n: u64) -> u64;
            export sleep-forever: func();
            export read-file: func(path: string) -> result<string, string>;
            export write-file: func(path: string) -> result<_, string>;
            export read-env: func() -> list<tuple<string, string>>;
            export connect: func(address: string) -> result<string, string>;
            export read-silent: func(address: string) -> result<string, string>;
            export write-unread: func(address: string) -> result<string, string>;
            export million-spans: func() -> u32;
            export huge-attribute: func(mib: u32);
            export deep-spans: func(n: u32) -> u32;
            export stale-handle: func();
            export stale-span-numbers: func() -> list<string>;
            export malformed-encoded-span: func(at-end: bool);
            export out-of-order: func();
            export huge-result: func(mib: u32) -> string;
            export echo: func(value: string) -> u32;
            export fine: func() -> string;
            export http-get: func(authority: string, path: string) -> result<u16, string>;
        }
    ",
});

use wtrace_guest::wit::wtrace::tracing::tracer as raw;
use wtrace_guest::{in_span, span};

/// A TCP connection over raw wasi:sockets (Rust's std::net is not usable
/// on wasm32-wasip2 yet): its streams, and the socket they belong to (drop
/// it last).
type Connection = (
    wasip2::io::streams::InputStream,
    wasip2::io::streams::OutputStream,
    wasip2::sockets::tcp::TcpSocket,
);

fn tcp_connect(address: &str) -> Result<Connection, String> {
    use wasip2::sockets::instance_network::instance_network;
    use wasip2::sockets::network::{
        ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress,
    };
    use wasip2::sockets::tcp_create_socket::create_tcp_socket;
    let addr: std::net::SocketAddrV4 = address.parse().map_err(|e| format!("{e}"))?;
    let o = addr.ip().octets();
    let remote = IpSocketAddress::Ipv4(Ipv4SocketAddress {
        port: addr.port(),
        address: (o[0], o[1], o[2], o[3]),
    });
    let network = instance_network();
    let socket = create_tcp_socket(IpAddressFamily::Ipv4).map_err(|e| format!("{e:?}"))?;
    socket
        .start_connect(&network, remote)
        .map_err(|e| format!("{e:?}"))?;
    let ready = socket.subscribe();
    let streams = loop {
        match socket.finish_connect() {
            Ok(streams) => break streams,
            Err(ErrorCode::WouldBlock) => ready.block(),
            Err(e) => return Err(format!("{e:?}")),
        }
    };
    drop(ready);
    Ok((streams.0, streams.1, socket))
}

fn raw_span(name: &str) -> raw::Span {
    raw::start_span(
        name,
        &raw::SpanOptions {
            kind: None,
            attributes: Vec::new(),
            links: Vec::new(),
            parent: None,
        },
    )
}

struct Hostile;

impl Guest for Hostile {
    fn spin_forever() {
        let _busy = span("spinning");
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn memory_bomb() -> u64 {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![7u8; 16 << 20]);
            std::hint::black_box(&hoard);
        }
    }

    #[allow(unconditional_recursion)]
    fn stack_overflow(n: u64) -> u64 {
        let pad = std::hint::black_box([n; 64]);
        Self::stack_overflow(n + 1) + pad[3]
    }

    fn sleep_forever() {
        let _asleep = span("asleep");
        std::thread::sleep(std::time::Duration::from_secs(3600 * 24));
    }

    fn read_file(path: String) -> Result<String, String> {
        std::fs::read_to_string(&path).map_err(|e| e.to_string())
    }

    fn write_file(path: String) -> Result<(), String> {
        std::fs::write(&path, b"written by a guest").map_err(|e| e.to_string())
    }

    fn read_env() -> Vec<(String, String)> {
        std::env::vars().collect()
    }

    fn connect(address: String) -> Result<String, String> {
        tcp_connect(&address)?;
        Ok(format!("connected to {address}"))
    }

    fn read_silent(address: String) -> Result<String, String> {
        let (input, output, socket) = tcp_connect(&address)?;
        let read = input.blocking_read(1).map_err(|e| format!("{e:?}"));
        drop((input, output));
        drop(socket);
        Ok(format!("read {} bytes", read?.len()))
    }

    fn write_unread(address: String) -> Result<String, String> {
        let (input, output, socket) = tcp_connect(&address)?;
        let chunk = [0u8; 4096];
        let mut written = 0usize;
        let error = loop {
            match output.blocking_write_and_flush(&chunk) {
                Ok(()) => written += chunk.len(),
                Err(e) => break format!("{e:?} after {written} bytes"),
            }
        };
        drop((input, output));
        drop(socket);
        Err(error)
    }

    fn million_spans() -> u32 {
        for _ in 0..1_000_000 {
            let s = raw_span("one-of-a-million");
            raw::end_span(&s).ok();
        }
        1_000_000
    }

    fn huge_attribute(mib: u32) {
        let s = span("huge");
        s.set_attribute("blob", "x".repeat((mib as usize) << 20));
    }

    fn deep_spans(n: u32) -> u32 {
        let mut open = Vec::new();
        for _ in 0..n {
            open.push(raw_span("deep"));
        }
        std::mem::forget(open);
        n
    }

    fn stale_handle() {
        let s = raw_span("stale");
        let handle = s.take_handle();
        // SAFETY (test of misuse): rebuild the handle after the span was ended and dropped.
        #[allow(unsafe_code)]
        let first = unsafe { raw::Span::from_handle(handle) };
        raw::end_span(&first).ok();
        drop(first);
        #[allow(unsafe_code)]
        let stale = unsafe { raw::Span::from_handle(handle) };
        raw::end_span(&stale).ok();
    }

    fn stale_span_numbers() -> Vec<String> {
        // Span numbers are plain u64s: a guest can pass any. Each misuse is
        // an error or an ignored call, never another span ended.
        let mut start = Vec::new();
        wtrace_guest::encoded::start(&mut start, None, "numbered", &[], &[], None);
        let no_attributes = 0u32.to_le_bytes();
        let keep = raw::start_span_encoded(&start);
        let id = raw::start_span_encoded(&start);
        let mut said = Vec::new();
        said.push(format!(
            "{:?}",
            raw::finish_span_encoded(id, &no_attributes)
        ));
        said.push(format!(
            "{:?}",
            raw::finish_span_encoded(id, &no_attributes)
        ));
        said.push(format!(
            "{:?}",
            raw::finish_span_encoded(u64::MAX, &no_attributes)
        ));
        said.push(format!(
            "{:?}",
            raw::finish_span_encoded(keep ^ (1 << 40), &no_attributes)
        ));
        let stranger = raw::span_handle(12_345);
        stranger.set_attribute(
            "ignored",
            &wtrace_guest::wit::wtrace::tracing::types::Value::Bool(true),
        );
        said.push(format!("recording={}", stranger.is_recording()));
        drop(stranger);
        let kept = raw::span_handle(keep);
        said.push(format!("recording={}", kept.is_recording()));
        said.push(format!("{:?}", raw::finish_span(kept, &[])));
        // Every slot is free now. Zero is no span's number: a handle on it
        // and its drop must leave the free slots as they were, so the next
        // two spans are two spans, each ended once.
        drop(raw::span_handle(0));
        said.push(format!("{:?}", raw::finish_span_encoded(0, &no_attributes)));
        let first = raw::start_span_encoded(&start);
        let second = raw::start_span_encoded(&start);
        said.push(format!(
            "{:?} {:?}",
            raw::finish_span_encoded(second, &no_attributes),
            raw::finish_span_encoded(first, &no_attributes)
        ));
        said
    }

    fn malformed_encoded_span(at_end: bool) {
        // Bytes no encoder writes: a trap that names the call, never a
        // span made of them.
        if at_end {
            let mut start = Vec::new();
            wtrace_guest::encoded::start(&mut start, None, "to-finish", &[], &[], None);
            let id = raw::start_span_encoded(&start);
            // A count of one attribute, and nothing after it.
            raw::finish_span_encoded(id, &1u32.to_le_bytes()).ok();
        } else {
            // A kind and half of a name's length.
            raw::start_span_encoded(&[0, 5, 0]);
        }
    }

    fn out_of_order() {
        let a = raw_span("a");
        let b = raw_span("b");
        let c = raw_span("c");
        raw::end_span(&a).ok();
        raw::end_span(&c).ok();
        raw::end_span(&b).ok();
        in_span("after", |_| {});
    }

    fn huge_result(mib: u32) -> String {
        "r".repeat((mib as usize) << 20)
    }

    fn echo(value: String) -> u32 {
        value.len() as u32
    }

    fn http_get(authority: String, path: String) -> Result<u16, String> {
        use wasip2::http::outgoing_handler::handle;
        use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
        in_span("fetch", |_| {
            let request = OutgoingRequest::new(Fields::new());
            request.set_method(&Method::Get).map_err(|()| "method")?;
            request
                .set_scheme(Some(&Scheme::Http))
                .map_err(|()| "scheme")?;
            request
                .set_authority(Some(&authority))
                .map_err(|()| "authority")?;
            request
                .set_path_with_query(Some(&path))
                .map_err(|()| "path")?;
            let response = handle(request, None).map_err(|e| format!("{e:?}"))?;
            loop {
                match response.get() {
                    Some(result) => {
                        let response = result
                            .map_err(|()| "response taken twice".to_owned())?
                            .map_err(|e| format!("{e:?}"))?;
                        return Ok(response.status());
                    }
                    None => response.subscribe().block(),
                }
            }
        })
    }

    fn fine() -> String {
        "still fine".into()
    }
}

export!(Hostile);
