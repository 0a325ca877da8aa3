//! The compact encoding of `start-span-encoded` and `finish-span-encoded`
//! (specified in `wit/tracer.wit`): a whole span description in one
//! buffer, which the host copies at once instead of lifting a record of
//! strings, variants and lists. The SDK's spans start and end through it,
//! written straight from the builder's arguments; this is the reference
//! encoder for SDKs in other languages.

use crate::{KeyValue, SpanContext, SpanKind, Value};

/// A value that can be an attribute, written straight into an encoding:
/// a string attribute costs no `String` of its own.
pub trait AttributeValue {
    /// Appends the value's tag and bytes.
    fn encode(&self, out: &mut Vec<u8>);
}

/// Appends `bytes`. In a guest, `memcpy` is wasm's `memory.copy`, a call
/// out to the engine that costs more than copying a few bytes; built for
/// size (`opt-level = "s"`), even the fixed-size `extend_from_slice` of a
/// length reaches it, and pushing byte by byte costs more still. So the
/// encoding's short pieces (tags, lengths, names, keys, short values) are
/// copied as one or two fixed-size loads and stores.
#[inline(always)]
pub(crate) fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n > 16 {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(n);
    let at = out.len();
    let src = bytes.as_ptr();
    #[allow(unsafe_code)]
    // SAFETY: `reserve` made room for `n` more bytes after `at`; each copy
    // reads within `bytes` and writes within `at..at + n` (the two copies of
    // a size overlap where `n` is less than twice it), so all of
    // `at..at + n` is written before the length covers it.
    unsafe {
        let dst = out.as_mut_ptr().add(at);
        let copy = |size: usize| {
            std::ptr::copy_nonoverlapping(src, dst, size);
            std::ptr::copy_nonoverlapping(src.add(n - size), dst.add(n - size), size);
        };
        match n {
            8.. => copy(8),
            4.. => copy(4),
            2.. => copy(2),
            1 => copy(1),
            0 => {}
        }
        out.set_len(at + n);
    }
}

fn str(out: &mut Vec<u8>, text: &str) {
    put(out, &(text.len() as u32).to_le_bytes());
    put(out, text.as_bytes());
}

fn count(out: &mut Vec<u8>, n: usize) {
    put(out, &(n as u32).to_le_bytes());
}

fn string_list<S: AsRef<str>>(out: &mut Vec<u8>, list: &[S]) {
    out.push(4);
    count(out, list.len());
    for s in list {
        str(out, s.as_ref());
    }
}

macro_rules! attribute_value {
    ($($t:ty => |$v:ident, $out:ident| $e:expr),* $(,)?) => {
        $(impl AttributeValue for $t {
            fn encode(&self, $out: &mut Vec<u8>) {
                let $v = self;
                $e
            }
        })*
    };
}

attribute_value! {
    &str => |v, out| { out.push(0); str(out, v) },
    String => |v, out| { out.push(0); str(out, v) },
    &String => |v, out| { out.push(0); str(out, v) },
    bool => |v, out| put(out, &[1, u8::from(*v)]),
    i64 => |v, out| { out.push(2); put(out, &v.to_le_bytes()) },
    i32 => |v, out| i64::from(*v).encode(out),
    u32 => |v, out| i64::from(*v).encode(out),
    usize => |v, out| i64::try_from(*v).unwrap_or(i64::MAX).encode(out),
    u64 => |v, out| i64::try_from(*v).unwrap_or(i64::MAX).encode(out),
    f64 => |v, out| { out.push(3); put(out, &v.to_bits().to_le_bytes()) },
    Vec<String> => |v, out| string_list(out, v),
    &[&str] => |v, out| string_list(out, v),
    Vec<i64> => |v, out| {
        out.push(5);
        count(out, v.len());
        v.iter().for_each(|i| put(out, &i.to_le_bytes()));
    },
    Vec<f64> => |v, out| {
        out.push(6);
        count(out, v.len());
        v.iter().for_each(|f| put(out, &f.to_bits().to_le_bytes()));
    },
    Vec<bool> => |v, out| {
        out.push(7);
        count(out, v.len());
        out.extend(v.iter().map(|b| u8::from(*b)));
    },
    Value => |v, out| match v {
        Value::String(s) => s.encode(out),
        Value::Bool(b) => b.encode(out),
        Value::S64(i) => i.encode(out),
        Value::F64(f) => f.encode(out),
        Value::StringList(l) => l.encode(out),
        Value::S64List(l) => l.encode(out),
        Value::F64List(l) => l.encode(out),
        Value::BoolList(l) => l.encode(out),
    },
    &Value => |v, out| (*v).encode(out),
}

