//! The compact byte encoding of `start-span-encoded` and
//! `finish-span-encoded`: a span's name, kind and attributes in one buffer,
//! so a guest span costs the host one copy instead of the lifting of a
//! record of strings and variants. The reference encoder is the Rust SDK's
//! (`guest-sdk/rust/src/encoded.rs`); the format is in `wit/tracer.wit`.
//!
//! Everything here is untrusted guest data: a malformed buffer is an error,
//! never a panic, and strings are held to `--max-attribute-length`.

use std::borrow::Cow;

use opentelemetry::trace::{Link, SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
use opentelemetry::{Array, Key, KeyValue, StringValue, Value};

/// A span's start, decoded.
pub(crate) struct Start {
    pub(crate) kind: SpanKind,
    pub(crate) name: Cow<'static, str>,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) links: Vec<Link>,
    /// An explicit parent: `Some(None)` when its ids are not valid.
    pub(crate) parent: Option<Option<SpanContext>>,
}

/// The texts a bridge decoded lately (names, keys, short values), looked
/// up before the process-wide [`crate::attrs::interned`]: a guest's spans
/// repeat a few of them, and a short scan costs less than a hash.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    texts: Vec<&'static str>,
}

/// Texts [`Recent`] keeps.
const RECENT: usize = 16;

impl Recent {
    /// The kept text with these bytes. A kept text is valid UTF-8, so bytes
    /// found here need no UTF-8 check of their own.
    fn find(&self, bytes: &[u8]) -> Option<&'static str> {
        self.texts
            .iter()
            .find(|kept| crate::attrs::same_text(kept.as_bytes(), bytes))
            .copied()
    }

    /// `text` interned and kept, for a text [`Self::find`] did not find.
    fn keep(&mut self, text: &str) -> Option<&'static str> {
        let kept = crate::attrs::interned(text)?;
        if self.texts.len() == RECENT {
            self.texts.remove(0);
        }
        self.texts.push(kept);
        Some(kept)
    }
}

/// Reads a buffer front to back.
struct Reader<'a, 'r> {
    bytes: &'a [u8],
    /// Longest string kept, in bytes; longer ones are cut.
    max: usize,
    recent: &'r mut Recent,
}

/// What is wrong with a malformed buffer. Small and `Copy`, so a decoded
/// value comes back in registers rather than through a `Result` as large
/// as a `String` at every step (the decoding took about 250 ns a span).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    EndsEarly { wanted: usize, left: usize },
    TooMany { count: usize, left: usize },
    NotUtf8(std::str::Utf8Error),
    UnknownKind(u8),
    UnknownTag(u8),
    ParentFlag(u8),
    Trailing(usize),
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::EndsEarly { wanted, left } => {
                write!(f, "it ends early: {wanted} more bytes wanted, {left} left")
            }
            Self::TooMany { count, left } => write!(
                f,
                "it counts {count} items, more than its {left} bytes left hold"
            ),
            Self::NotUtf8(e) => write!(f, "a string is not UTF-8: {e}"),
            Self::UnknownKind(kind) => write!(f, "unknown span kind {kind}"),
            Self::UnknownTag(tag) => write!(f, "unknown value tag {tag}"),
            Self::ParentFlag(flag) => write!(f, "a parent flag of {flag}, not 0 or 1"),
            Self::Trailing(n) => write!(f, "{n} bytes follow its end"),
        }
    }
}

type Decoded<T> = Result<T, Malformed>;

