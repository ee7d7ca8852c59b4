"""Freed memory kept in the process for reuse (glibc), so that a training step does not page-fault.

glibc's malloc hands a block above its mmap threshold (adaptive, at most 32 MB) straight back to
the kernel when it is freed, and trims the top of its heap past 128 kB of free space. The next
block of that size then starts from fresh pages, each a page fault on first touch. A union
training step allocates and frees its [B, 9, n] coefficient tensors (14 MB each on cnn_small,
batch 128) every step: measured on 2 CPU cores, 50,000-60,000 minor page faults per CROWN-IBP-union
step, and with this setting none, at about 0.83x the step time (three pairs of processes,
alternated); plain and IBP-union steps are unchanged. The certification cascade's bounds and
attacks do the same: a no-MIP run on 100 points x 3 norms of both published networks took 9
million faults, 0.4 million with the setting, and the cascade 0.61x (MNIST) and 0.73x (F-MNIST)
the time, with the same LB and UB once the attacks were seeded (``cascade._attack_seed``). The
cost: the process keeps the memory of its largest step resident instead of giving it back
between steps. ``train.py`` and ``certify.py`` set it; the MIP workers, spawned,
keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import platform

#: mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to 1 GiB come from the heap, and the heap is never trimmed (2^31 - 1: mallopt's int)
_MMAP_THRESHOLD, _TRIM_THRESHOLD = 2**30, 2**31 - 1


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds as above; False (nothing done) on another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_set = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_MMAP_THRESHOLD))
    trim_set = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_TRIM_THRESHOLD))
    return bool(mmap_set and trim_set)
