"""When a started engine counts as ready, and what its failure to get there says.

Ready is Docker's verdict when the image has a HEALTHCHECK (`healthy`; `unhealthy` fails at once).
Without one, "running" must have lasted RTJOBS_ENGINE_MIN_RUNNING_S, or an engine that crashes right
after its start would pass. A verdict is passed on only while the daemon stays: a dockerd shutting
down reports its containers exited, so a new connection must still reach it.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import aiohttp
from aiodocker.exceptions import DockerError
from temporalio.exceptions import ApplicationError

from activities.docker_gateway import DockerGateway, Inspect, permanent, unavailable
from activities.engine_spec import is_running
from contract.models import ErrorCode, one_line
from contract.settings import Settings

LOG_TAIL_LINES = 20
LOG_TAIL_CHARS = 1024


class Readiness:
    """The readiness wait of one worker's engines; stateless between waits."""

    def __init__(self, gateway: DockerGateway, settings: Settings) -> None:
        self._gateway = gateway
        self._settings = settings

    async def until_ready(self, container_id: str, name: str, deadline: float) -> None:
        """Return once the engine is ready; raise its failure code, or DockerUnavailable, otherwise.

        `deadline` is on the event loop's clock; it is checked after each inspect, so a verdict that
        is already in the state wins over a deadline that passed during the inspect.
        """
        loop = asyncio.get_running_loop()
        code = ErrorCode.CONTAINER_START_FAILED
        window = self._settings.engine_min_running_s
        # The run being watched, (StartedAt, RestartCount), and when this wait first saw it: a new
        # StartedAt or restart count is a restart, and its stability is counted afresh.
        watched: tuple[str, int] | None = None
        watched_since = 0.0
        while True:
            info = await self._gateway.inspect(container_id, code)
            if info is None:
                raise permanent(code, f"container {name} vanished before it became healthy")
            state: dict[str, Any] = info.get("State") or {}
            status = state.get("Status")
            health = state.get("Health")
            pause = self._settings.docker_poll_interval_s
            if status in ("exited", "dead"):
                raise await self._exited_error(container_id, name, state)
            if is_running(info) and health:
                if health.get("Status") == "healthy":
                    return
                if health.get("Status") == "unhealthy":
                    raise await self._final(
                        permanent(
                            ErrorCode.ENGINE_UNHEALTHY, f"engine {name} reported unhealthy: {_last_probe(health)}"
                        ),
                        f"engine {name} turned unhealthy",
                    )
            elif is_running(info):
                run = (str(state.get("StartedAt") or ""), int(info.get("RestartCount") or 0))
                if run != watched:
                    watched, watched_since = run, loop.time()
                running_for = max(seconds_since(run[0]), loop.time() - watched_since)
                if running_for >= window:
                    return
                pause = min(pause, window - running_for)
            remaining = deadline - loop.time()
            if remaining <= 0:
                shown = health.get("Status") if health else status
                raise permanent(
                    ErrorCode.ENGINE_UNHEALTHY,
                    f"engine {name} was not healthy within {self._settings.start_timeout_s:g}s "
                    f"(state: {shown}){_probe_suffix(health)}",
                )
            await asyncio.sleep(min(pause, remaining))

    async def _final(self, verdict: ApplicationError, what: str) -> ApplicationError:
        """The verdict, unless the daemon is going away (then it is no verdict on the engine)."""
        if await self._gateway.daemon_is_up():
            return verdict
        return unavailable(f"{what} while Docker was going away (no answer on a new connection): {verdict.message}")

    async def _exited_error(self, container_id: str, name: str, state: dict[str, Any]) -> ApplicationError:
        oom = " (OOM-killed)" if state.get("OOMKilled") else ""
        exited = f"engine {name} exited with code {state.get('ExitCode')}{oom} before it became healthy"
        if not await self._gateway.daemon_is_up():
            return unavailable(f"{exited}, while Docker was going away (no answer on a new connection)")
        tail = await self._log_tail(container_id)
        return permanent(ErrorCode.CONTAINER_EXITED, f"{exited}; last log lines: {tail}")

    async def _log_tail(self, container_id: str) -> str:
        """The last lines of the engine's output, one line, at most ~1 KB (the newest part kept).

        Best effort: the exit is the verdict, the logs only explain it.
        """
        try:
            async with asyncio.timeout(self._settings.docker_call_timeout_s):
                lines = await self._gateway.client.containers.container(container_id).log(
                    stdout=True, stderr=True, tail=LOG_TAIL_LINES
                )
        except (DockerError, TimeoutError, aiohttp.ClientError, OSError) as err:
            return f"(logs unavailable: {type(err).__name__})"
        text = one_line("".join(lines), limit=1_000_000)
        if len(text) > LOG_TAIL_CHARS:
            text = "…" + text[-(LOG_TAIL_CHARS - 1) :]
        return text or "(no output)"


def seconds_since(timestamp: str) -> float:
    """Seconds from a Docker RFC 3339 time (State.StartedAt) to now on this host's clock; 0 if unknown.

    The worker runs next to its Docker engine (contract section 5), so both read the same clock; a
    clock skewed ahead would shorten the stability window by the skew, never lengthen it, because the
    readiness wait also counts the time it has itself watched the same run.
    """
    try:
        started = datetime.fromisoformat(timestamp)
    except ValueError:
        return 0.0
    if started.year <= 1:  # Docker's zero time: never started
        return 0.0
    return max(0.0, time.time() - started.timestamp())


def _last_probe(health: Inspect) -> str:
    log = health.get("Log") or []
    if not log:
        return "(no probe output)"
    last = log[-1]
    output = one_line(str(last.get("Output", "")), limit=300) or "(no output)"
    return f"last probe exit code {last.get('ExitCode')}: {output}"


def _probe_suffix(health: Inspect | None) -> str:
    return f"; {_last_probe(health)}" if health else ""
