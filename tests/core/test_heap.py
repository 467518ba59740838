"""trim_heap gives memory freed inside the heap back to the system (what keeps the instance path's RSS flat)."""
from __future__ import annotations

import sys

import pytest

from mtp_core.heap import _malloc_trim, trim_heap


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux") or _malloc_trim() is None, reason="glibc only")
def test_memory_freed_between_live_blocks_goes_back_to_the_system() -> None:
    blocks = [bytearray(64 * 1024) for _ in range(4000)]  # 250 MB of heap blocks (under the mmap threshold)
    kept = blocks[3::4]  # every fourth stays: free() leaves the holes between them in the process
    del blocks
    before = _rss_mb()
    trim_heap()
    assert before - _rss_mb() > 100 and len(kept) == 1000
