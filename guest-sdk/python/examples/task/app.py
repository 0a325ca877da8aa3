"""The seed example of Ray's tracing guide, as a wtrace task in Python.

Build: ``guest-sdk/python/build.sh guest-sdk/python/examples/task hello-py.wasm``
Run:   ``wtrace run --tracing-startup-hook=default hello-py.wasm 'my-function()' 'my-func()'``
"""

import wit_world

import wtrace_guest as wtrace


class WitWorld(wit_world.WitWorld):
    def my_function(self) -> int:
        return 1

    def my_func(self) -> None:
        with wtrace.span("foo"):
            print("hello from inside span foo")
