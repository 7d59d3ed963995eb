"""Shared-memory arenas: first-fit blocks in memfd segments, and read-only views that give blocks back."""

import contextlib
import gc
import mmap
import os
from collections.abc import Iterator

import numpy as np
import pytest

from naiad.processes.arena import ALIGN, ReadArena, WriteArena, aligned

PAGE = mmap.PAGESIZE


@pytest.fixture
def writer() -> Iterator[WriteArena]:
    arena = WriteArena("test", 4 * PAGE, 8 * PAGE)
    yield arena
    arena.close()


def close_created(arena: WriteArena) -> list[tuple[int, int]]:
    created = arena.take_created()
    for new in created:
        os.close(new.fd)
    return [(new.segment, new.size) for new in created]


def test_aligned_rounds_up_to_64_bytes() -> None:
    assert ALIGN == 64
    assert [aligned(n) for n in (0, 1, 63, 64, 65, 128, 129)] == [0, 64, 64, 64, 128, 128, 192]


def test_blocks_are_aligned_and_laid_out_first_fit(writer: WriteArena) -> None:
    first = writer.allocate(10)
    second = writer.allocate(100)
    third = writer.allocate(0)
    assert first == (0, 0, 64)
    assert second == (0, 64, 128)
    assert third == (0, 192, 64)
    writer.free([first])
    assert writer.allocate(1) == (0, 0, 64)
    assert writer.allocate(64) == (0, 256, 64)
    assert close_created(writer) == [(0, 4 * PAGE)]


def test_first_fit_takes_the_first_hole_big_enough(writer: WriteArena) -> None:
    blocks = [writer.allocate(256) for _ in range(4)]
    writer.free([blocks[0], blocks[2]])  # holes of 256 at 0 and at 512
    assert writer.allocate(512) == (0, 1024, 512)  # neither hole fits
    assert writer.allocate(128) == (0, 0, 128)
    assert writer.allocate(192) == (0, 512, 192)  # the first hole has only 128 left
    assert writer.allocate(128) == (0, 128, 128)


def test_freed_neighbours_coalesce_so_the_whole_segment_fits_again(writer: WriteArena) -> None:
    size = 4 * PAGE
    quarter = size // 4
    blocks = [writer.allocate(quarter) for _ in range(4)]
    assert [block[1] for block in blocks] == [0, quarter, 2 * quarter, 3 * quarter]
    writer.free([blocks[1]])
    writer.free([blocks[3]])
    writer.free([blocks[0]])  # merges with the hole after it
    writer.free([blocks[2]])  # merges with the holes on both sides
    assert writer.allocate(size) == (0, 0, size)
    assert close_created(writer) == [(0, size)]
    assert writer.size == size


def test_a_block_bigger_than_the_first_segment_grows_a_segment_of_its_size(writer: WriteArena) -> None:
    writer.allocate(64)
    assert writer.allocate(5 * PAGE) == (1, 0, 5 * PAGE)
    assert writer.allocate(20 * PAGE + 1) == (2, 0, aligned(20 * PAGE + 1))
    assert close_created(writer) == [(0, 4 * PAGE), (1, 8 * PAGE), (2, 21 * PAGE)]
    assert writer.size == (4 + 8 + 21) * PAGE


def test_a_full_segment_grows_by_the_growth_size(writer: WriteArena) -> None:
    writer.allocate(4 * PAGE)
    assert writer.allocate(64) == (1, 0, 64)
    assert writer.allocate(64) == (1, 64, 64)
    assert close_created(writer) == [(0, 4 * PAGE), (1, 8 * PAGE)]


def test_take_created_returns_each_segment_once_with_its_descriptor(writer: WriteArena) -> None:
    writer.allocate(64)
    created = writer.take_created()
    assert len(created) == 1
    new = created[0]
    assert (new.segment, new.size) == (0, 4 * PAGE)
    assert os.fstat(new.fd).st_size == 4 * PAGE
    os.close(new.fd)
    writer.allocate(64)
    assert writer.take_created() == []


def test_a_grown_segment_is_released_when_its_last_block_is_freed(writer: WriteArena) -> None:
    writer.allocate(4 * PAGE)
    first = writer.allocate(100)
    second = writer.allocate(100)
    assert first[0] == second[0] == 1
    assert writer.size == 12 * PAGE
    writer.free([first])
    assert writer.take_dropped() == []
    writer.free([second])
    assert writer.take_dropped() == [1]
    assert writer.take_dropped() == []
    assert writer.size == 4 * PAGE
    writer.free([second])  # a block of a released segment is ignored
    assert writer.size == 4 * PAGE
    assert writer.allocate(100) == (2, 0, 128)  # segment numbers are not reused


def test_segment_zero_is_never_released(writer: WriteArena) -> None:
    block = writer.allocate(100)
    writer.free([block])
    assert writer.take_dropped() == []
    assert writer.size == 4 * PAGE
    assert writer.allocate(100) == (0, 0, 128)