impl<'a> Reader<'a, '_> {
    fn take(&mut self, n: usize) -> Decoded<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Malformed::EndsEarly {
                wanted: n,
                left: self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Decoded<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count of items of at least `item` bytes each: no larger than what
    /// is left could hold, so a forged count reserves nothing.
    fn count(&mut self, item: usize) -> Decoded<usize> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.bytes.len() {
            return Err(Malformed::TooMany {
                count: n,
                left: self.bytes.len(),
            });
        }
        Ok(n)
    }

    fn whole_str(&mut self) -> Decoded<&'a str> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(Malformed::NotUtf8)
    }

    /// A string, cut to the longest kept: the kept text when it is one of
    /// the recent texts (looked up by its bytes before any UTF-8 check, as
    /// a guest repeats the same few), else the text itself.
    fn kept_or_str(&mut self) -> Decoded<Result<&'static str, &'a str>> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        let whole = bytes.len() <= self.max;
        if whole && let Some(kept) = self.recent.find(bytes) {
            return Ok(Ok(kept));
        }
        let text = cut(
            std::str::from_utf8(bytes).map_err(Malformed::NotUtf8)?,
            self.max,
        );
        // A cut text has not been looked up yet; a whole one has, in vain.
        let found = if whole {
            None
        } else {
            self.recent.find(text.as_bytes())
        };
        Ok(found.or_else(|| self.recent.keep(text)).ok_or(text))
    }

    /// A string as a span name or key: shared when short and seen before.
    fn name(&mut self) -> Decoded<Cow<'static, str>> {
        Ok(match self.kept_or_str()? {
            Ok(kept) => Cow::Borrowed(kept),
            Err(text) => Cow::Owned(text.to_owned()),
        })
    }

    fn string_value(&mut self) -> Decoded<StringValue> {
        Ok(match self.kept_or_str()? {
            Ok(kept) => StringValue::from(kept),
            Err(text) => StringValue::from(text.to_owned()),
        })
    }

    fn value(&mut self) -> Decoded<Value> {
        Ok(match self.u8()? {
            0 => Value::String(self.string_value()?),
            1 => Value::Bool(self.u8()? != 0),
            2 => Value::I64(self.u64()? as i64),
            3 => Value::F64(f64::from_bits(self.u64()?)),
            4 => {
                let n = self.count(4)?;
                let list = (0..n)
                    .map(|_| self.string_value())
                    .collect::<Decoded<Vec<_>>>()?;
                Value::Array(Array::String(list))
            }
            5 => {
                let n = self.count(8)?;
                let list = (0..n)
                    .map(|_| self.u64().map(|v| v as i64))
                    .collect::<Decoded<Vec<_>>>()?;
                Value::Array(Array::I64(list))
            }
            6 => {
                let n = self.count(8)?;
                let list = (0..n)
                    .map(|_| self.u64().map(f64::from_bits))
                    .collect::<Decoded<Vec<_>>>()?;
                Value::Array(Array::F64(list))
            }
            7 => {
                let n = self.count(1)?;
                let list = (0..n)
                    .map(|_| self.u8().map(|b| b != 0))
                    .collect::<Decoded<Vec<_>>>()?;
                Value::Array(Array::Bool(list))
            }
            tag => return Err(Malformed::UnknownTag(tag)),
        })
    }

    fn attributes(&mut self) -> Decoded<Vec<KeyValue>> {
        let n = self.attribute_count()?;
        self.attributes_into(n, Vec::with_capacity(n))
    }

    /// How many attributes follow: a key's length, a tag and the smallest
    /// value take 6 bytes at least.
    fn attribute_count(&mut self) -> Decoded<usize> {
        self.count(6)
    }

    /// The `n` attributes that follow, pushed onto `attributes`.
    fn attributes_into(
        &mut self,
        n: usize,
        mut attributes: Vec<KeyValue>,
    ) -> Decoded<Vec<KeyValue>> {
        for _ in 0..n {
            let key = Key::from(self.name()?);
            attributes.push(KeyValue::new(key, self.value()?));
        }
        Ok(attributes)
    }

    /// A span context: 16 bytes of trace id, 8 of span id, flags (bit 0
    /// sampled, bit 1 remote) and the trace state header; none when its ids
    /// are zero.
    fn context(&mut self) -> Decoded<Option<SpanContext>> {
        let trace_id = TraceId::from_bytes(self.take(16)?.try_into().expect("16 bytes"));
        let span_id = SpanId::from_bytes(self.take(8)?.try_into().expect("8 bytes"));
        let flags = self.u8()?;
        let state = self.whole_str()?;
        if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return Ok(None);
        }
        let sampled = if flags & 1 != 0 {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        // W3C trace context allows 512 bytes of it; more is dropped whole.
        let state = Some(state)
            .filter(|s| s.len() <= 512)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Ok(Some(SpanContext::new(
            trace_id,
            span_id,
            sampled,
            flags & 2 != 0,
            state,
        )))
    }

    fn end(&self) -> Decoded<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(Malformed::Trailing(self.bytes.len()))
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Decodes a span's start: kind, name, attributes, links and parent.
pub(crate) fn start(bytes: &[u8], max: usize, recent: &mut Recent) -> Decoded<Start> {
    let mut reader = Reader { bytes, max, recent };
    let (kind, name) = head(&mut reader)?;
    // A span's list goes back to the thread's kept lists once the span is
    // exported, so a guest's spans in steady state allocate none.
    let n = reader.attribute_count()?;
    let attributes = reader.attributes_into(n, crate::attrs::attribute_list_for(n))?;
    // A link: 16 + 8 + 1 + 4 bytes at least.
    let links = match reader.count(29)? {
        0 => Vec::new(),
        n => (0..n)
            .filter_map(|_| reader.context().transpose())
            .map(|cx| cx.map(Link::with_context))
            .collect::<Decoded<Vec<_>>>()?,
    };
    let parent = match reader.u8()? {
        0 => None,
        1 => Some(reader.context()?),
        other => return Err(Malformed::ParentFlag(other)),
    };
    reader.end()?;
    Ok(Start {
        kind,
        name,
        attributes,
        links,
        parent,
    })
}

