//! Span files as Chrome trace-event JSON, which Perfetto and
//! `chrome://tracing` open: a process per OS process (named from its
//! resource), spans as complete slices on tracks that never overlap, and a
//! flow arrow from each `submit` span to the `execute` span it caused.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::{SpanFiles, SpanRecord};

/// The process a span's track belongs to: its pid, or a number made up for
/// spans whose resource names none.
fn process_of(span: &SpanRecord, unknown: &mut HashMap<String, i64>) -> i64 {
    match span.pid {
        Some(pid) => pid,
        None => {
            let next = -(unknown.len() as i64) - 1;
            *unknown
                .entry(span.file.display().to_string())
                .or_insert(next)
        }
    }
}

/// Lays out one process's spans on tracks: a span goes on its parent's
/// track when the parent is in the same process, else on the first track
/// free at its start, so slices on one track only ever nest.
fn tracks(spans: &[&SpanRecord]) -> HashMap<String, usize> {
    let mut sorted: Vec<&&SpanRecord> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut track_of: HashMap<String, usize> = HashMap::new();
    // When each track is free again (the end of its last top-level slice).
    let mut free_at: Vec<u64> = Vec::new();
    for span in sorted {
        let inherited = track_of.get(&span.parent_span_id).copied();
        let track = match inherited {
            Some(track) => track,
            None => match free_at.iter().position(|end| *end <= span.start) {
                Some(track) => track,
                None => {
                    free_at.push(0);
                    free_at.len() - 1
                }
            },
        };
        free_at[track] = free_at[track].max(span.end);
        track_of.insert(span.span_id.clone(), track);
    }
    track_of
}

/// Microseconds, as trace events count time.
fn micros(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl SpanFiles {
    /// Every span (or every span of the traces whose id starts with `only`)
    /// as a Chrome trace-event document.
    pub fn chrome_trace(&self, only: Option<&str>) -> Value {
        let only = only.map(str::to_ascii_lowercase);
        let spans: Vec<&SpanRecord> = self
            .spans
            .iter()
            .filter(|s| only.as_deref().is_none_or(|p| s.trace_id.starts_with(p)))
            .collect();
        let mut unknown = HashMap::new();
        let mut by_process: BTreeMap<i64, Vec<&SpanRecord>> = BTreeMap::new();
        for span in &spans {
            by_process
                .entry(process_of(span, &mut unknown))
                .or_default()
                .push(span);
        }
        let mut events = Vec::new();
        // Where each span sits: its process and track, for the flows.
        let mut placed: HashMap<&str, (i64, usize)> = HashMap::new();
        for (pid, spans) in &by_process {
            events.push(json!({
                "ph": "M", "name": "process_name", "pid": pid,
                "args": {"name": super::process_name(spans[0], *pid)},
            }));
            let tracks = tracks(spans);
            let count = tracks.values().max().map_or(0, |t| t + 1);
            for track in 0..count {
                events.push(json!({
                    "ph": "M", "name": "thread_name", "pid": pid, "tid": track,
                    "args": {"name": format!("track {}", track + 1)},
                }));
            }
            for span in spans {
                let track = tracks[&span.span_id];
                placed.insert(&span.span_id, (*pid, track));
                let mut args = serde_json::Map::new();
                args.insert("trace_id".into(), json!(span.trace_id));
                args.insert("span_id".into(), json!(span.span_id));
                args.insert("kind".into(), json!(span.kind));
                for (key, value) in &span.attributes {
                    args.insert(key.clone(), json!(value));
                }
                if let Some(error) = &span.error {
                    args.insert("error".into(), json!(error));
                }
                if !span.events.is_empty() {
                    args.insert("events".into(), json!(span.events));
                }
                events.push(json!({
                    "ph": "X",
                    "name": span.name,
                    "cat": span.kind,
                    "pid": pid,
                    "tid": track,
                    "ts": micros(span.start),
                    "dur": micros(span.end.saturating_sub(span.start)),
                    "args": args,
                }));
            }
        }
        // An arrow from each submit span to the execute span under it.
        let by_id: HashMap<&str, &SpanRecord> =
            spans.iter().map(|s| (s.span_id.as_str(), *s)).collect();
        let mut flow = 0u64;
        for span in &spans {
            if span.kind != "CONSUMER" {
                continue;
            }
            let Some(submit) = by_id.get(span.parent_span_id.as_str()) else {
                continue;
            };
            let (Some(from), Some(to)) = (
                placed.get(submit.span_id.as_str()),
                placed.get(span.span_id.as_str()),
            ) else {
                continue;
            };
            flow += 1;
            events.push(json!({
                "ph": "s", "id": flow, "name": "submit", "cat": "flow",
                "pid": from.0, "tid": from.1, "ts": micros(submit.start),
            }));
            events.push(json!({
                "ph": "f", "bp": "e", "id": flow, "name": "submit", "cat": "flow",
                "pid": to.0, "tid": to.1, "ts": micros(span.start),
            }));
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }
}
