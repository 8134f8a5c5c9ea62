"""The warm interpreter's anonymous memory in transparent huge pages, before the full fork
server is forked from it.

A fork copies the parent's page tables: one entry per 4 KiB page of anonymous memory, ~60,000
for a zygote that imported the scientific stack, which made a full child's fork and its exit
take ~10 ms each on a VM. Collapsed into 2 MiB pages (MADV_COLLAPSE, Linux 6.1+), the heap and
the large anonymous mappings are one entry per 2 MiB. A child's first write to a shared huge
page splits its own mapping and copies 4 KiB, as before; the parent's stays whole.

Done in the zygote, so the fork servers share the huge pages with it rather than each holding a
copy. Best effort: a kernel without MADV_COLLAPSE, or THP disabled, leaves memory as it was.
"""

from __future__ import annotations

import ctypes

MADV_COLLAPSE = 25
HUGE = 2 << 20


def collapse() -> int:
    """Collapse what can be: returns the bytes collapsed (0 where the kernel cannot)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    asked = 0
    with open("/proc/self/maps") as maps:
        regions = [line.split() for line in maps]
    for fields in regions:
        # Private writable anonymous memory only (no path, or the brk heap): file pages are the
        # page cache's, and the stack grows down into what it has not mapped yet.
        if fields[1] != "rw-p" or (len(fields) > 5 and fields[5] != "[heap]"):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        start, end = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
        if end <= start:
            continue
        # One 2 MiB page a call: the kernel gives up on a whole range at some failures (no free
        # huge page at hand, the cgroup's charge), and a later page may still succeed.
        for page in range(start, end, HUGE):
            if libc.madvise(page, HUGE, MADV_COLLAPSE) == 0:  # else EINVAL (e.g. nothing mapped), ENOMEM...
                asked += HUGE
    return asked
