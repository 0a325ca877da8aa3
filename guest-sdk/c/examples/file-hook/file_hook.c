/*
 * A wtrace tracing startup hook in C: every process writes its spans, one by
 * one as they end, to `$WTRACE_SPAN_DIR/<pid>.json` (OTLP-JSON lines).
 *
 * World `wtrace:tracing/hook@0.1.0` (the repository's wit/worlds.wit):
 * exports `setup-tracing: func() -> result<_, string>`.
 *
 * OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG choose the sampler. A
 * hook sees only the OTEL_* and WTRACE_* environment variables of its
 * process; `wtrace run --allow-span-dir=DIR` must allow the directory.
 */
#include <stdio.h>
#include <stdlib.h>

#include "wtrace.h"

bool exports_hook_setup_tracing(hook_string_t *err) {
    const char *dir = getenv("WTRACE_SPAN_DIR");
    if (dir == NULL || dir[0] == '\0') {
        return wtrace_hook_fail(err, "WTRACE_SPAN_DIR is not set");
    }
    const char *service = getenv("OTEL_SERVICE_NAME");
    wtrace_hook_set_service_name(service != NULL && service[0] != '\0' ? service
                                                                       : "wtrace-c-file-hook");
    if (!wtrace_hook_sampler_from_env(err)) {
        return false;
    }

    char path[4096];
    int n = snprintf(path, sizeof path, "%s/{pid}.json", dir);
    if (n < 0 || (size_t)n >= sizeof path) {
        return wtrace_hook_fail(err, "WTRACE_SPAN_DIR is too long");
    }
    return wtrace_hook_add_file_processor(path, /* batch = */ false, err);
}