/// Appends one attribute: its key, then its value.
pub fn attribute(out: &mut Vec<u8>, key: &str, value: &impl AttributeValue) {
    str(out, key);
    value.encode(out);
}

/// Appends attributes: their count, then each key and value.
pub fn attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) {
    count(out, attributes.len());
    for kv in attributes {
        attribute(out, &kv.key, &kv.value);
    }
}

/// The kind's byte.
pub fn kind(kind: Option<SpanKind>) -> u8 {
    match kind {
        None | Some(SpanKind::Internal) => 0,
        Some(SpanKind::Server) => 1,
        Some(SpanKind::Client) => 2,
        Some(SpanKind::Producer) => 3,
        Some(SpanKind::Consumer) => 4,
    }
}

/// Appends a span's kind and name: the head of a start.
pub fn head(out: &mut Vec<u8>, kind: Option<SpanKind>, name: &str) {
    out.push(self::kind(kind));
    str(out, name);
}

/// Appends `hex` as bytes; zeros where it is not hex (an invalid id).
fn hex_bytes(out: &mut Vec<u8>, hex: &str, n: usize) {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let bytes = hex.as_bytes();
    let valid = bytes.len() == 2 * n && bytes.iter().all(|c| digit(*c).is_some());
    for i in 0..n {
        out.push(if valid {
            digit(bytes[2 * i]).unwrap_or(0) << 4 | digit(bytes[2 * i + 1]).unwrap_or(0)
        } else {
            0
        });
    }
}

/// Appends a span context.
pub fn context(out: &mut Vec<u8>, cx: &SpanContext) {
    hex_bytes(out, &cx.trace_id, 16);
    hex_bytes(out, &cx.span_id, 8);
    out.push(u8::from(cx.sampled) | u8::from(cx.is_remote) << 1);
    let state: Vec<String> = cx
        .trace_state
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    str(out, &state.join(","));
}

/// Appends the tail of a start: the links and the parent.
pub fn tail(out: &mut Vec<u8>, links: &[SpanContext], parent: Option<&SpanContext>) {
    count(out, links.len());
    for link in links {
        context(out, link);
    }
    match parent {
        None => out.push(0),
        Some(parent) => {
            out.push(1);
            context(out, parent);
        }
    }
}

/// Appends a whole start: kind, name, attributes, links and parent.
pub fn start(
    out: &mut Vec<u8>,
    kind: Option<SpanKind>,
    name: &str,
    attrs: &[KeyValue],
    links: &[SpanContext],
    parent: Option<&SpanContext>,
) {
    head(out, kind, name);
    attributes(out, attrs);
    tail(out, links, parent);
}

#[cfg(test)]
mod tests {
    use super::put;

    #[test]
    fn short_pieces_are_appended_as_extend_from_slice_appends_them() {
        let source: Vec<u8> = (1..=40).collect();
        for before in [0, 1, 3, 8, 13] {
            for len in 0..=source.len() {
                // A buffer full to capacity, so `put` must grow it too.
                let mut put_into: Vec<u8> = vec![0xee; before];
                put_into.shrink_to_fit();
                let mut expected = put_into.clone();
                put(&mut put_into, &source[..len]);
                expected.extend_from_slice(&source[..len]);
                assert_eq!(put_into, expected, "{len} bytes after {before}");
            }
        }
    }
}
