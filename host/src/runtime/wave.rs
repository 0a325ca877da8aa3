//! Task invocations and results in WAVE (the WebAssembly Value Encoding),
//! and component types written the way WIT writes them.

use std::fmt::Write as _;

use wasmtime::component::types::{ComponentFunc, ComponentItem};
use wasmtime::component::wasm_wave::{self, untyped::UntypedFuncCall};
use wasmtime::component::{Type, Val};

use crate::error::{Error, Result};

/// WIT names are kebab-case; accept `snake_case` too.
pub fn kebab(name: &str) -> String {
    name.trim().replace('_', "-")
}

/// The longest invocation accepted, in bytes.
pub const MAX_INVOCATION_BYTES: usize = 16 << 20;

/// The deepest nesting of brackets accepted in arguments (the WAVE parser
/// recurses once per level).
pub const MAX_NESTING: usize = 128;

/// Rejects invocations too large or too deeply nested to parse safely.
fn check_shape(text: &str) -> std::result::Result<(), String> {
    if text.len() > MAX_INVOCATION_BYTES {
        return Err(format!(
            "the invocation is {} MiB; at most {} MiB is accepted (pass large data another way)",
            text.len() >> 20,
            MAX_INVOCATION_BYTES >> 20
        ));
    }
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        match (in_string, b) {
            (true, b'\\') => escaped = !escaped,
            (true, b'"') if !escaped => in_string = false,
            (true, _) => escaped = false,
            (false, b'"') => in_string = true,
            (false, b'(' | b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, b')' | b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        if deepest > MAX_NESTING {
            return Err(format!("arguments nest deeper than {MAX_NESTING} levels"));
        }
    }
    Ok(())
}

/// A task invocation: `function(arg, …)` with WAVE arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The export to call, in kebab-case.
    pub function: String,
    /// The whole call, normalized (`function(args)`), as sent to workers.
    pub text: String,
}

impl std::str::FromStr for Invocation {
    type Err = Error;

    /// Parses `fn(args)`; `fn` alone means `fn()`. Checks the syntax only:
    /// argument types are checked against the export where the task runs.
    fn from_str(invocation: &str) -> Result<Self> {
        let trimmed = invocation.trim();
        let (name, rest) = match trimmed.find('(') {
            Some(open) => (&trimmed[..open], &trimmed[open..]),
            None => (trimmed, "()"),
        };
        let function = kebab(name);
        let text = format!("{function}{rest}");
        let error = |cause: String| Error::Invocation {
            invocation: invocation.to_owned(),
            cause,
        };
        if function.is_empty() {
            return Err(error(
                "expected a function name, as in `my-function(1, \"two\")`".into(),
            ));
        }
        check_shape(&text).map_err(error)?;
        let call = UntypedFuncCall::parse(&text).map_err(|e| {
            error(format!(
                "{}; write arguments in WAVE, as in `add(1, 2)` or `greet(\"x\")`",
                describe_parse_error(&text, &e)
            ))
        })?;
        if call.name() != function {
            return Err(error(format!("`{function}` is not a valid WIT name")));
        }
        Ok(Self { function, text })
    }
}

impl std::fmt::Display for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

fn describe_parse_error(text: &str, error: &wasm_wave::parser::ParserError) -> String {
    let span = error.span();
    let mut message = error.kind().to_string();
    if let Some(detail) = error.detail() {
        let _ = write!(message, ": {detail}");
    } else if let Some(source) = std::error::Error::source(error) {
        let _ = write!(message, ": {source}");
    }
    match text.get(span.start..span.end).filter(|s| !s.is_empty()) {
        Some(snippet) => format!("{message} at `{snippet}` (column {})", span.start + 1),
        None => format!("{message} at column {}", span.start + 1),
    }
}

/// Parses the arguments of `text` (an [`Invocation`]'s text) as values of `params`.
pub fn parse_args(text: &str, params: &[Type]) -> std::result::Result<Vec<Val>, String> {
    check_shape(text)?;
    let call = UntypedFuncCall::parse(text).map_err(|e| describe_parse_error(text, &e))?;
    call.to_wasm_params::<Val>(params.iter())
        .map_err(|e| describe_parse_error(text, &e))
}

