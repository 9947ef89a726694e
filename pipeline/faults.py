"""Fault injection for the reliability tests: kill the process at a named point.

`NMT_KILL_AT="NAME"` (or `NAME:N`, the N-th time; a comma-separated list for several) makes
`point(NAME)` send SIGKILL to the running process, as a power cut or the OOM killer would: no
`finally` block, no flush. Names may hold shell-style wildcards (`write:*.npz`). Unset, a point
costs one environment lookup. The points sit where a kill is hardest to survive: between a
temporary file's write and its rename, between the renames of a stage swap, between an epoch's
backup and its history.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "NMT_KILL_AT"
_seen: dict[str, int] = {}


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    for rule in spec.split(","):
        pattern, _, nth = rule.strip().rpartition(":")
        if not nth.isdigit():
            pattern, nth = rule.strip(), "1"
        if fnmatch.fnmatchcase(name, pattern):
            _seen[rule] = _seen.get(rule, 0) + 1
            if _seen[rule] == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
