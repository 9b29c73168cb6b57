"""The runtime-jobs worker process: `python worker.py` (TEMPORAL_ADDRESS) or `python worker.py --dev`.

Read it top-down: options → settings and logging → clients (Temporal, Redis, Docker, each checked at
start-up with a one-line error: `rtjobs.startup`) → the Workers (`rtjobs.hosting.serving`): one on the
host's own task queue (the Docker activities of this machine's engine), one on the coordination queue (the
per-game and per-host workflows), one on the shared task queue (the job workflows, the publish, the lock and
placement activities) → wait for SIGTERM/SIGINT → graceful shutdown → close the clients → exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from activities.docker import EngineActivities
from activities.retention import retention_running
from contract.models import one_line
from contract.settings import Settings, redact_url
from rtjobs import __version__
from rtjobs.client import connect_config, describe
from rtjobs.hosting import serving
from rtjobs.ops.health import Health
from rtjobs.ops.logs import configure_logging
from rtjobs.process import EXIT_FAILURE, EXIT_OK, exit_now, shutdown_signals
from rtjobs.startup import (
    StartupError,
    check_docker,
    connect_temporal,
    ensure_search_attributes,
    open_dev,
    open_health,
    open_redis,
    open_runtime,
    open_tracing,
)

log = logging.getLogger("rtjobs.worker")


@dataclass(frozen=True)
class Options:
    dev: bool


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="worker.py", description="Run the runtime-jobs Temporal worker until SIGTERM/SIGINT."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--dev",
        action="store_true",
        help="start the embedded Temporal dev server (with web UI, state under RTJOBS_STATE_DIR) and use it; "
        "with REDIS_URL/DOCKER_HOST unset and nothing answering, a private redis-server and dockerd too",
    )
    return Options(dev=parser.parse_args(argv).dev)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        raise StartupError(f"invalid configuration: {one_line(str(err), 500)}") from None


async def run(options: Options, settings: Settings) -> int:
    async with shutdown_signals() as stop, contextlib.AsyncExitStack() as stack:
        try:
            runtime = open_runtime(settings, dev=options.dev)
            plugins = open_tracing(stack)
            if options.dev:  # the dev server, then Redis, Docker and an engine image where none answers
                client, settings = await open_dev(settings, stack, runtime, plugins)
            else:
                config = connect_config()
                client = await connect_temporal(config, runtime, plugins)
                log.info("connected to Temporal at %s", describe(config))
            redis = await open_redis(settings, stack)
            engine = EngineActivities(settings)
            stack.push_async_callback(engine.close)
            await check_docker(engine)
            await ensure_search_attributes(client)
            health = Health(client, redis, engine, stream=settings.results_stream, redis_url=settings.redis_url)
            await open_health(settings, health, stack)
        except StartupError as err:
            log.error("%s", err)
            return EXIT_FAILURE
        log.info(
            "worker polling task queue %s; results to stream %s on %s",
            settings.task_queue,
            settings.results_stream,
            redact_url(settings.redis_url),
        )
        # The host queue's, the coordination queue's and the shared queue's Workers; shut down in reverse.
        async with serving(client, settings, redis, engine) as workers, retention_running(redis, settings):
            # (retention is off unless RTJOBS_RESULTS_RETENTION)
            health.workers = workers
            await stop.wait()
            grace = settings.graceful_shutdown_timeout_s
            log.info("shutting down: waiting up to %ss for running activities", grace)
        log.info("worker stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_args(argv)
    try:
        settings = load_settings()
    except StartupError as err:
        print(f"worker.py: error: {err}", file=sys.stderr)
        exit_now(EXIT_FAILURE)
    configure_logging(settings.log_level, settings.log_format)
    exit_now(asyncio.run(run(options, settings)))


if __name__ == "__main__":
    main()