/// Results in WAVE: nothing for none, the value for one, a tuple for several.
pub fn format_results(values: &[Val]) -> String {
    let one = |v: &Val| wasm_wave::to_string(v).unwrap_or_else(|e| format!("<unprintable: {e}>"));
    match values {
        [] => String::new(),
        [value] => one(value),
        values => format!(
            "({})",
            values.iter().map(one).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A value as a message: strings as themselves, anything else in WAVE.
pub fn display_value(value: &Val) -> String {
    match value {
        Val::String(s) => s.clone(),
        other => format_results(std::slice::from_ref(other)),
    }
}

/// Whether `value` is or holds a resource handle, which WAVE cannot write.
pub fn holds_resource(value: &Val) -> bool {
    match value {
        Val::Resource(_) => true,
        Val::List(items) | Val::Tuple(items) => items.iter().any(holds_resource),
        Val::Record(fields) => fields.iter().any(|(_, v)| holds_resource(v)),
        Val::Variant(_, Some(v)) | Val::Option(Some(v)) => holds_resource(v),
        Val::Result(Ok(Some(v)) | Err(Some(v))) => holds_resource(v),
        _ => false,
    }
}

/// A function type in WIT syntax: `func(a: u32) -> string`.
pub fn describe_func(func: &ComponentFunc) -> String {
    describe_func_skipping(func, 0)
}

/// A method's type in WIT syntax, without its `self` parameter.
pub fn describe_method(func: &ComponentFunc) -> String {
    describe_func_skipping(func, 1)
}

/// A constructor's type in WIT syntax: `constructor(start: s64)`.
pub fn describe_constructor(func: &ComponentFunc) -> String {
    let params = func
        .params()
        .map(|(name, ty)| format!("{name}: {}", describe_type(&ty)))
        .collect::<Vec<_>>()
        .join(", ");
    format!("constructor({params})")
}

fn describe_func_skipping(func: &ComponentFunc, skip: usize) -> String {
    let params = func
        .params()
        .skip(skip)
        .map(|(name, ty)| format!("{name}: {}", describe_type(&ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let results: Vec<String> = func.results().map(|ty| describe_type(&ty)).collect();
    match results.as_slice() {
        [] => format!("func({params})"),
        [one] => format!("func({params}) -> {one}"),
        many => format!("func({params}) -> ({})", many.join(", ")),
    }
}

/// What an export is, in words.
pub fn describe_item(item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentFunc(func) => format!("`{}`", describe_func(func)),
        ComponentItem::CoreFunc(_) => "a core function".into(),
        ComponentItem::Module(_) => "a core module".into(),
        ComponentItem::Component(_) => "a component".into(),
        ComponentItem::ComponentInstance(_) => "an interface instance".into(),
        ComponentItem::Type(_) => "a type".into(),
        ComponentItem::Resource(_) => "a resource".into(),
    }
}

/// A value type in WIT syntax.
pub fn describe_type(ty: &Type) -> String {
    let mut out = String::new();
    write_type(&mut out, ty);
    out
}

fn write_type(out: &mut String, ty: &Type) {
    let simple = match ty {
        Type::Bool => "bool",
        Type::S8 => "s8",
        Type::U8 => "u8",
        Type::S16 => "s16",
        Type::U16 => "u16",
        Type::S32 => "s32",
        Type::U32 => "u32",
        Type::S64 => "s64",
        Type::U64 => "u64",
        Type::Float32 => "f32",
        Type::Float64 => "f64",
        Type::Char => "char",
        Type::String => "string",
        Type::ErrorContext => "error-context",
        _ => "",
    };
    if !simple.is_empty() {
        out.push_str(simple);
        return;
    }
    match ty {
        Type::List(list) => {
            out.push_str("list<");
            write_type(out, &list.ty());
            out.push('>');
        }
        Type::FixedLengthList(list) => {
            out.push_str("list<");
            write_type(out, &list.ty());
            let _ = write!(out, ", {}>", list.len());
        }
        Type::Map(map) => {
            out.push_str("map<");
            write_type(out, &map.key());
            out.push_str(", ");
            write_type(out, &map.value());
            out.push('>');
        }
        Type::Record(record) => {
            out.push_str("record { ");
            for (i, field) in record.fields().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{}: ", field.name);
                write_type(out, &field.ty);
            }
            out.push_str(" }");
        }
        Type::Tuple(tuple) => {
            out.push_str("tuple<");
            for (i, ty) in tuple.types().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_type(out, &ty);
            }
            out.push('>');
        }
        Type::Variant(variant) => {
            out.push_str("variant { ");
            for (i, case) in variant.cases().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(case.name);
                if let Some(ty) = &case.ty {
                    out.push('(');
                    write_type(out, ty);
                    out.push(')');
                }
            }
            out.push_str(" }");
        }
        Type::Enum(e) => {
            let _ = write!(
                out,
                "enum {{ {} }}",
                e.names().collect::<Vec<_>>().join(", ")
            );
        }
        Type::Flags(f) => {
            let _ = write!(
                out,
                "flags {{ {} }}",
                f.names().collect::<Vec<_>>().join(", ")
            );
        }
        Type::Option(option) => {
            out.push_str("option<");
            write_type(out, &option.ty());
            out.push('>');
        }
        Type::Result(result) => match (result.ok(), result.err()) {
            (None, None) => out.push_str("result"),
            (ok, err) => {
                out.push_str("result<");
                match &ok {
                    Some(ok) => write_type(out, ok),
                    None => out.push('_'),
                }
                if let Some(err) = &err {
                    out.push_str(", ");
                    write_type(out, err);
                }
                out.push('>');
            }
        },
        Type::Own(_) => out.push_str("own<resource>"),
        Type::Borrow(_) => out.push_str("borrow<resource>"),
        Type::Future(_) => out.push_str("future"),
        Type::Stream(_) => out.push_str("stream"),
        _ => {
            let _ = write!(out, "{ty:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocations_parse_and_normalize() {
        let inv: Invocation = "my_function()".parse().unwrap();
        assert_eq!(inv.function, "my-function");
        assert_eq!(inv.text, "my-function()");

        let inv: Invocation = " add(1, 2) ".parse().unwrap();
        assert_eq!(inv.function, "add");
        assert_eq!(inv.text, "add(1, 2)");

        let inv: Invocation = "greet".parse().unwrap();
        assert_eq!(inv.text, "greet()");

        let err = "add(1, ".parse::<Invocation>().unwrap_err().to_string();
        assert!(err.contains("invalid invocation"), "{err}");
        assert!(err.contains("WAVE"), "{err}");
        assert!("(1)".parse::<Invocation>().is_err());

        let deep = format!("f({}{})", "[".repeat(100_000), "]".repeat(100_000));
        let err = deep.parse::<Invocation>().unwrap_err().to_string();
        assert!(err.contains("nest deeper than 128"), "{err}");
        let huge = format!("f(\"{}\")", "x".repeat(17 << 20));
        let err = huge.parse::<Invocation>().unwrap_err().to_string();
        assert!(err.contains("at most 16 MiB"), "{err}");
        let brackets_in_strings = format!("f(\"{}\")", "[".repeat(1000));
        assert!(brackets_in_strings.parse::<Invocation>().is_ok());
    }

    #[test]
    fn args_are_typed() {
        let vals = parse_args("add(1, 2)", &[Type::U32, Type::U32]).unwrap();
        assert_eq!(vals, vec![Val::U32(1), Val::U32(2)]);
        let err = parse_args("add(\"x\", 2)", &[Type::U32, Type::U32]).unwrap_err();
        assert!(!err.is_empty());
        assert!(parse_args("add(1)", &[Type::U32, Type::U32]).is_err());
        assert_eq!(format_results(&[Val::S32(1)]), "1");
        assert_eq!(format_results(&[]), "");
        assert_eq!(format_results(&[Val::String("a".into())]), "\"a\"");
    }
}
