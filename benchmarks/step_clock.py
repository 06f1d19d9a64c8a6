"""The pause-and-time protocol shared by both benchmark workers (ours and TRL's).

A worker builds its trainer, then calls `tick()` at the end of every training step (from a
Lightning or transformers callback). The driver, on the worker's stdin, says how many steps to
run next (`run K`) or to stop; after K steps the worker prints their wall times on stdout and
blocks until the next command. Blocked time is not counted, so the driver can alternate two
workers step-chunk by step-chunk while each keeps its models, optimizers and caches warm.

No torch, no rto, no trl import: it runs in either virtualenv.
"""

from __future__ import annotations

import json
import os
import sys
import time

TIMES_PREFIX = "@@TIMES "


class StepClock:
    def __init__(self):
        self.remaining = 0
        self.times: list[float] = []
        self.last = 0.0

    def wait_for_command(self) -> None:
        """Block until the driver asks for more steps; exit the process on `stop`."""
        line = sys.stdin.readline().split()
        if not line or line[0] == "stop":
            sys.stdout.flush()
            os._exit(0)  # the trainer is mid-loop: leave without running its teardown
        self.remaining, self.times = int(line[1]), []
        self.last = time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.remaining -= 1
        if self.remaining == 0:
            print(TIMES_PREFIX + json.dumps(self.times), flush=True)
            self.wait_for_command()
        self.last = time.perf_counter()
