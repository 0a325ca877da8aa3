"""The `counter` resource of the `counter-api` interface.

componentize-py looks up an exported interface's resources in a top-level
module named after the interface in snake_case (`counter-api` ->
`counter_api`), each as the class named after the resource in PascalCase
(`counter` -> `Counter`).
"""

from wit_world.exports import counter_api

import wtrace_guest as wtrace


class Counter(counter_api.Counter):
    """A number that goes up; one instance per actor, alive between calls."""

    def __init__(self, start: int) -> None:
        self.value = start

    def incr(self, by: int) -> int:
        with wtrace.span("add", attributes={"counter.by": by}):
            self.value += by
        return self.value

    def get(self) -> int:
        return self.value
