"""An actor in Python: the twin of examples/actors/counter (Rust).

The world exports the interface `counter-api` with the resource `counter`;
its class, `Counter`, is in counter_api.py (componentize-py's convention).

Build: ``guest-sdk/python/build.sh guest-sdk/python/examples/counter counter-py.wasm``
Run:   ``wtrace start --tracing-startup-hook=default``
       ``ID=$(wtrace actor create counter-py.wasm 'counter(5)')``
       ``wtrace actor call $ID 'incr(2)'``    # 7
"""
