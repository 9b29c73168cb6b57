"""The process around the workers and the CLI: exit codes, signals, and how the process ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import NoReturn

log = logging.getLogger("rtjobs.worker")

EXIT_OK = 0
# A failure outcome or runtime error (CLI), a failed start-up check (worker).
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@contextlib.asynccontextmanager
async def shutdown_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by the first SIGTERM/SIGINT; a second one ends the process at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without waiting for activities", signal.Signals(signum).name)
            exit_now(EXIT_INTERRUPTED)
        log.info("%s received: stopping polling, finishing running activities", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield stop
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def exit_now(status: int) -> NoReturn:
    """End the process now, without interpreter finalization.

    temporalio's Rust core can abort while the interpreter finalizes (sdk-python issue #300:
    "PyGILState_Release ... finalizing", exit 134) even after a clean shutdown, which would turn a
    graceful exit 0 into a crash for supervisors. Everything is closed by the time we get here.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
