"""glibc malloc and Pillow allocator tuning: request bursts must not ratchet RSS up for good, and a
decoded photo must not cost a fresh mmap each time.

glibc serves large allocations (request bodies, decoded photos) with mmap and returns them at free,
but its *dynamic* mmap threshold rises to the size of every such block freed, up to 32 MiB: after the
first burst, later 1-20 MiB bodies come from the heap arenas instead, and freed arena memory mostly
stays resident (each decode thread has its own arena). Pinning the threshold keeps big blocks on
mmap, so they go back to the OS when freed; ``malloc_trim`` after unloading a model version returns
what the freed session left in the arenas. Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

from PIL import Image

log = logging.getLogger(__name__)

#: mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Blocks at least this large are mmap'ed and unmapped at free (glibc's static default is 128 KiB).
MMAP_THRESHOLD_BYTES = 256 * 1024
#: Free heap above this is trimmed back to the OS (glibc's default, made static by setting it).
TRIM_THRESHOLD_BYTES = 128 * 1024

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name or "libc.so.6")
            libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            return None
        _libc = libc
    return _libc


def configure_malloc(arena_max: int = 0) -> bool:
    """Pin glibc's mmap and trim thresholds (and optionally cap arenas); False where unavailable."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if arena_max > 0:
        ok = bool(libc.mallopt(M_ARENA_MAX, arena_max)) and ok
    if not ok:
        log.warning("mallopt refused the memory settings; RSS may stay high after bursts")
    return ok


#: Pillow's image blocks: at most this many bytes each (its default is 16 MiB) ...
PILLOW_BLOCK_BYTES = 1024 * 1024
#: ... and this many freed blocks kept for reuse per decode thread (its default keeps none). A photo
#: holds about four blocks through decode, resize and crop; without a cache each is a fresh mmap whose
#: pages fault in on first touch: 2048x1536 JPEGs took 3,606 faults each without it, 565 with it.
#: (The measurement is in benchmarks/README.md, "Pillow's block cache".)
PILLOW_BLOCKS_PER_DECODE_THREAD = 8


def pillow_cache_blocks(decode_threads: int) -> int:
    return PILLOW_BLOCKS_PER_DECODE_THREAD * max(1, decode_threads)


def pillow_cache_bytes(decode_threads: int) -> int:
    """The most freed image memory Pillow keeps for reuse (a term of ``service.limits.budget.rss_bound``)."""
    return pillow_cache_blocks(decode_threads) * PILLOW_BLOCK_BYTES


def configure_pillow(decode_threads: int) -> int:
    """Let Pillow reuse freed image blocks instead of unmapping them; returns the bytes it may keep.

    These are the allocator settings Pillow documents as ``PILLOW_BLOCK_SIZE`` and ``PILLOW_BLOCKS_MAX``
    (read from the environment only when Pillow is imported, hence the calls). A block going back to the
    cache is shrunk to the block size, so the cache holds at most :func:`pillow_cache_bytes`.
    """
    Image.core.set_block_size(PILLOW_BLOCK_BYTES)
    Image.core.set_blocks_max(pillow_cache_blocks(decode_threads))
    return pillow_cache_bytes(decode_threads)


#: Allocations between young-generation collections (CPython's default is 700). A request allocates a
#: few thousand short-lived objects; collecting every 700 made the cyclic GC a visible share of the
#: event loop's time per request under load.
GC_GEN0_THRESHOLD = 20_000


def tune_gc() -> None:
    """After start-up: move the long-lived objects (modules, sessions' wrappers) out of the GC's way."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, second, third)


def release_freed_memory() -> None:
    """Return free heap pages of every arena to the OS (after a model version is dropped)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
