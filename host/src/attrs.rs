//! Span attribute values that repeat from task to task — a function name, a
//! job, worker or node id — shared instead of copied: the span holds one
//! reference-counted string rather than its own allocation, which the export
//! thread would otherwise have to free.

use std::cell::RefCell;
use std::sync::Arc;

use opentelemetry::{StringValue, Value};

/// How many recent strings each thread keeps.
const KEPT: usize = 8;

thread_local! {
    static RECENT: RefCell<Vec<Value>> = const { RefCell::new(Vec::new()) };
}

/// `text` as a string value whose clones share one allocation.
pub fn text(text: impl Into<Arc<str>>) -> Value {
    Value::String(StringValue::from(text.into()))
}

/// `text` as a string value, shared with earlier calls on this thread that
/// passed the same text (the last few distinct ones are kept).
pub fn shared(text: &str) -> Value {
    RECENT.with_borrow_mut(|recent| {
        let kept = recent
            .iter()
            .find(|value| matches!(value, Value::String(kept) if kept.as_str() == text));
        if let Some(value) = kept {
            return value.clone();
        }
        let value = self::text(text);
        if recent.len() == KEPT {
            recent.remove(0);
        }
        recent.push(value.clone());
        value
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
}
