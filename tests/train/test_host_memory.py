"""Freed host memory goes back to the system (train/host_memory.py)."""

import pytest
import torch

from preftune.train.host_memory import _malloc_trim, release_freed_memory


def resident_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc")
def test_memory_freed_below_a_live_block_is_returned():
    # Freeing one 2 MiB block makes glibc serve blocks of that size from its heap from then on; a block
    # allocated after them pins the heap's top, so freeing them returns nothing until the trim.
    torch.empty(2**19).fill_(1.0)
    blocks = [torch.empty(2**19).fill_(1.0) for _ in range(64)]   # 64 × 2 MiB, touched
    pin = torch.empty(2**19).fill_(1.0)
    del blocks
    before = resident_mib()
    assert release_freed_memory(torch.device("cpu"))
    assert before - resident_mib() > 100
    del pin


def test_nothing_is_done_off_the_cpu():
    assert release_freed_memory(torch.device("meta")) is False
