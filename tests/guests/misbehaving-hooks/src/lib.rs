//! Test hooks that fail in each way a hook can, selected by export name.

wit_bindgen::generate!({
    inline: "
        package tests:misbehaving-hooks;
        world hooks {
            export setup-error: func() -> result<_, string>;
            export setup-trap: func() -> result<_, string>;
            export setup-wrong-type: func(level: u32) -> u32;
            export setup-refused-file: func() -> result<_, string>;
            export setup-refused-endpoint: func() -> result<_, string>;
            export setup-fails-in-workers: func() -> result<_, string>;
            export setup-spin: func() -> result<_, string>;
            export setup-env-report: func() -> result<_, string>;
        }
    ",
});

use wtrace_guest::hook::{self, Exporter, FileExporter, OtlpExporter, OtlpProtocol, Processor};

struct Hooks;

impl Guest for Hooks {
    fn setup_error() -> Result<(), String> {
        Err("no span exporter is configured for this environment".into())
    }

    fn setup_trap() -> Result<(), String> {
        panic!("the hook crashed on purpose")
    }

    fn setup_wrong_type(level: u32) -> u32 {
        level
    }

    fn setup_refused_file() -> Result<(), String> {
        hook::add_span_processor(&Processor::Simple(Exporter::File(FileExporter {
            path: "/etc/wtrace-spans.json".into(),
        })))
    }

    fn setup_refused_endpoint() -> Result<(), String> {
        hook::add_span_processor(&Processor::Batch(Exporter::Otlp(OtlpExporter {
            endpoint: "http://collector.example.com:4317".into(),
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            timeout_ms: 0,
        })))
    }

    fn setup_spin() -> Result<(), String> {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    fn setup_env_report() -> Result<(), String> {
        let names: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
        Err(format!("environment: {}", names.join(",")))
    }

    fn setup_fails_in_workers() -> Result<(), String> {
        let me = hook::current_worker();
        if me.worker_id == "driver" {
            Ok(())
        } else {
            Err(format!("refusing to run in worker {}", me.worker_id))
        }
    }
}

export!(Hooks);
