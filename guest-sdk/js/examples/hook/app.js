// A tracing startup hook: every process writes its spans to
// $WTRACE_SPAN_DIR/<pid>.json with a simple processor.
//
// Build: node guest-sdk/js/build.mjs guest-sdk/js/examples/hook hook.wasm
// Run:   wtrace run --tracing-startup-hook=hook.wasm:setup_tracing --allow-span-dir=DIR ...

import * as provider from "wtrace:tracing/provider@0.1.0";
import { env, resourceFromEnv, samplerFromEnv } from "wtrace-guest/hook";

// setup-tracing: func() -> result<_, string>: return for ok, throw a string for err.
export function setupTracing() {
  const spanDir = env("WTRACE_SPAN_DIR");
  if (spanDir === undefined) throw "WTRACE_SPAN_DIR is not set";
  provider.setResource(resourceFromEnv("wtrace-js-example"));
  const sampler = samplerFromEnv();
  if (sampler !== undefined) provider.setSampler(sampler);
  // Throws the host's reason when it refuses the path (see --allow-span-dir).
  provider.addSpanProcessor({
    tag: "simple",
    val: { tag: "file", val: { path: `${spanDir}/{pid}.json` } },
  });
}
