"""A `redis-server` owned by one test, on a free port, that the test may stop and bring back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from rtjobs.dev.stack import port_answers as port_answers
from rtjobs.dev.stack import start_redis_server, stop_process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """Never the shared server: each instance runs its own process on its own port."""

    def __init__(self, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.dir = Path(tempfile.mkdtemp(prefix="rtjobs-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Not persistent unless `extra_args` say so (the durable fault tests do)."""
        self.proc = start_redis_server(self.port, self.dir, ["--save", "", "--appendonly", "no", *self.extra_args])
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
