//! Span files as one self-contained HTML page: each trace a waterfall (a
//! row per span, indented under its parent, bars on a time axis, a colour
//! per process, errors marked), a span's attributes, events, links and log
//! lines on click, and the traces listed with a search by name or id. No
//! network: the data is inside the page, and its content security policy
//! lets it fetch nothing.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{SpanFiles, SpanRecord};

/// The page, with `/*WTRACE_DATA*/` where the data goes.
const TEMPLATE: &str = include_str!("viewer.html");

/// `ns` since the epoch as `YYYY-MM-DD hh:mm:ss.mmm UTC`.
fn utc(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        ns / 1_000_000 % 1000
    )
}

fn span_json(span: &SpanRecord, start: u64, logs: &[&super::LogLine]) -> Value {
    json!({
        "logs": logs.iter().map(|l| json!({ "sev": l.severity, "body": l.body })).collect::<Vec<_>>(),
        "i": span.span_id,
        "p": span.parent_span_id,
        "n": span.name,
        "k": span.kind,
        "s": span.start.saturating_sub(start),
        "e": span.end.saturating_sub(start),
        "pid": span.pid,
        "err": span.error,
        "a": span.attributes,
        "ev": span.events,
        "l": span.links,
    })
}

impl SpanFiles {
    /// Every trace (or those whose id starts with `only`) as the viewer's
    /// page.
    pub fn html(&self, only: Option<&str>) -> String {
        let only = only.map(str::to_ascii_lowercase);
        let logs = self.logs_by_span();
        let mut processes: BTreeMap<i64, String> = BTreeMap::new();
        let mut traces = Vec::new();
        for (id, spans) in self.traces() {
            if only.as_deref().is_some_and(|p| !id.starts_with(p)) {
                continue;
            }
            let start = spans.iter().map(|s| s.start).min().unwrap_or(0);
            let end = spans.iter().map(|s| s.end).max().unwrap_or(start);
            let ids: std::collections::HashSet<&str> =
                spans.iter().map(|s| s.span_id.as_str()).collect();
            let root = spans
                .iter()
                .filter(|s| !ids.contains(s.parent_span_id.as_str()))
                .min_by_key(|s| s.start)
                .map_or("", |s| s.name.as_str());
            for span in &spans {
                if let Some(pid) = span.pid {
                    processes
                        .entry(pid)
                        .or_insert_with(|| super::process_name(span, pid));
                }
            }
            traces.push(json!({
                "id": id,
                "root": root,
                "started": utc(start),
                "end": end - start,
                "spans": spans
                    .iter()
                    .map(|s| span_json(s, start, logs.get(s.span_id.as_str()).map_or(&[], Vec::as_slice)))
                    .collect::<Vec<_>>(),
            }));
        }
        let processes: Vec<Value> = processes
            .into_iter()
            .map(|(pid, name)| json!({"pid": pid, "name": name}))
            .collect();
        let data = json!({"processes": processes, "traces": traces}).to_string();
        // Inside a <script> element: no "</" may end it early.
        TEMPLATE.replace("/*WTRACE_DATA*/", &data.replace("</", "<\\/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(
            utc(1_796_530_210_123_456_789),
            "2026-12-06 04:10:10.123 UTC"
        );
    }

    #[test]
    fn the_page_holds_its_data_and_nothing_closes_its_script_early() {
        let mut files = SpanFiles::default();
        files.spans.push(SpanRecord {
            trace_id: "ab".repeat(16),
            span_id: "cd".repeat(8),
            parent_span_id: String::new(),
            name: "</script><b>x".into(),
            kind: "INTERNAL",
            start: 10,
            end: 20,
            error: None,
            pid: Some(7),
            attributes: Default::default(),
            resource: Default::default(),
            events: Vec::new(),
            links: Vec::new(),
            file: "f.json".into(),
        });
        let page = files.html(None);
        assert!(!page.contains("</script><b>"), "the name is escaped");
        assert!(page.contains("<\\/script><b>x"));
        assert!(page.contains("default-src 'none'"), "fetches nothing");
        assert!(!page.contains("/*WTRACE_DATA*/"));
    }
}
