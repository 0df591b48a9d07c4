"""``release_host_memory=true``: freed host memory handed back to the operating system between the phases
of a training step.

On CPU every activation is a ``malloc``'d block of a few MiB. glibc's allocator serves blocks of that
size from its heap once it has seen one freed, and returns heap memory to the system only from the top
of the heap: after a forward or a backward pass, most of what was freed stays resident, and the next
pass's blocks do not always fit the holes, so the resident set creeps up by hundreds of MiB above what is
alive. ``malloc_trim(0)`` hands the free pages back (``madvise``), which costs one pass over the
allocator's free lists. Returning every freed block at once instead (a fixed ``M_MMAP_THRESHOLD``)
lowers the peak further but pays a page fault for every page of every new block, on each pass.
``benchmarks/host_memory.py`` measures the policies side by side (figures in ``benchmarks/RESULTS.md``).

A no-op off CPU, off glibc, or where ``malloc_trim`` is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch


@functools.cache
def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):   # not glibc (musl, macOS, Windows)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory(device: torch.device) -> bool:
    """Return the host allocator's free pages to the system when ``device`` is the CPU; True if done."""
    if device.type != "cpu":
        return False
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
