"""A tracing startup hook: every process writes its spans to
``$WTRACE_SPAN_DIR/<pid>.json`` with a simple processor.

Build: ``guest-sdk/python/build.sh guest-sdk/python/examples/hook hook.wasm``
Run:   ``wtrace run --tracing-startup-hook=hook.wasm:setup_tracing --allow-span-dir=DIR ...``
"""

import wit_world
from wit_world.imports import provider

from wtrace_guest import hook


class WitWorld(wit_world.WitWorld):
    def setup_tracing(self) -> None:
        span_dir = hook.env("WTRACE_SPAN_DIR")
        if span_dir is None:
            raise wit_world.Err("WTRACE_SPAN_DIR is not set")
        provider.set_resource(hook.resource_from_env("wtrace-python-example"))
        sampler = hook.sampler_from_env()
        if sampler is not None:
            provider.set_sampler(sampler)
        # Raises Err(reason) when the host refuses the path (see --allow-span-dir).
        provider.add_span_processor(
            provider.Processor_Simple(
                provider.Exporter_File(provider.FileExporter(f"{span_dir}/{{pid}}.json"))
            )
        )