def test_write_and_array_reach_the_block() -> None:
    arena = WriteArena("test", PAGE, PAGE)
    try:
        block = arena.allocate(128)
        arena.write(block, 0, b"abc")
        arena.write(block, 64, np.arange(4, dtype=np.int32))
        view = arena.array(block, 80, np.dtype(np.float32), (2, 2))
        view[...] = [[1.0, 2.0], [3.0, 4.0]]
        reader = ReadArena()
        for new in arena.take_created():
            reader.add(new.segment, new.size, new.fd)
        bytes_seen = reader.view(block)
        assert bytes(bytes_seen[:3]) == b"abc"
        assert bytes_seen[64:80].view(np.int32).tolist() == [0, 1, 2, 3]
        assert bytes_seen[80:96].view(np.float32).tolist() == [1.0, 2.0, 3.0, 4.0]
        del bytes_seen, view
        reader.close()
    finally:
        arena.close()


def test_a_reader_maps_the_writers_segment_and_sees_its_bytes(writer: WriteArena) -> None:
    writer.allocate(64)
    block = writer.allocate(1000)
    payload = bytes(range(256)) * 4
    writer.write(block, 0, payload[:1000])
    reader = ReadArena()
    for new in writer.take_created():
        reader.add(new.segment, new.size, new.fd)
        with pytest.raises(OSError):
            os.fstat(new.fd)  # add closed the descriptor
    array = reader.view(block)
    assert array.dtype == np.uint8
    assert array.shape == (aligned(1000),)
    assert array[:1000].tobytes() == payload[:1000]
    writer.write(block, 0, b"\xff\xfe")  # shared memory, not a copy
    assert array[:3].tolist() == [255, 254, 2]
    del array
    reader.close()


def test_a_view_is_read_only(writer: WriteArena) -> None:
    block = writer.allocate(64)
    reader = ReadArena()
    for new in writer.take_created():
        reader.add(new.segment, new.size, new.fd)
    array = reader.view(block)
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    with pytest.raises(ValueError):
        array.setflags(write=True)
    del array
    reader.close()


def test_a_block_is_freed_only_once_its_array_and_every_view_are_gone(writer: WriteArena) -> None:
    writer.allocate(64)
    block = writer.allocate(256)
    reader = ReadArena()
    for new in writer.take_created():
        reader.add(new.segment, new.size, new.fd)
    array = reader.view(block)
    part = array[64:128].view(np.int32).reshape(4, 4)
    assert reader.take_freed() == ()
    del array
    gc.collect()
    assert reader.take_freed() == ()
    assert list(reader.freed) == []
    del part
    gc.collect()
    assert reader.take_freed() == ((0, 64, 256),)
    assert reader.take_freed() == ()
    writer.free([block])
    assert writer.allocate(256) == block
    reader.close()


def test_each_block_viewed_is_given_back_on_its_own(writer: WriteArena) -> None:
    blocks = [writer.allocate(64) for _ in range(3)]
    reader = ReadArena()
    for new in writer.take_created():
        reader.add(new.segment, new.size, new.fd)
    arrays = [reader.view(block) for block in blocks]
    del arrays[1]
    gc.collect()
    assert reader.take_freed() == (blocks[1],)
    arrays.clear()
    gc.collect()
    assert sorted(reader.take_freed()) == [blocks[0], blocks[2]]
    reader.close()


def test_the_reader_drops_a_released_segment(writer: WriteArena) -> None:
    writer.allocate(4 * PAGE)
    grown = writer.allocate(64)
    reader = ReadArena()
    for new in writer.take_created():
        reader.add(new.segment, new.size, new.fd)
    array = reader.view(grown)
    kept = array[:8]
    del array
    writer.free([grown])
    assert writer.take_dropped() == [1]
    reader.drop(1)  # an array over it is alive: unmapped when it goes
    assert kept.tolist() == [0] * 8
    del kept
    gc.collect()
    assert reader.take_freed() == (grown,)
    reader.drop(1)  # twice is harmless
    reader.close()


def memfds_named(label: str) -> int:
    """Descriptors and mappings of this process that reach a memfd named `label`-something."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{label}-")
    with open("/proc/self/maps") as maps:
        count += sum(f"/memfd:{label}-" in line for line in maps)
    return count


def test_close_unmaps_every_segment_and_closes_unsent_descriptors() -> None:
    arena = WriteArena("closing", PAGE, PAGE)
    arena.allocate(PAGE)
    arena.allocate(3 * PAGE)
    assert arena.size == 4 * PAGE
    assert memfds_named("closing") > 0
    arena.close()
    assert arena.size == 0
    assert memfds_named("closing") == 0
    assert arena.take_created() == []
    assert arena.take_dropped() == []


def test_close_keeps_descriptors_already_taken() -> None:
    arena = WriteArena("taken", PAGE, PAGE)
    arena.allocate(64)
    (new,) = arena.take_created()
    arena.close()
    assert arena.size == 0
    assert os.fstat(new.fd).st_size == PAGE  # the caller's to close
    os.close(new.fd)
    assert memfds_named("taken") == 0
