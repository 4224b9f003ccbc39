"""Export files inflated by ISA-L into named pipes: what DuckDB reads is each file whole, or an error."""

import gzip
import threading
import time

import duckdb
import pytest

from finops_pipeline.sources.gzip_pipes import InflateError, gzip_pipes


def lines_file(path, n: int, start: int = 0):
    path.write_bytes(gzip.compress("".join(f'{{"n": {i}}}\n' for i in range(start, start + n)).encode()))
    return path


def read_json(paths: list[str]) -> list[tuple]:
    with duckdb.connect() as conn:
        return conn.execute("SELECT count(*), sum(n), count(DISTINCT filename) FROM read_json($files, "
                            "format='newline_delimited', records=true, columns={'n': 'BIGINT'}, filename=true)", {"files": paths}).fetchall()


def test_duckdb_reads_every_file_whole_through_its_pipe(tmp_path):
    sources = [lines_file(tmp_path / f"{i}.jsonl.gz", 200_000 + i, start=1_000_000 * i) for i in range(3)]
    with gzip_pipes(sources) as pipes:
        got = read_json(pipes.paths)
        pipes.check()
        assert pipes.lines_served == [200_000, 200_001, 200_002]
    expected = sum(sum(range(1_000_000 * i, 1_000_000 * i + 200_000 + i)) for i in range(3))
    assert got == [(600_003, expected, 3)]


def test_a_truncated_file_fails_the_check_naming_it(tmp_path):
    good = lines_file(tmp_path / "good.jsonl.gz", 50_000)
    cut = lines_file(tmp_path / "cut.jsonl.gz", 50_000)
    cut.write_bytes(cut.read_bytes()[:-8])  # no CRC and size: a copy cut short
    with gzip_pipes([good, cut]) as pipes:
        assert read_json(pipes.paths)[0][0] < 100_000  # to the reader, a shorter file...
        with pytest.raises(InflateError, match="cut.jsonl.gz"):
            pipes.check()  # ...so the check must say


def test_pipes_the_reader_failed_on_or_never_opened_are_released(tmp_path):
    sources = [lines_file(tmp_path / f"{i}.jsonl.gz", 100_000) for i in range(4)]
    sources[1].write_bytes(gzip.compress(b'{"n": 1}\nnot json\n' * 100_000))
    threads_before = threading.active_count()
    started = time.monotonic()
    with gzip_pipes(sources) as pipes:
        with pytest.raises(duckdb.InvalidInputException):
            read_json(pipes.paths[:2])  # fails on the second file; the last two are never opened
    assert time.monotonic() - started < 30  # no writer left waiting for a reader
    assert threading.active_count() == threads_before


def test_a_second_reader_gets_an_empty_file_not_a_hang(tmp_path):
    """DuckDB opens a file twice when it sniffs it first: the second read must end, and differ."""
    source = lines_file(tmp_path / "a.jsonl.gz", 1_000)
    with gzip_pipes([source]) as pipes:
        reads = []
        for _ in range(2):
            with open(pipes.paths[0], "rb") as pipe:
                reads.append(pipe.read().count(b"\n"))
        assert reads == [1_000, 0]
        assert pipes.lines_served == [1_000]
