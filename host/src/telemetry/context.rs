//! Trace context at the edges of a process: the W3C `traceparent` that
//! crosses to other processes (in task envelopes, HTTP headers, the
//! `TRACEPARENT` environment variable), and contexts made from it.

use opentelemetry::Context;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

/// The W3C `traceparent` header of a span context; none when it is invalid.
pub fn traceparent(cx: &SpanContext) -> Option<String> {
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        )
    })
}

/// Parses a W3C `traceparent` (and optional `tracestate`) into a remote span
/// context; none when malformed.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || trace_id.len() != 32 || span_id.len() != 16 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// A context whose span is `cx` (a span of another process, or the execute span).
pub fn context_with_parent(cx: Option<SpanContext>) -> Context {
    match cx {
        Some(cx) => Context::new().with_remote_span_context(cx),
        None => Context::new(),
    }
}

/// A span context as it travels inside the cluster (task envelopes between
/// drivers, heads and workers): its ids as bytes, not W3C text, which is
/// only for the edges (`TRACEPARENT`, HTTP headers, guests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WireContext {
    // As bytes (a length and a copy), not as arrays of 16 and 8 numbers that
    // serde would read one by one.
    #[serde(with = "serde_bytes")]
    trace_id: [u8; 16],
    #[serde(with = "serde_bytes")]
    span_id: [u8; 8],
    flags: u8,
    /// The W3C `tracestate`, when there is one.
    state: Option<String>,
}

impl WireContext {
    /// The context of `cx`; none when it is invalid.
    pub fn of(cx: &SpanContext) -> Option<Self> {
        let state = cx.trace_state();
        cx.is_valid().then(|| Self {
            trace_id: cx.trace_id().to_bytes(),
            span_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8(),
            state: (*state != TraceState::NONE)
                .then(|| state.header())
                .filter(|s| !s.is_empty()),
        })
    }

    /// The remote span context it carries; none when its ids are invalid
    /// (a peer may send anything). A malformed trace state is left out.
    pub fn span_context(&self) -> Option<SpanContext> {
        let trace_id = TraceId::from_bytes(self.trace_id);
        let span_id = SpanId::from_bytes(self.span_id);
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return None;
        }
        let state = self
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::new(self.flags) & TraceFlags::SAMPLED,
            true,
            state,
        ))
    }

    /// Bytes of trace state it carries, for size limits.
    pub fn state_len(&self) -> usize {
        self.state.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_contexts_round_trip_and_refuse_invalid_ids() {
        let cx = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        let wire = WireContext::of(&cx).unwrap();
        let bytes = postcard::to_allocvec(&wire).unwrap();
        // Ids as bytes with their lengths (17 + 9), flags, the state's
        // presence, length and text.
        assert_eq!(bytes.len(), 17 + 9 + 1 + 1 + 1 + "vendor=value".len());
        assert_eq!(&bytes[1..17], &cx.trace_id().to_bytes());
        let back: WireContext = postcard::from_bytes(&bytes).unwrap();
        let back = back.span_context().unwrap();
        assert_eq!(back.trace_id(), cx.trace_id());
        assert_eq!(back.span_id(), cx.span_id());
        assert!(back.is_sampled() && back.is_remote());
        assert_eq!(back.trace_state().header(), "vendor=value");
        assert_eq!(WireContext::of(&SpanContext::NONE), None);
        let zero = WireContext {
            trace_id: [0; 16],
            ..wire
        };
        assert_eq!(zero.span_context(), None);
    }

    #[test]
    fn wire_contexts_read_from_json_and_refuse_wrong_lengths() {
        let wire = WireContext::of(&SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        ))
        .unwrap();
        let json = serde_json::to_string(&wire).unwrap();
        assert_eq!(serde_json::from_str::<WireContext>(&json).unwrap(), wire);
        let mut short = postcard::to_allocvec(&wire).unwrap();
        short[0] = 15;
        assert!(postcard::from_bytes::<WireContext>(&short).is_err());
    }
}
