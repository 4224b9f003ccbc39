"""The ISA-L gzip reader DuckDB reads `.jsonl.gz` exports through: the bytes it serves, from any number of
threads in any order, and what it does with a file its gzip trailer does not describe."""

import gzip
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pytest

from finops_pipeline.sources import isal_gzip
from finops_pipeline.sources.isal_gzip import InflatedFile


def _lines(n: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    return b"".join(b'{"id": "%d", "text": "%s"}\n' % (i, rng.randbytes(rng.randint(0, 300)).hex().encode())
                    for i in range(n))


def _read_at(file: InflatedFile, ranges: list[tuple[int, int]], threads: int) -> dict[int, bytes]:
    """DuckDB's positional read: a seek then a read on the same thread."""
    def one(where: tuple[int, int]) -> tuple[int, bytes]:
        file.seek(where[0])
        return where[0], file.read(where[1])

    with ThreadPoolExecutor(threads) as pool:
        return dict(pool.map(one, ranges))


@pytest.mark.parametrize("hold_limit", [64 << 20, 1000], ids=["held ahead", "inflated again"])
def test_reads_at_offsets_from_many_threads_in_any_order_return_the_inflated_bytes(tmp_path, monkeypatch, hold_limit):
    monkeypatch.setattr(isal_gzip, "_HOLD_LIMIT", hold_limit)
    content = _lines(20_000)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(content))
    chunk = 65_536
    ranges = [(at, min(chunk, len(content) - at)) for at in range(0, len(content), chunk)]
    random.Random(7).shuffle(ranges)  # worse than DuckDB, whose threads ask nearly in turn
    file = InflatedFile(str(path))
    assert file.size == len(content)
    served = _read_at(file, ranges, threads=4)
    assert b"".join(served[at] for at in sorted(served)) == content
    file.seek(0)
    assert file.read() == content  # and once more from the start, in one read


def test_a_seek_on_one_thread_does_not_move_another_threads_read(tmp_path):
    content = _lines(5_000)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(content))
    file = InflatedFile(str(path))
    both_sought = threading.Barrier(2)

    def seek_then_read(at: int) -> bytes:
        file.seek(at)
        both_sought.wait(timeout=10)  # the other thread seeks between this one's seek and its read
        return file.read(100)

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(seek_then_read, [1_000, 50_000])) == [content[1_000:1_100], content[50_000:50_100]]


def test_a_read_without_a_seek_goes_on_where_the_last_read_ended_on_any_thread(tmp_path):
    """DuckDB 1.5 reads a file on in turns from its threads, seeking only to start: a handle's position is shared."""
    content = _lines(5_000)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(content))
    file = InflatedFile(str(path))
    with ThreadPoolExecutor(1) as first, ThreadPoolExecutor(1) as second:
        parts = [(first if n % 2 else second).submit(file.read, 30_000).result() for n in range(len(content) // 30_000 + 2)]
    assert b"".join(parts) == content and parts[-1] == b""


def test_a_file_longer_than_its_trailer_says_raises_rather_than_stop_short(tmp_path):
    path = tmp_path / "two-members.jsonl.gz"  # what `cat a.gz b.gz` makes: the trailer sizes only the last
    path.write_bytes(gzip.compress(_lines(2_000)) + gzip.compress(_lines(10, seed=2)))
    file = InflatedFile(str(path))
    with pytest.raises(OSError, match="more than the .* bytes its gzip trailer gives"):
        while file.read(4096):
            pass
    assert isal_gzip.failed_on([str(path)])
    assert isal_gzip.for_duckdb([str(path)]) == ([str(path)], "auto_detect")  # from now on DuckDB's own gzip reads it


def test_duckdb_reads_the_files_as_its_own_gzip_does(tmp_path):
    paths = []
    for n in range(3):
        path = tmp_path / f"{n}.jsonl.gz"
        path.write_bytes(gzip.compress(_lines(5_000 * (n + 1), seed=n)))
        paths.append(str(path))
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(_lines(100, seed=9))
    paths.append(str(plain))
    with duckdb.connect() as conn:
        isal_gzip.register(conn)
        isal_gzip.register(conn)  # once per database, however often asked
        files, compression = isal_gzip.for_duckdb(paths)
        assert compression == "uncompressed" and files[0].startswith("isalgz://") and files[-1] == str(plain)
        query = ("SELECT list_position($files, filename) AS file, count(*), sum(id::BIGINT), max(length(text)) "
                 "FROM read_json($files, format='newline_delimited', filename=true, compression=$compression, "
                 "columns={'id': 'VARCHAR', 'text': 'VARCHAR'}) GROUP BY ALL ORDER BY ALL")
        inflated = conn.execute(query, {"files": files, "compression": compression}).fetchall()
        own = conn.execute(query, {"files": paths, "compression": "auto_detect"}).fetchall()
    assert inflated == own
    assert [row[1] for row in own] == [5_000, 10_000, 15_000, 100]
