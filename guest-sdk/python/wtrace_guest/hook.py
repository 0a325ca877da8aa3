"""Helpers for tracing startup hooks (world ``wtrace:tracing/hook@0.1.0``).

A hook sees only the ``OTEL_*`` and ``WTRACE_*`` environment variables;
these read the OpenTelemetry ones like the Rust SDK does. Configure the
process with ``wit_world.imports.provider`` directly.
"""

import os
from typing import List, Optional

from componentize_py_types import Err
from wit_world.imports import provider, types

from . import kv


def env(name: str) -> Optional[str]:
    """An environment variable of the hook's process, if set and not blank."""
    v = os.environ.get(name)
    return v if v and v.strip() else None


def resource_from_env(default_service_name: str) -> List[types.KeyValue]:
    """``service.name`` from OTEL_SERVICE_NAME (else the default), plus OTEL_RESOURCE_ATTRIBUTES."""
    attributes = []
    for pair in (env("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        key, sep, v = pair.partition("=")
        if sep and key.strip() and key.strip() != "service.name":
            attributes.append(kv(key.strip(), v.strip()))
    attributes.append(kv("service.name", env("OTEL_SERVICE_NAME") or default_service_name))
    return attributes


def sampler_from_env() -> Optional[provider.Sampler]:
    """The sampler named by OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG; None when unset.

    Raises ``Err(message)``, which ``setup-tracing`` returns as its error.
    """
    name = env("OTEL_TRACES_SAMPLER")
    if name is None:
        return None

    def ratio() -> float:
        arg = env("OTEL_TRACES_SAMPLER_ARG") or "1"
        try:
            r = float(arg)
        except ValueError:
            r = -1.0
        if not 0.0 <= r <= 1.0:
            raise Err(f'OTEL_TRACES_SAMPLER_ARG="{arg}" is not a ratio between 0 and 1')
        return r

    samplers = {
        "always_on": lambda: provider.Sampler_AlwaysOn(),
        "always_off": lambda: provider.Sampler_AlwaysOff(),
        "traceidratio": lambda: provider.Sampler_TraceIdRatio(ratio()),
        "parentbased_always_on": lambda: provider.Sampler_ParentBasedAlwaysOn(),
        "parentbased_always_off": lambda: provider.Sampler_ParentBasedAlwaysOff(),
        "parentbased_traceidratio": lambda: provider.Sampler_ParentBasedRatio(ratio()),
    }
    if name.strip() not in samplers:
        raise Err(f'OTEL_TRACES_SAMPLER="{name}" is not supported; use one of {", ".join(samplers)}')
    return samplers[name.strip()]()
