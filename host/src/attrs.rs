//! Span attribute values that repeat from task to task — a function name, a
//! job, worker or node id — shared instead of copied: the span holds one
//! reference-counted string rather than its own allocation, which the export
//! thread would otherwise have to free. And the attribute lists of task
//! spans, handed back by the span file once a span is encoded and reused by
//! the thread's next task span.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use opentelemetry::{KeyValue, StringValue, Value};

/// The span contract's `wtrace.task_id` key: the one attribute no two task
/// spans share a value of (the encoder does not keep its values).
pub const TASK_ID: &str = "wtrace.task_id";

/// How many recent strings each thread keeps.
const KEPT: usize = 8;

/// Room in an attribute list for a task span's attributes, with what is
/// added at its end.
pub(crate) const LIST_ROOM: usize = 16;
/// Most lists a thread keeps for reuse.
const LISTS_KEPT: usize = 8;

thread_local! {
    static RECENT: RefCell<Vec<StringValue>> = const { RefCell::new(Vec::new()) };
    static LISTS: RefCell<Vec<Vec<KeyValue>>> = const { RefCell::new(Vec::new()) };
}

/// An empty attribute list for a task span: one an exported span gave back
/// on this thread, else a new one. A process's task spans end where they
/// started, so in steady state making one allocates nothing.
pub fn attribute_list() -> Vec<KeyValue> {
    LISTS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(LIST_ROOM))
}

/// An empty list for `n` attributes: [`attribute_list`]'s when they fit
/// its room, so the list can go back to the thread when the span is
/// exported; else one of their own.
pub fn attribute_list_for(n: usize) -> Vec<KeyValue> {
    if n <= LIST_ROOM {
        attribute_list()
    } else {
        Vec::with_capacity(n)
    }
}

/// Takes back an exported span's attribute list, emptied, for
/// [`attribute_list`]: only one of the usual room, and a few per thread.
pub fn recycle(mut list: Vec<KeyValue>) {
    if list.capacity() != LIST_ROOM {
        return;
    }
    list.clear();
    LISTS.with_borrow_mut(|lists| {
        if lists.len() < LISTS_KEPT {
            lists.push(list);
        }
    });
}

/// `text` as a string value whose clones share one allocation.
pub fn text(text: impl Into<Arc<str>>) -> Value {
    Value::String(StringValue::from(text.into()))
}

/// `text` as a string value, shared with earlier calls on this thread that
/// passed the same text (the last few distinct ones are kept).
pub fn shared(text: &str) -> Value {
    Value::String(shared_string(text))
}

/// [`shared`], as the string itself (what a log record's attribute takes).
pub fn shared_string(text: &str) -> StringValue {
    RECENT.with_borrow_mut(|recent| {
        if let Some(kept) = recent
            .iter()
            .find(|kept| same_text(kept.as_str().as_bytes(), text.as_bytes()))
        {
            return kept.clone();
        }
        let value = StringValue::from(Arc::<str>::from(text));
        if recent.len() == KEPT {
            recent.remove(0);
        }
        recent.push(value.clone());
        value
    })
}

/// Whether `a` and `b` hold the same bytes. Texts up to 32 bytes (keys,
/// names, most values) are compared a few loads at a time in place: the
/// kept texts looked up for every span are short, and a call to `memcmp`
/// for each took a sixth of a guest span's time on the worker's thread.
pub(crate) fn same_text(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    // The `N` bytes at `at` in both, as one integer each: equal or not.
    fn load<const N: usize>(s: &[u8], at: usize) -> [u8; N] {
        s[at..at + N].try_into().expect("N bytes")
    }
    fn same_at<const N: usize>(a: &[u8], b: &[u8], at: usize) -> bool {
        load::<N>(a, at) == load::<N>(b, at)
    }
    // Two loads that overlap when the length is not their sum cover it all.
    match len {
        0 => true,
        1 => a[0] == b[0],
        2..4 => same_at::<2>(a, b, 0) & same_at::<2>(a, b, len - 2),
        4..8 => same_at::<4>(a, b, 0) & same_at::<4>(a, b, len - 4),
        8..=16 => same_at::<8>(a, b, 0) & same_at::<8>(a, b, len - 8),
        17..=32 => {
            same_at::<8>(a, b, 0)
                & same_at::<8>(a, b, 8)
                & same_at::<8>(a, b, len - 16)
                & same_at::<8>(a, b, len - 8)
        }
        _ => a == b,
    }
}

/// Longest text [`interned`] keeps.
const INTERNED_LEN: usize = 64;
/// Most texts [`interned`] keeps, in all threads together: past it, texts
/// are not kept (a guest feeding ever new names leaks at most this many).
const INTERNED_MAX: usize = 4096;
static INTERNED_COUNT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static INTERNED: RefCell<rustc_hash::FxHashMap<Box<str>, &'static str>> =
        RefCell::new(HashMap::default());
}

/// `text` made once and kept for good, so spans that repeat it (a guest
/// span's name, attribute keys, short values) share it without allocating:
/// none when it is longer than 64 bytes or 4096 texts are kept already.
pub fn interned(text: &str) -> Option<&'static str> {
    if text.len() > INTERNED_LEN {
        return None;
    }
    INTERNED.with_borrow_mut(|kept| {
        if let Some(kept) = kept.get(text) {
            return Some(*kept);
        }
        if INTERNED_COUNT.fetch_add(1, Ordering::Relaxed) >= INTERNED_MAX {
            return None;
        }
        let made: &'static str = Box::leak(Box::from(text));
        kept.insert(Box::from(text), made);
        Some(made)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_text_is_shared_and_values_stay_right() {
        let a = shared("job-1");
        let b = shared("job-1");
        assert_eq!(a, Value::from("job-1"));
        let (Value::String(a), Value::String(b)) = (a, b) else {
            panic!("not strings")
        };
        assert!(std::ptr::eq(a.as_str(), b.as_str()), "not shared");
        // Past the kept number of strings, each value is still its own text.
        for i in 0..3 * KEPT {
            assert_eq!(shared(&format!("w-{i}")), Value::from(format!("w-{i}")));
        }
        assert_eq!(shared("job-1"), Value::from("job-1"));
    }

    #[test]
    fn short_text_is_interned_once_and_long_text_never() {
        let a = interned("span-name").unwrap();
        let b = interned("span-name").unwrap();
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "span-name");
        assert!(interned(&"x".repeat(65)).is_none());
    }

    /// The in-place compare agrees with `==` for every length up to past the
    /// longest compared in place, wherever two texts differ.
    #[test]
    fn kept_texts_compare_as_slices_do() {
        for len in 0..80 {
            let a: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(same_text(&a, &a.clone()));
            for at in 0..len {
                let mut b = a.clone();
                b[at] ^= 1;
                assert!(!same_text(&a, &b), "differ at {at} of {len}");
            }
            assert!(!same_text(&a, &a[..len.saturating_sub(1)]) || len == 0);
        }
    }
}
