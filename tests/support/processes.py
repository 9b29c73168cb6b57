"""Real `python worker.py` (and CLI) child processes for tests that signal, kill or restart them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from rtjobs.dev.stack import stop_process as stop_process  # (helper servers: tests/support/*)

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 30.0
DEAD_DOCKER = "unix:///nonexistent/rtjobs-test-docker.sock"


def process_env(**overrides: str) -> dict[str, str]:
    """This environment without any Temporal/rtjobs/Redis/Docker settings of the caller, plus `overrides`."""
    prefixes = ("TEMPORAL_", "RTJOBS_", "REDIS_URL", "DOCKER_HOST")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env["TEMPORAL_CONFIG_FILE"] = "/nonexistent/rtjobs-test-temporal.toml"  # no operator profile leaks in
    # No reconcile schedule unless a test asks for one: a run firing mid-test on the test's host would
    # change what the test checks (tests/reliability/test_reconcile.py turns it on).
    env["RTJOBS_RECONCILE_EVERY"] = ""
    env.update(overrides)
    return env


class Process:
    """A child process in its own session, output to a file; `kill()` ends its whole group."""

    def __init__(self, args: list[str], env: Mapping[str, str]) -> None:
        self._out = tempfile.NamedTemporaryFile(prefix="rtjobs-proc-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return Path(self._out.name).read_text(errors="replace")

    async def wait_for(self, text: str, timeout_s: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} within {timeout_s}s:\n{self.output()}")
            await asyncio.sleep(0.05)

    async def wait(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s}s:\n{self.output()}")
            await asyncio.sleep(0.05)
        return code

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()


def start_worker(processes: list[Process], env: Mapping[str, str]) -> Process:
    """A real `python worker.py`, registered in `processes` so the test's teardown kills it."""
    proc = Process(["worker.py"], env)
    processes.append(proc)
    return proc


WORKER_READY = "worker polling task queue"  # what worker.py logs once it polls


async def start_ready_worker(processes: list[Process], env: Mapping[str, str]) -> Process:
    """A real `python worker.py` that has connected everything and polls its task queue."""
    worker = start_worker(processes, env)
    await worker.wait_for(WORKER_READY)
    return worker
