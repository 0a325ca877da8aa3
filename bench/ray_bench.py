"""The Ray side of wtrace's benchmark: the same workload on Ray.

2000 trivial tasks submitted at once, then all gathered, without and with
Ray's default tracing hook; and a cold start (a whole process doing ray.init,
one task and shutdown). Prints one JSON line: tasks/s and milliseconds.

With the argument `actors`: 2000 calls of a trivial method on one actor,
sent at once, then gathered, with Ray's default tracing hook. Prints one
JSON line: calls/s.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import ray

N = 2000
HOOK = "ray.util.tracing.setup_local_tmp_tracing:setup_tracing"


def one():
    return 1


def rate(tracing):
    kwargs = {"num_cpus": os.cpu_count(), "include_dashboard": False, "log_to_driver": False}
    if tracing:
        kwargs["_tracing_startup_hook"] = HOOK
    ray.init(**kwargs)
    # Decorated after ray.init: Ray's tracing rewrites the signature to take
    # its `_ray_trace_ctx` argument only for functions decorated once tracing
    # is on (a function decorated before fails with "unexpected keyword
    # argument '_ray_trace_ctx'", ray#63267).
    my_function = ray.remote(one)
    try:
        ray.get([my_function.remote() for _ in range(200)])  # warm the workers
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            results = ray.get([my_function.remote() for _ in range(N)])
            elapsed = time.perf_counter() - start
            assert sum(results) == N
            rates.append(N / elapsed)
        return statistics.median(rates)  # as for wtrace
    finally:
        ray.shutdown()


class Counter:
    def __init__(self):
        self.value = 0

    def incr(self, by):
        self.value += by
        return self.value


def actor_rate():
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        _tracing_startup_hook=HOOK,
    )
    # Decorated after ray.init, as the task is (see `rate`).
    counter = ray.remote(Counter).remote()
    try:
        ray.get([counter.incr.remote(1) for _ in range(200)])  # warm it
        rates = []
        for _ in range(3):
            start = time.perf_counter()
            ray.get([counter.incr.remote(1) for _ in range(N)])
            rates.append(N / (time.perf_counter() - start))
        return statistics.median(rates)
    finally:
        ray.shutdown()


def cold_ms():
    code = (
        "import ray\n"
        f"ray.init(num_cpus={os.cpu_count()}, include_dashboard=False, _tracing_startup_hook='{HOOK}')\n"
        "def f():\n    return 1\n"
        "f = ray.remote(f)\n"
        "assert ray.get(f.remote()) == 1\n"
        "ray.shutdown()\n"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


if __name__ == "__main__":
    if sys.argv[1:] == ["actors"]:
        print(json.dumps({"actor_traced": actor_rate()}))
        sys.exit(0)
    plain = rate(False)
    traced = rate(True)
    cold = cold_ms()
    print(json.dumps({"plain": plain, "traced": traced, "cold_ms": cold}))
