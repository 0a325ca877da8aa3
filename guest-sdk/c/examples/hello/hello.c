/*
 * The seed example of Ray's tracing guide as a wtrace task in C:
 *
 *     wtrace run --tracing-startup-hook=default hello.wasm 'my-function()'   # prints 1
 *     wtrace run --tracing-startup-hook=default hello.wasm 'my-func()'       # a custom span "foo"
 *
 * World `hello` in hello.wit: includes wtrace:tracing/task-imports@0.1.0 and
 * exports my-function and my-func.
 */
#include <stdio.h>

#include "wtrace.h"

int32_t exports_hello_my_function(void) {
    return 1;
}

void exports_hello_my_func(void) {
    wtrace_span_t span = wtrace_span_start("foo");
    printf("hello from inside span foo\n");
    /* A reactor never exits, so nothing flushes stdio for you: flush before
     * returning or the line may stay in the buffer when the instance ends. */
    fflush(stdout);
    wtrace_span_end(span);
}
