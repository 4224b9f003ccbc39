"""A real PostgreSQL server for the lakehouse's catalog, from Debian's packages (`postgresql`), started by the
tests themselves in a folder of their own on a free loopback port, and stopped after. Postgres refuses to run as
root: as root, the server runs as the `postgres` user the package creates, in a folder under /tmp it can reach
(pytest's own are private to root)."""

import getpass
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    assert found, f"{name} not found: the lakehouse tests need PostgreSQL (Debian: apt-get install postgresql; .ci/run does)"
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """`with PostgresServer() as pg:` a running server; `pg.database(name)` creates a database and returns
    its libpq connection string (trust authentication on loopback: no password)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="finops-postgres-"))
        self.port = _free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.user = "postgres" if os.geteuid() == 0 else getpass.getuser()

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, cwd="/")

    def __enter__(self) -> "PostgresServer":
        data = self.folder / "data"
        data.mkdir()
        if self.as_user:
            shutil.chown(self.folder, "postgres")
            shutil.chown(data, "postgres")
        self._run(_binary("initdb"), "-D", str(data), "-U", self.user, "--auth=trust", "--no-sync")
        self._run(_binary("pg_ctl"), "-D", str(data), "-w", "-l", str(data / "server.log"), "-o",
                  f"-p {self.port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                  "start")
        return self

    def database(self, name: str) -> str:
        self._run(_binary("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", "postgres",
                  "-c", f'CREATE DATABASE "{name}"')
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={name}"

    def __exit__(self, *exc) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
