"""Shared memory for tensor bytes.

The side that writes tensors owns the segments it writes into and allocates blocks in them; the other side maps
those segments read-only and hands each block back once no array over it is alive, so a model may keep an input
(or a front end an output) as long as it likes. A segment is a memfd on Linux and an unlinked file elsewhere: it
has no name in /dev/shm, its descriptor is passed over the socket, and it is gone once both processes are, however
they end. Segments grow as Triton's Python backend grows its pool (`shm-default-byte-size`, then
`shm-growth-byte-size` at a time, or a segment of a tensor's own size)."""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import tempfile
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

ALIGN = 64


# Where some bytes lie: a segment, an offset in it and a size (a plain tuple, as it crosses the boundary).
Block = tuple[int, int, int]


class NewSegment(NamedTuple):
    """A segment the reader has not mapped yet, with the descriptor to send it."""

    segment: int
    size: int
    fd: int


def aligned(size: int) -> int:
    """`size` rounded up to the alignment every block and tensor starts at."""
    return (size + ALIGN - 1) // ALIGN * ALIGN


class WriteArena:
    """The segments one side writes tensors into, with first-fit allocation of blocks."""

    def __init__(self, label: str, first_size: int, growth: int) -> None:
        self._label = label
        self._first_size = first_size
        self._growth = growth
        self._maps: dict[int, mmap.mmap] = {}
        self._sizes: dict[int, int] = {}
        self._holes: dict[int, list[tuple[int, int]]] = {}  # segment -> sorted (offset, size) of the free space
        self._used: dict[int, int] = {}  # segment -> blocks allocated in it
        self._next = 0
        self._lock = threading.Lock()
        self._created: list[NewSegment] = []
        self._dropped: list[int] = []

    def allocate(self, size: int) -> Block:
        """A block of at least `size` bytes; raises OSError when no memory can be had."""
        size = aligned(max(size, 1))
        with self._lock:
            for segment, holes in self._holes.items():
                for index, (offset, room) in enumerate(holes):
                    if room >= size:
                        if room == size:
                            del holes[index]
                        else:
                            holes[index] = (offset + size, room - size)
                        self._used[segment] += 1
                        return (segment, offset, size)
            segment = self._grow(size)
            room = self._sizes[segment]
            self._holes[segment] = [(size, room - size)] if room > size else []
            self._used[segment] = 1
            return (segment, 0, size)

    def write(self, block: Block, position: int, data: bytes | np.ndarray) -> None:
        """Copy `data` (C-contiguous when an array) into `block` at `position`."""
        segment, offset, _size = block
        start = offset + position
        if isinstance(data, np.ndarray):
            self._maps[segment][start : start + data.nbytes] = data.data
        else:
            self._maps[segment][start : start + len(data)] = data

    def array(self, block: Block, position: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """A writable array over part of `block`, to copy a non-contiguous tensor into."""
        count = 1
        for dim in shape:
            count *= dim
        segment, offset, _size = block
        return np.frombuffer(self._maps[segment], dtype=dtype, count=count, offset=offset + position).reshape(shape)

    def free(self, blocks: Iterable[Block]) -> None:
        """Take back blocks the reader no longer uses; a grown segment left empty is released."""
        with self._lock:
            for segment, offset, size in blocks:
                holes = self._holes.get(segment)
                if holes is None:
                    continue
                _insert_hole(holes, offset, size)
                self._used[segment] -= 1
                if self._used[segment] == 0 and segment != 0:
                    self._release(segment)

    def take_created(self) -> list[NewSegment]:
        """Segments made since the last call, to send (their descriptors are then the caller's to close)."""
        with self._lock:
            created, self._created = self._created, []
        return created

    def take_dropped(self) -> list[int]:
        """Segments released since the last call, for the reader to unmap."""
        with self._lock:
            dropped, self._dropped = self._dropped, []
        return dropped

    def close(self) -> None:
        """Unmap every segment and close descriptors never sent."""
        with self._lock:
            for new in self._created:
                os.close(new.fd)
            self._created = []
            for segment in list(self._maps):
                self._release(segment)
            self._dropped = []

    @property
    def size(self) -> int:
        """Bytes of shared memory mapped now."""
        return sum(self._sizes.values())

    def _grow(self, needed: int) -> int:
        segment = self._next
        self._next += 1
        size = self._first_size if segment == 0 else self._growth
        size = max(size, needed)
        size = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        fd = _new_memory(f"{self._label}-{segment}", size)
        try:
            self._maps[segment] = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._sizes[segment] = size
        self._created.append(NewSegment(segment, size, fd))
        return segment

    def _release(self, segment: int) -> None:
        mapped = self._maps.pop(segment)
        with contextlib.suppress(BufferError):  # a view made by `array` is still alive: the mapping goes with it
            mapped.close()
        del self._sizes[segment], self._holes[segment], self._used[segment]
        self._dropped.append(segment)


def _insert_hole(holes: list[tuple[int, int]], offset: int, size: int) -> None:
    """Add free space to a sorted list of holes, merging it with the holes it touches."""
    index = bisect.bisect_left(holes, (offset, 0))
    if index > 0 and holes[index - 1][0] + holes[index - 1][1] == offset:
        index -= 1
        offset, size = holes[index][0], holes[index][1] + size
        del holes[index]
    if index < len(holes) and offset + size == holes[index][0]:
        size += holes[index][1]
        del holes[index]
    holes.insert(index, (offset, size))


def _new_memory(label: str, size: int) -> int:
    """A descriptor of `size` bytes of shared memory that no name reaches."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create(label, os.MFD_CLOEXEC)
    else:  # pragma: no cover - macOS: an unlinked file, which the page cache keeps in memory
        fd, path = tempfile.mkstemp(prefix=f"{label}-")
        os.unlink(path)
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Lease(weakref.ref):  # type: ignore[type-arg]
    """A weak reference to the array over a block, which gives the block back when the array goes."""

    __slots__ = ("block",)
    block: Block


class ReadArena:
    """The other side's segments, mapped read-only; the blocks whose arrays are gone wait in `freed`."""

    def __init__(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}
        self._leases: dict[Block, _Lease] = {}
        self._closing: list[mmap.mmap] = []
        self.freed: deque[Block] = deque()

    def add(self, segment: int, size: int, fd: int) -> None:
        """Map a segment the writer made (the descriptor is closed)."""
        try:
            self._maps[segment] = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)

    def drop(self, segment: int) -> None:
        """Unmap a segment the writer released."""
        mapped = self._maps.pop(segment, None)
        if mapped is not None:
            self._close(mapped)

    def view(self, block: Block) -> np.ndarray:
        """The block's bytes as a read-only uint8 array; the block is freed once it and every view of it are gone."""
        segment, offset, size = block = (int(block[0]), int(block[1]), int(block[2]))
        array = np.frombuffer(self._maps[segment], dtype=np.uint8, count=size, offset=offset)
        lease = _Lease(array, self._give_back)
        lease.block = block
        self._leases[block] = lease
        return array

    def take_freed(self) -> tuple[Block, ...]:
        """The blocks given back since the last call."""
        freed = self.freed
        if not freed:
            return ()
        taken: list[Block] = []
        while freed:
            taken.append(freed.popleft())
        return tuple(taken)

    def close(self) -> None:
        """Unmap every segment; a mapping that arrays still use goes when they do."""
        for mapped in self._maps.values():
            self._close(mapped)
        self._maps.clear()

    def _give_back(self, lease: _Lease) -> None:
        if self._leases.pop(lease.block, None) is lease:
            self.freed.append(lease.block)

    def _close(self, mapped: mmap.mmap) -> None:
        try:
            mapped.close()
        except BufferError:  # an array still uses it: unmapped when the last one goes
            self._closing.append(mapped)
        self._closing = [m for m in self._closing if not _try_close(m)]


def _try_close(mapped: mmap.mmap) -> bool:
    try:
        mapped.close()
    except BufferError:
        return False
    return True
