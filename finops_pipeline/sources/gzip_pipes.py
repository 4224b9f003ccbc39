"""Gzip files inflated by ISA-L into named pipes, for DuckDB to read as plain files.

Inflating is most of the time it takes to read a day of `.jsonl.gz` export: DuckDB's own gzip reader
inflates about 0.5 GB/s a thread, ISA-L (python-isal, which releases the GIL) about 1 GB/s. So each
file gets a FIFO and a thread that inflates into it, and DuckDB reads the FIFOs as it reaches them.
Memory stays flat: a pipe holds 1 MB, whatever the file's size.

A pipe cannot tell its reader that the writer failed (a truncated file looks like a shorter one), nor
serve a second reader from the start (DuckDB opens a file twice when it sniffs it first: the second
read is empty). So the writers count the lines they served, and the caller compares them with the rows
DuckDB read, in a transaction it rolls back when they differ or when `check()` raises.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from isal import igzip

CHUNK = 1 << 20  # the pipe's size on Linux


class InflateError(Exception):
    """A file could not be inflated to its end, or not to one reader: what DuckDB read of it is not it."""


class GzipPipes:
    def __init__(self, sources: list[Path], folder: Path):
        self.sources = sources
        self.paths = [str(folder / f"{rank}.{Path(source.name).stem}") for rank, source in enumerate(sources)]
        for path in self.paths:
            os.mkfifo(path, 0o600)
        self.lines_served = [0] * len(sources)  # lines written (a last line without newline counts)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max(1, len(sources)), thread_name_prefix="gzip-pipe")
        # One writer a file, each blocked in open() until DuckDB opens its pipe (in any order).
        self._writers: list[Future] = [self._pool.submit(self._serve, rank) for rank in range(len(sources))]

    def _serve(self, rank: int) -> None:
        """Serve the pipe's first reader the inflated file. A reader that opens it later (DuckDB sniffing
        first) gets an empty file, not a hang: the rows it reads then differ from the lines served."""
        fd = os.open(self.paths[rank], os.O_WRONLY)  # waits for the reader
        try:
            if hasattr(fcntl, "F_SETPIPE_SZ"):  # Linux: 1 MB instead of 64 KB, fewer context switches
                try:
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)
                except OSError:
                    pass
            self._inflate(rank, fd)
        except BrokenPipeError:
            pass  # the reader left early
        finally:
            os.close(fd)
        while not self._stop.is_set():
            os.close(os.open(self.paths[rank], os.O_WRONLY))  # returns at once while the reader still holds it
            time.sleep(0.005)

    def _inflate(self, rank: int, fd: int) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        last = b"\n"
        with igzip.open(self.sources[rank], "rb") as compressed:
            while not self._stop.is_set() and (size := compressed.readinto(buffer)):
                rest = view[:size]
                while rest:
                    rest = rest[os.write(fd, rest):]
                self.lines_served[rank] += buffer.count(b"\n", 0, size)
                last = buffer[size - 1:size]
        if last != b"\n":
            self.lines_served[rank] += 1

    def check(self) -> None:
        """Raise InflateError if a file could not be inflated to its end (call once DuckDB has read them)."""
        for source, writer in zip(self.sources, self._writers):
            error = writer.exception(timeout=0) if writer.done() else None
            if error is not None:
                raise InflateError(f"{source}: {type(error).__name__}: {error}")

    def close(self) -> None:
        """Stop every writer: open its pipe so that a writer waiting for a reader goes on, and drain it
        until the writer, told to stop, has closed it."""
        self._stop.set()
        for path, writer in zip(self.paths, self._writers):
            if writer.done():
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                while not writer.done():
                    try:
                        os.read(fd, CHUNK)
                    except BlockingIOError:
                        time.sleep(0.001)
            finally:
                os.close(fd)
        self._pool.shutdown()


@contextmanager
def gzip_pipes(sources: list[Path]) -> Iterator[GzipPipes]:
    """FIFOs (`.paths`, in the order of `sources`) that yield each source inflated."""
    with tempfile.TemporaryDirectory(prefix="finops-gzip-") as folder:
        pipes = GzipPipes(sources, Path(folder))
        try:
            yield pipes
        finally:
            pipes.close()
