"""Run a snippet in a fresh Python under a memory limit: proof that a memory bomb is refused before
it is allocated (the limit is far below what the bomb declares, far above what a refusal needs)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from helpers.paths import REPO_ROOT

HEADROOM = 5 << 29  # 2.5 GiB past what importing torch took: every bomb of the tests declares far more

# The child imports torch first (it maps ~3 GB of address space), then limits what it may add.
_PREAMBLE = """
import resource, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
with open("/proc/self/status") as status:
    used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (used + {headroom}, used + {headroom}))
"""


def run_bounded(code: str, timeout: float = 120, headroom: int = HEADROOM) -> subprocess.CompletedProcess:
    """Run `code` (the repository and tests/ on sys.path) in a child whose address space may grow only
    `headroom` bytes past what importing torch took; Linux only (RLIMIT_AS, /proc)."""
    preamble = _PREAMBLE.format(repo=str(REPO_ROOT), tests=str(REPO_ROOT / "tests"), headroom=int(headroom))
    return subprocess.run([sys.executable, "-c", preamble + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO_ROOT))


def run_limited(code: str, **kwargs):
    """run_bounded, for a snippet that prints one JSON value last: that value (a crash of the child fails the test)."""
    proc = run_bounded(code, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"the bounded child died (rc {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
