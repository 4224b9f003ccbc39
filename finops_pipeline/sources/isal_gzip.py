"""`.gz` files inflated by ISA-L, for DuckDB to read as plain files: DuckDB's own gzip inflates about
380 MB/s a thread on the build machine, ISA-L (python-isal) 1.1 GB/s, and inflating is most of what
DuckDB's own read of a JSONL export costs.

`register(conn)` gives DuckDB the `isalgz://` filesystem (DuckDB's fsspec interface); `for_duckdb(paths)`
names files for a read: `.gz` ones in that filesystem, read with `compression='uncompressed'` (the bytes DuckDB
sees are inflated).

A file's size is what its gzip trailer says (ISIZE). When the stream turns out longer than that (several
gzip members, or over 4 GiB), ends early or is corrupt, the read raises rather than return part of the
file, so a statement never sees a file cut short. DuckDB reports that as a bare `duckdb.Error`;
`failed_on(paths)` tells it from a bug, and from then on `for_duckdb` leaves that file to DuckDB's own gzip.

DuckDB reads one handle from several threads. DuckDB 2 makes each read a seek then a read on the same
thread, so a seek is kept for the thread that made it; DuckDB 1.5 also reads on without a seek, where the
previous read (on any thread) ended. Reads are served in turn under a lock. A read ahead of the stream (DuckDB
hands out a file's buffers in order, but its threads may ask out of order) inflates the bytes between
and holds them for the read of that range, which is already on its way.
"""

from __future__ import annotations

import struct
import threading
from pathlib import Path

import duckdb
from fsspec import AbstractFileSystem
from isal import igzip

PROTOCOL = "isalgz"
_HOLD_LIMIT = 64 << 20  # bytes inflated ahead and held per file; beyond it, a read out of turn re-inflates
_failed: set[str] = set()  # files ISA-L could not read as their trailer describes them


def register(conn: duckdb.DuckDBPyConnection) -> None:
    """Make `isalgz://` paths readable on `conn`'s database (once per database)."""
    if PROTOCOL not in conn.list_filesystems():
        conn.register_filesystem(IsalGzipFileSystem())


def for_duckdb(paths: list[str]) -> tuple[list[str], str]:
    """`paths` as DuckDB should read them, and the `compression` to read them with: `.gz` files inflated
    by ISA-L, unless it failed on one of them (then all by DuckDB's own gzip)."""
    if failed_on(paths):
        return paths, "auto_detect"
    return [f"{PROTOCOL}://{p}" if p.endswith(".gz") else p for p in paths], "uncompressed"


def failed_on(paths: list[str]) -> bool:
    """Did ISA-L fail on one of `paths` (the local paths given to `for_duckdb`)?"""
    return any(p in _failed for p in paths)


def damage(path: str) -> str | None:
    """Why the gzip file at `path` cannot be inflated whole (cut short, corrupt), or None when it can (several
    members, over 4 GiB: what DuckDB's own gzip reads). DuckDB's own gzip returns a cut-short file's first part
    without an error (seen in 1.5): a file is checked here before DuckDB reads it that way."""
    try:
        with igzip.open(path, "rb") as stream:
            while stream.read(16 << 20):
                pass
    except (OSError, EOFError, ValueError) as exc:  # isal raises BadGzipFile (an OSError) or EOFError
        return f"{type(exc).__name__}: {exc}"
    return None


def trailer_size(path: str) -> int:
    """The inflated size a gzip file's trailer gives: exact for one member under 4 GiB."""
    try:
        with open(path, "rb") as raw:
            raw.seek(-4, 2)
            return struct.unpack("<I", raw.read(4))[0]
    except (OSError, struct.error):  # shorter than a trailer
        _failed.add(path)
        raise


class IsalGzipFileSystem(AbstractFileSystem):
    protocol = PROTOCOL

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(path).removeprefix(f"{PROTOCOL}://")

    def info(self, path: str, **kwargs) -> dict:
        local = self._strip_protocol(path)
        if not Path(local).is_file():
            raise FileNotFoundError(local)
        return {"name": local, "size": trailer_size(local), "type": "file"}

    def _open(self, path: str, mode: str = "rb", **kwargs) -> InflatedFile:
        if mode != "rb":
            raise PermissionError(f"{PROTOCOL}:// files are read-only: {path}")
        return InflatedFile(self._strip_protocol(path))


class InflatedFile:
    """A gzip file's inflated bytes, for reads at offsets from several threads (see module doc)."""

    def __init__(self, path: str):
        self.path = path
        self.size = trailer_size(path)
        self._stream = igzip.open(path, "rb")
        self._at = 0  # where the stream is
        self._held: dict[int, bytes] = {}  # offset -> bytes inflated ahead of the read that wants them
        self._lock = threading.Lock()
        self._sought = threading.local()  # a thread's seek, for its next read
        self._position = 0  # where the last seek or read (on any thread) left the handle

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute seeks")
        self._sought.value = self._position = offset
        return offset

    def tell(self) -> int:
        sought = getattr(self._sought, "value", None)
        return self._position if sought is None else sought

    def read(self, n: int = -1) -> bytes:
        start = self.tell()
        self._sought.value = None
        want = self.size - start if n < 0 else min(n, self.size - start)
        try:
            with self._lock:
                data = self._read_at(start, want)
            if len(data) < want:
                raise OSError(f"{self.path} ends before the {self.size:,} bytes its gzip trailer gives")
        except Exception:  # corrupt, cut short, or longer than its trailer says
            _failed.add(self.path)
            raise
        self._position = start + len(data)
        return data

    def _read_at(self, start: int, n: int) -> bytes:
        parts = []
        while n > 0:
            chunk = self._held.pop(start, None)
            if chunk is None:
                self._move_to(start)
                chunk = self._inflate(n)
                if not chunk:
                    break
            if len(chunk) > n:
                self._held[start + n], chunk = chunk[n:], chunk[:n]
            parts.append(chunk)
            start += len(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _move_to(self, start: int) -> None:
        gap = start - self._at
        if 0 < gap and gap + sum(map(len, self._held.values())) <= _HOLD_LIMIT:
            at = self._at  # taken before inflating moves it
            self._held[at] = self._inflate(gap)
        elif gap:
            self._stream.seek(start)  # back (inflates again from the start) or far ahead
            self._at = start

    def _inflate(self, n: int) -> bytes:
        data = self._stream.read(n)
        self._at += len(data)
        if self._at >= self.size and self._stream.read(1):
            raise OSError(f"{self.path} inflates to more than the {self.size:,} bytes its gzip trailer gives "
                          "(several gzip members, or over 4 GiB)")
        return data

    def close(self) -> None:
        self._stream.close()
        self._held.clear()
