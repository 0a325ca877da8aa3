//! Host bindings generated from `wit/`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "hook",
    imports: { default: trappable },
    with: {
        "wtrace:tracing/tracer.span": crate::bridge::GuestSpan,
    },
});

pub(crate) use wtrace::tracing::{provider, tracer, types};
