"""A private dockerd the test may stop and start again on the same socket and data root, or freeze.

`PrivateDockerd.close()` deletes its directory; a restart must keep it (the containers and images
live in the data root), so stopping the daemon is split from cleaning up.

Frozen (SIGSTOP) the daemon is a hung one: its socket still accepts connections (the kernel queues
them), nothing answers, and whatever was sent meanwhile is served once it is thawed (SIGCONT), even
requests whose client has long given up. Only dockerd itself is frozen: containerd and the
containers' shims go on, so the engines keep running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiodocker
import pytest

from tests.support.docker_engine import EngineUnavailable, PrivateDockerd, static_busybox


class RestartableDockerd(PrivateDockerd):
    def __init__(self) -> None:
        super().__init__()
        self._stopped_bridges: list[str] = []
        self.frozen = False

    def stop_daemon(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the daemon (it stops its containers, as a `systemctl restart docker` does) and wait."""
        if self.proc is None:
            return
        self.thaw()  # a frozen daemon would not act on the SIGTERM
        # A stopped daemon cannot list its networks' bridges, which `close()` must remove: ask now.
        self._stopped_bridges = self._bridges()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def start(self, wait_s: float = 60.0) -> RestartableDockerd:
        super().start(wait_s)
        return self

    def freeze(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP the daemon and return once every one of its threads is stopped (so that no byte
        sent after this returns is read before `thaw`).
        """
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError("no running dockerd to freeze")
        self.frozen = True
        os.kill(self.proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while not _all_threads_stopped(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd {self.proc.pid} not stopped {timeout_s}s after SIGSTOP")
            time.sleep(0.005)

    def thaw(self) -> None:
        """SIGCONT the daemon; harmless when it is not frozen (or gone)."""
        if self.proc is not None and self.frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    @contextlib.contextmanager
    def thawed_at_exit(self) -> Iterator[RestartableDockerd]:
        """Whatever happens in the block (a failed assertion, a cancelled test), the daemon is thawed
        when it ends, so that it can be stopped.
        """
        try:
            yield self
        finally:
            self.thaw()

    def close(self) -> None:
        self.thaw()  # a frozen daemon ignores the SIGTERM of close() until it is killed
        super().close()
        for bridge in self._stopped_bridges:
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` in state T (stopped), from /proc/<pid>/task/*/stat."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except (OSError, IndexError):
        return False
    return bool(states) and all(state in ("T", "t") for state in states)


@asynccontextmanager
async def own_dockerd(
    prepare: Callable[[aiodocker.Docker], Awaitable[object]],
) -> AsyncIterator[RestartableDockerd]:
    """A dockerd of the test's own (it may stop, freeze or restart it), prepared by `prepare` (e.g. the
    test images), closed whatever happens; the test is skipped (a failure under CI=true) without one.
    """
    try:
        static_busybox()
        daemon = RestartableDockerd().start()
    except EngineUnavailable as err:
        pytest.skip(f"no private dockerd: {err}")
    try:
        async with aiodocker.Docker(url=daemon.url) as docker:
            await prepare(docker)
        yield daemon
    finally:
        daemon.close()
