"""The operator under tracemalloc, for bench/operator_scale.py --tracemalloc: on SIGUSR1 it writes the largest
live allocations (by line, and by file) to the path in LLMTRAIN_TRACEMALLOC_OUT, to see where RSS goes.

    python bench/traced_operator.py <the operator's arguments>
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc


def dump(*_: object) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    current, peak = tracemalloc.get_traced_memory()
    with open(os.environ["LLMTRAIN_TRACEMALLOC_OUT"], "w") as out:
        print(f"traced now {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB", file=out)
        for group in ("filename", "lineno"):
            print(f"\n# top 40 by {group}", file=out)
            for stat in snapshot.statistics(group)[:40]:
                print(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {stat.traceback}", file=out)


if __name__ == "__main__":
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, dump)
    from llmtrain_operator.main import main

    sys.argv[0] = "llmtrain_operator"
    sys.exit(main())
