"""Spans for wtrace guests written in Python (built with componentize-py).

A thin layer over the bindings componentize-py generates for
``wtrace:tracing/tracer@0.1.0`` (module ``wit_world.imports.tracer``)::

    import wtrace_guest as wtrace

    with wtrace.span("foo", attributes={"rows": 42}) as span:
        span.add_event("started")
        ...

A span becomes the current span until the ``with`` block ends; spans opened
inside it are its children. The span ends when the block ends, also when it
raises: it then gets status ERROR and an ``exception`` event, and the
exception goes on. ``span(...)`` also works as a decorator.
"""

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Optional, Sequence

from wit_world.imports import tracer, types

SpanKind = types.SpanKind
SpanContext = types.SpanContext

__all__ = ["Span", "SpanContext", "SpanKind", "current_span_context", "kv", "span", "value"]


def value(v: Any) -> types.Value:
    """A Python value as an attribute value (str, bool, int, float or a list of one of them)."""
    if isinstance(v, bool):
        return types.Value_Bool(v)
    if isinstance(v, int):
        return types.Value_S64(v)
    if isinstance(v, float):
        return types.Value_F64(v)
    if isinstance(v, str):
        return types.Value_String(v)
    if isinstance(v, (list, tuple)):
        items = list(v)
        if all(isinstance(i, bool) for i in items):
            return types.Value_BoolList(items)
        if all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            return types.Value_S64List(items)
        if all(isinstance(i, (int, float)) and not isinstance(i, bool) for i in items):
            return types.Value_F64List([float(i) for i in items])
        return types.Value_StringList([str(i) for i in items])
    return types.Value_String(str(v))


def kv(key: str, v: Any) -> types.KeyValue:
    """An attribute."""
    return types.KeyValue(key, value(v))


def _attributes(attributes: Optional[Mapping[str, Any]]) -> list:
    return [kv(k, v) for k, v in (attributes or {}).items()]


class Span:
    """An open span; ``span(...)`` ends it."""

    def __init__(self, raw: tracer.Span) -> None:
        self.raw = raw

    def set_attribute(self, key: str, v: Any) -> None:
        self.raw.set_attribute(key, value(v))

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.raw.set_attributes(_attributes(attributes))

    def add_event(self, name: str, attributes: Optional[Mapping[str, Any]] = None) -> None:
        self.raw.add_event(name, _attributes(attributes))

    def set_error(self, message: str) -> None:
        self.raw.set_status(types.Status_Error(message))

    def set_ok(self) -> None:
        self.raw.set_status(types.Status_Ok())

    def update_name(self, name: str) -> None:
        self.raw.update_name(name)

    def context(self) -> types.SpanContext:
        return self.raw.context()

    def is_recording(self) -> bool:
        return self.raw.is_recording()


@contextmanager
def span(
    name: str,
    *,
    kind: Optional[types.SpanKind] = None,
    attributes: Optional[Mapping[str, Any]] = None,
    links: Sequence[types.SpanContext] = (),
    parent: Optional[types.SpanContext] = None,
) -> Iterator[Span]:
    """Opens span ``name`` (a child of the current span) for the ``with`` block."""
    raw = tracer.start_span(
        name, tracer.SpanOptions(kind, _attributes(attributes), list(links), parent)
    )
    try:
        yield Span(raw)
    except BaseException as e:
        raw.set_status(types.Status_Error(f"{type(e).__name__}: {e}"))
        raw.add_event(
            "exception",
            [kv("exception.type", type(e).__name__), kv("exception.message", str(e))],
        )
        raise
    finally:
        # One host call ends the span and releases its handle (not left
        # for garbage collection).
        tracer.finish_span(raw, [])


def current_span_context() -> types.SpanContext:
    """The innermost open span, else the task's execute span (all zeros when untraced)."""
    return tracer.current_span_context()
