//! The Rust API: a local cluster started in-process, a `Client` submitting
//! many tasks and streaming their results, its submit spans in memory.

use futures::StreamExt as _;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use wtrace::cluster::{LocalCluster, LocalClusterOptions};
use wtrace::runtime::wave::Invocation;
use wtrace::{Client, Telemetry};
use wtrace_tests::{guests, wtrace_bin};

#[test]
fn a_client_submits_many_and_streams_results() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut options = LocalClusterOptions::new(wtrace_bin());
        options.num_workers = 2;
        let cluster = LocalCluster::start(options).await.unwrap();
        assert_eq!(cluster.worker_pids().len(), 2);

        let exporter = InMemorySpanExporter::default();
        let telemetry = Telemetry::new(
            SdkTracerProvider::builder()
                .with_simple_exporter(exporter.clone())
                .build(),
        );
        let client = cluster.client(Some(telemetry)).await.unwrap();
        let component = client
            .upload_file(guests::SPAN_EDGES.as_ref())
            .await
            .unwrap();
        let calls: Vec<Invocation> = (0..50)
            .map(|i| format!("add({i}, {i})").parse().unwrap())
            .collect();
        let tasks = client
            .submit_many(&component, &calls, &opentelemetry::Context::new())
            .await
            .unwrap();

        let mut values = Vec::new();
        let mut pids = std::collections::HashSet::new();
        let mut results = Client::results(tasks);
        while let Some(result) = results.next().await {
            let result = result.unwrap();
            assert_eq!(result.function, "add");
            pids.insert(result.pid);
            values.push(result.value.unwrap().parse::<u32>().unwrap());
        }
        values.sort_unstable();
        assert_eq!(values, (0..50).map(|i| 2 * i).collect::<Vec<_>>());
        assert!(pids.iter().all(|pid| cluster.worker_pids().contains(pid)));

        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 50, "one submit span per task");
        assert!(
            spans
                .iter()
                .all(|s| s.name == "add submit" && s.span_kind == SpanKind::Producer)
        );

        // A bad invocation comes back as that task's error, not the client's.
        let bad = client
            .submit(
                &component,
                &"add(1)".parse().unwrap(),
                &opentelemetry::Context::new(),
            )
            .await
            .unwrap()
            .get()
            .await
            .unwrap();
        assert!(bad.value.unwrap_err().message.contains("invalid arguments"));

        client.shutdown_cluster().await.unwrap();
        cluster.stop().await;
    });
}
