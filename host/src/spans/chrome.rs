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

/// Lays out one process's spans on tracks so that slices on one track only
/// ever nest or follow each other: a span goes on its parent's track when
/// it fits there (the parent is in the same process, and the span overlaps
/// nothing there it does not nest in: siblings may overlap, and a child may
/// outlive its parent), else on the first track where it fits, else a new
/// one.
fn tracks(spans: &[&SpanRecord]) -> HashMap<String, usize> {
    let mut sorted: Vec<&&SpanRecord> = spans.iter().collect();
    sorted.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    let mut track_of: HashMap<String, usize> = HashMap::new();
    // Per track, the ends of the slices open at the latest start seen,
    // innermost last.
    let mut open: Vec<Vec<u64>> = Vec::new();
    // Whether `span` nests in what is open on a track (slices that ended
    // before it started are closed first: spans come in start order).
    let fits = |open: &mut Vec<u64>, span: &SpanRecord| {
        while open.last().is_some_and(|end| *end <= span.start) {
            open.pop();
        }
        open.last().is_none_or(|end| span.end <= *end)
    };
    for span in sorted {
        let parents = track_of.get(&span.parent_span_id).copied();
        let track = match parents.filter(|track| fits(&mut open[*track], span)) {
            Some(track) => track,
            None => match (0..open.len()).find(|track| fits(&mut open[*track], span)) {
                Some(track) => track,
                None => {
                    open.push(Vec::new());
                    open.len() - 1
                }
            },
        };
        open[track].push(span.end);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: u64, end: u64) -> SpanRecord {
        super::super::tests::record("aa", id, parent, start, end)
    }

    #[test]
    fn slices_on_a_track_nest_or_follow_even_when_siblings_overlap_or_outlive_their_parent() {
        // Two submissions of one task that overlap each other, and a child
        // that ends after its parent.
        let spans = [
            span("parent", "", 0, 100),
            span("submit-a", "parent", 10, 50),
            span("submit-b", "parent", 20, 60),
            span("late", "parent", 70, 130),
            span("next", "", 110, 120),
        ];
        let refs: Vec<&SpanRecord> = spans.iter().collect();
        let track_of = tracks(&refs);
        for a in &spans {
            for b in &spans {
                if track_of[&a.span_id] != track_of[&b.span_id] {
                    continue;
                }
                let nested = (a.start <= b.start && b.end <= a.end)
                    || (b.start <= a.start && a.end <= b.end);
                let apart = a.end <= b.start || b.end <= a.start;
                assert!(
                    nested || apart,
                    "{} and {} half-overlap on one track",
                    a.span_id,
                    b.span_id
                );
            }
        }
        // A child that fits stays on its parent's track.
        assert_eq!(track_of["submit-a"], track_of["parent"]);
    }
}
