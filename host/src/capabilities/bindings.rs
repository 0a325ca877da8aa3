//! Host bindings generated from `wit/`: every interface a wtrace host
//! provides to guests.

wasmtime::component::bindgen!({
    inline: "
        package wtrace:host;
        world host {
            import wtrace:tracing/tracer@0.1.0;
            import wtrace:tracing/provider@0.1.0;
            import wtrace:tracing/tasks@0.1.0;
            import wtrace:tracing/logs@0.1.0;
            import wasi:otel/tracing@0.2.0-rc.2;
            import wasi:otel/logs@0.2.0-rc.2;
        }
    ",
    path: "../wit",
    imports: { default: trappable },
    with: {
        "wtrace:tracing/tracer.span": crate::capabilities::tracer::GuestSpan,
        "wtrace:tracing/tasks.task-ref": crate::capabilities::tasks::PendingTask,
        "wtrace:tracing/tasks.actor-ref": crate::capabilities::tasks::ActorRef,
    },
});

pub(crate) use self::wtrace::tracing::{logs, provider, tasks, tracer, types};

/// `wasi:otel@0.2.0-rc.2`.
pub(crate) mod otel {
    pub(crate) use super::wasi::otel::{logs, tracing, types};
}