/// Decodes only a span's kind and name (what an untraced span needs).
pub(crate) fn name(bytes: &[u8], max: usize, recent: &mut Recent) -> Decoded<Cow<'static, str>> {
    head(&mut Reader { bytes, max, recent }).map(|(_, name)| name)
}

fn head(reader: &mut Reader<'_, '_>) -> Decoded<(SpanKind, Cow<'static, str>)> {
    let kind = match reader.u8()? {
        0 => SpanKind::Internal,
        1 => SpanKind::Server,
        2 => SpanKind::Client,
        3 => SpanKind::Producer,
        4 => SpanKind::Consumer,
        kind => return Err(Malformed::UnknownKind(kind)),
    };
    Ok((kind, reader.name()?))
}

/// Decodes attributes alone; no bytes at all are no attributes (as a count
/// of 0 is), so the usual end of a span carries nothing to copy.
pub(crate) fn attributes(bytes: &[u8], max: usize, recent: &mut Recent) -> Decoded<Vec<KeyValue>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = Reader { bytes, max, recent };
    let attributes = reader.attributes()?;
    reader.end()?;
    Ok(attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_bytes_and_a_count_of_zero_are_no_attributes_and_a_short_count_is_malformed() {
        let recent = &mut Recent::default();
        assert!(attributes(&[], 8, recent).unwrap().is_empty());
        assert!(attributes(&[0; 4], 8, recent).unwrap().is_empty());
        assert!(attributes(&[0; 3], 8, recent).is_err());
        assert!(
            attributes(&[0; 5], 8, recent).is_err(),
            "a byte after the end"
        );
    }

    fn str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// A start of `n` integer attributes, no links and no parent.
    fn start_with_attributes(n: usize) -> Vec<u8> {
        let mut buf = vec![0u8];
        str(&mut buf, "span");
        buf.extend_from_slice(&(n as u32).to_le_bytes());
        for i in 0..n {
            str(&mut buf, &format!("k{i}"));
            buf.push(2);
            buf.extend_from_slice(&(i as u64).to_le_bytes());
        }
        buf.extend_from_slice(&0u32.to_le_bytes());
        buf.push(0);
        buf
    }

    /// A start's attributes go into a list the exporter can give back to
    /// the thread (one of the usual room, however few they are), so a
    /// guest's spans in steady state allocate no list; a list handed back
    /// is the one the next start takes. More than that room get a list of
    /// their own.
    #[test]
    fn a_starts_attributes_go_into_a_list_the_thread_takes_back() {
        let recent = &mut Recent::default();
        let first = start(&start_with_attributes(2), 64, recent)
            .unwrap()
            .attributes;
        assert_eq!(first.len(), 2);
        assert_eq!(first.capacity(), crate::attrs::LIST_ROOM);
        let at = first.as_ptr();
        crate::attrs::recycle(first);
        let next = start(&start_with_attributes(3), 64, recent)
            .unwrap()
            .attributes;
        assert_eq!(next.as_ptr(), at, "the list handed back is taken again");
        assert_eq!(next[2].value, Value::I64(2));
        let many = crate::attrs::LIST_ROOM + 4;
        let long = start(&start_with_attributes(many), 64, recent)
            .unwrap()
            .attributes;
        assert_eq!(long.len(), many);
        assert_eq!(long[many - 1].key.as_str(), format!("k{}", many - 1));
    }

    #[test]
    fn every_value_type_decodes_and_strings_are_cut_to_the_limit() {
        let mut buf = vec![3u8];
        str(&mut buf, "name");
        buf.extend_from_slice(&5u32.to_le_bytes());
        str(&mut buf, "s");
        buf.push(0);
        str(&mut buf, "héllo, long text");
        str(&mut buf, "b");
        buf.extend_from_slice(&[1, 1]);
        str(&mut buf, "i");
        buf.push(2);
        buf.extend_from_slice(&(-7i64).to_le_bytes());
        str(&mut buf, "f");
        buf.push(3);
        buf.extend_from_slice(&0.5f64.to_bits().to_le_bytes());
        str(&mut buf, "l");
        buf.push(4);
        buf.extend_from_slice(&2u32.to_le_bytes());
        str(&mut buf, "x");
        str(&mut buf, "y");
        // One link, then a parent whose ids are zero: not valid.
        buf.extend_from_slice(&1u32.to_le_bytes());
        buf.extend_from_slice(&[7; 24]);
        buf.push(3);
        str(&mut buf, "k=v");
        buf.push(1);
        buf.extend_from_slice(&[0; 25]);
        str(&mut buf, "");
        let start = start(&buf, 2, &mut Recent::default()).unwrap();
        assert_eq!(start.links.len(), 1);
        let link = &start.links[0].span_context;
        assert_eq!(link.span_id(), SpanId::from_bytes([7; 8]));
        assert!(link.is_sampled() && link.is_remote());
        assert_eq!(link.trace_state().header(), "k=v");
        assert!(matches!(start.parent, Some(None)), "an invalid parent");
        assert_eq!(start.kind, SpanKind::Producer);
        assert_eq!(start.name, "na");
        let got: Vec<(String, Value)> = start
            .attributes
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value))
            .collect();
        assert_eq!(
            got,
            [
                ("s".into(), Value::from("h")),
                ("b".into(), Value::Bool(true)),
                ("i".into(), Value::I64(-7)),
                ("f".into(), Value::F64(0.5)),
                (
                    "l".into(),
                    Value::Array(Array::String(vec!["x".into(), "y".into()]))
                ),
            ]
        );
    }

    /// Texts seen before come back as the kept text, found by their bytes
    /// before any UTF-8 check, and decode exactly as new ones do: cut to the
    /// limit, and an error when not UTF-8 even beside a kept text.
    #[test]
    fn recent_texts_are_shared_and_decode_as_new_ones_do() {
        let attributes_of = |pairs: &[(&[u8], &[u8])]| {
            let mut buf = (pairs.len() as u32).to_le_bytes().to_vec();
            for (key, value) in pairs {
                buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
                buf.extend_from_slice(key);
                buf.push(0);
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(value);
            }
            buf
        };
        let mut recent = Recent::default();
        let buf = attributes_of(&[(b"key", b"two"), (b"long-key", b"value")]);
        let first = attributes(&buf, 4, &mut recent).unwrap();
        let second = attributes(&buf, 4, &mut recent).unwrap();
        assert_eq!(first, second);
        let texts = |kvs: &[KeyValue]| -> Vec<(String, Value)> {
            kvs.iter()
                .map(|kv| (kv.key.to_string(), kv.value.clone()))
                .collect()
        };
        assert_eq!(
            texts(&second),
            [
                ("key".to_owned(), Value::from("two")),
                ("long".to_owned(), Value::from("valu")),
            ]
        );
        // Whole and cut keys alike are shared.
        for i in 0..2 {
            assert!(std::ptr::eq(
                first[i].key.as_str().as_ptr(),
                second[i].key.as_str().as_ptr()
            ));
        }
        // The kept "key" and "two" beside bytes that are not UTF-8.
        let bad = attributes_of(&[(b"key", b"tw\xff")]);
        let error = attributes(&bad, 4, &mut recent).err().unwrap();
        assert!(error.to_string().contains("not UTF-8"), "{error}");
    }

    #[test]
    fn malformed_buffers_are_errors() {
        for (bytes, says) in [
            (&[][..], "ends early"),
            (&[9, 0, 0, 0, 0, 0, 0, 0, 0][..], "unknown span kind"),
            (&[0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0][..], "not UTF-8"),
            (&[0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..], "more than"),
            (
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7][..],
                "follow its end",
            ),
            (
                &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..],
                "parent flag",
            ),
        ] {
            let error = start(bytes, 64, &mut Recent::default())
                .err()
                .expect("an error")
                .to_string();
            assert!(error.contains(says), "{bytes:?}: {error}");
        }
    }
}
