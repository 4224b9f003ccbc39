"""The part every test double of an outside API shares: a real HTTP/1.1 server on loopback, a log of what
arrived, faults queued by a test, and contract errors (responses that broke the official schema)."""

from __future__ import annotations

import abc
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DROP = -1  # a status that means: close the connection without an answer


class HttpDouble(abc.ABC):
    """Subclasses answer `respond(path, query, headers) -> (status, headers, body)`; `query` maps each
    parameter to its list of values, and a POST's body is `query["body"]`."""

    def __init__(self):
        self.requests: list[tuple[str, dict]] = []           # (path, query with each parameter's last value)
        self.arrivals: list[tuple[float, str, int]] = []     # (time.monotonic(), path, status answered)
        self.contract_errors: list[str] = []
        self._faults: list[dict] = []
        self._lock = threading.Lock()

    @abc.abstractmethod
    def respond(self, path: str, query: dict[str, list[str]], headers) -> tuple[int, dict, bytes]:
        """The answer to one request: (status, headers, body), or (DROP, {}, b"") for none."""

    def fail(self, kind: str, times: int = 1, **options) -> None:
        """The next `times` requests that take faults fail with `kind` (see the subclass's doc)."""
        with self._lock:
            self._faults.extend({"kind": kind, **options} for _ in range(times))

    def _next_fault(self) -> dict | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _contract(self, name: str, validate) -> None:
        try:
            validate()
        except Exception as exc:  # any failure to parse is a contract break: report it, whatever it is
            self.contract_errors.append(f"{name}: {str(exc)[:500]}")

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        class Handler(_Handler):
            double = self

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_body(value) -> bytes:
    return json.dumps(value).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, each waits 40 ms
    double: HttpDouble

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        self.do_GET(body=self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def do_GET(self, body: bytes | None = None) -> None:
        arrived = time.monotonic()
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if body is not None:
            query["body"] = [body.decode()]
        double = self.double
        with double._lock:
            double.requests.append((url.path, {k: v[-1] for k, v in query.items()}))
        status, headers, body = double.respond(url.path, query, self.headers)
        with double._lock:
            double.arrivals.append((arrived, url.path, status))
        if status == DROP:
            self.close_connection = True  # no response at all
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a `slow` fault past its timeout)
