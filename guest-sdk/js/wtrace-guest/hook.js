// Helpers for tracing startup hooks (world wtrace:tracing/hook@0.1.0): read
// the OpenTelemetry environment variables like the Rust SDK does. Configure
// the process with "wtrace:tracing/provider@0.1.0" directly. A hook sees only
// the OTEL_* and WTRACE_* environment variables.

import { env, value } from "./index.js";

export { env };

/** `service.name` from OTEL_SERVICE_NAME (else the default), plus OTEL_RESOURCE_ATTRIBUTES. */
export function resourceFromEnv(defaultServiceName) {
  const resource = [];
  for (const pair of (env("OTEL_RESOURCE_ATTRIBUTES") ?? "").split(",")) {
    const at = pair.indexOf("=");
    const key = pair.slice(0, at).trim();
    if (at > 0 && key !== "" && key !== "service.name") {
      resource.push({ key, value: value(pair.slice(at + 1).trim()) });
    }
  }
  const service = env("OTEL_SERVICE_NAME") ?? defaultServiceName;
  resource.push({ key: "service.name", value: value(service) });
  return resource;
}

/**
 * The sampler named by OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, or
 * undefined when unset. Throws a string (which `setupTracing` returns as its
 * error) when they are invalid.
 */
export function samplerFromEnv() {
  const name = env("OTEL_TRACES_SAMPLER")?.trim();
  if (name === undefined) return undefined;
  const ratio = () => {
    const arg = env("OTEL_TRACES_SAMPLER_ARG") ?? "1";
    const r = Number(arg.trim());
    if (arg.trim() === "" || !(r >= 0 && r <= 1)) {
      throw `OTEL_TRACES_SAMPLER_ARG=${JSON.stringify(arg)} is not a ratio between 0 and 1`;
    }
    return r;
  };
  switch (name) {
    case "always_on":
      return { tag: "always-on" };
    case "always_off":
      return { tag: "always-off" };
    case "traceidratio":
      return { tag: "trace-id-ratio", val: ratio() };
    case "parentbased_always_on":
      return { tag: "parent-based-always-on" };
    case "parentbased_always_off":
      return { tag: "parent-based-always-off" };
    case "parentbased_traceidratio":
      return { tag: "parent-based-ratio", val: ratio() };
  }
  throw (
    `OTEL_TRACES_SAMPLER=${JSON.stringify(name)} is not supported; use always_on, always_off, ` +
    "traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
  );
}
