"""The typed client side of runtime jobs: connect to Temporal, start and stop jobs.

The worker and the `rtjobs` CLI both connect through `connect()`, so the Temporal connection
(envconfig: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TLS, API key) and the data converter are set in
one place. `start_job`/`stop_job` send the contract's plain JSON input, exactly what a starter in
any other language sends; the workflow validates it and reports `invalid_request` on the stream.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from temporalio.client import Client, Plugin, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile, ClientConfigTLS, ClientConnectConfig
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.runtime import Runtime

from contract.engine import ENSURE_RUNNING_ACTIVITY, PullProgress, pull_progress_of
from contract.models import JobKind, JobResult, StartRuntimeJobInput, StopRuntimeJobInput
from contract.settings import Settings

START_WORKFLOW = "StartRuntimeJob"
STOP_WORKFLOW = "StopRuntimeJob"

# What the SDK itself uses when TEMPORAL_ADDRESS (or a config-file profile) gives no address.
DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
CONNECT_TIMEOUT = timedelta(seconds=10)

# Recommended for any starter: a second start of a running job joins it (USE_EXISTING), and a job
# id, once used, is never run again (REJECT_DUPLICATE), so a retried "start job X" is harmless.
ID_CONFLICT_POLICY = WorkflowIDConflictPolicy.USE_EXISTING
ID_REUSE_POLICY = WorkflowIDReusePolicy.REJECT_DUPLICATE


@dataclass(frozen=True)
class ConnectionFlags:
    """What a command line sets of the Temporal connection, as the `temporal` CLI's flags; None: not set."""

    address: str | None = None
    namespace: str | None = None
    api_key: str | None = None
    tls: bool | None = None
    profile: str | None = None


def connect_config(flags: ConnectionFlags | None = None) -> ClientConnectConfig:
    """Temporal connection options from the SDK's envconfig: `flags` over TEMPORAL_* env over the config
    file's profile (TEMPORAL_PROFILE, `flags.profile`) over the defaults.
    """
    given = flags or ConnectionFlags()
    profile = ClientConfigProfile.load(profile=given.profile)
    profile = replace(
        profile,
        address=given.address or profile.address,
        namespace=given.namespace or profile.namespace,
        api_key=given.api_key or profile.api_key,
        tls=profile.tls if given.tls is None else replace(profile.tls or ClientConfigTLS(), disabled=not given.tls),
    )
    config = profile.to_client_connect_config()
    config.setdefault("target_host", DEFAULT_TEMPORAL_ADDRESS)
    return config


def describe(config: ClientConnectConfig) -> str:
    """The connection for logs: address, namespace, TLS; never the API key itself."""
    address = config.get("target_host", DEFAULT_TEMPORAL_ADDRESS)
    text = f"{address} namespace={config.get('namespace', 'default')}"
    if config.get("tls"):
        text += " tls"
    if config.get("api_key"):
        text += " api-key=***"
    return text


async def connect(
    config: ClientConnectConfig | None = None,
    *,
    runtime: Runtime | None = None,
    plugins: Sequence[Plugin] = (),
) -> Client:
    """A client with the pydantic data converter (the only converter the project uses); the worker
    passes its metrics runtime and tracing plugin.
    """
    options = config if config is not None else connect_config()
    converter = pydantic_data_converter
    return await Client.connect(
        **options,
        data_converter=converter,
        connect_timeout=CONNECT_TIMEOUT,
        runtime=runtime,
        plugins=plugins,
    )


async def pull_progress(client: Client, handle: WorkflowHandle[Any, Any]) -> PullProgress | None:
    """How far the image pull of a running start job got, from its pending Docker step's last
    heartbeat (docs/registries.md); None when it is not pulling and has not pulled.
    """
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == ENSURE_RUNNING_ACTIVITY and pending.heartbeat_details.payloads:
            details = await client.data_converter.decode(list(pending.heartbeat_details.payloads))
            return pull_progress_of(details)
    return None


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def start_workflow_id(game_id: str, job: str) -> str:
    return f"runtime-{JobKind.START.value}-{game_id}-{job}"


def stop_workflow_id(game_id: str, job: str) -> str:
    return f"runtime-{JobKind.STOP.value}-{game_id}-{job}"


async def start_job(
    client: Client,
    game_id: str,
    *,
    image: str | None = None,
    job: str | None = None,
    task_queue: str | None = None,
) -> WorkflowHandle[Any, JobResult]:
    """Start (or join) the start job `job` of `game_id`; the handle's result is the published JobResult.

    The input is not validated here: a bad game id or image becomes an `invalid_request` entry on
    the stream, as for any other starter.
    """
    payload = StartRuntimeJobInput.model_construct(game_id=game_id, image=image).model_dump(exclude_none=True)
    workflow_id = start_workflow_id(game_id, job or new_job_id())
    return await _start(client, START_WORKFLOW, payload, workflow_id, task_queue)


async def stop_job(
    client: Client,
    game_id: str,
    *,
    stop_timeout_s: int | None = None,
    job: str | None = None,
    task_queue: str | None = None,
) -> WorkflowHandle[Any, JobResult]:
    """Start (or join) the stop job `job` of `game_id`; the handle's result is the published JobResult."""
    payload = StopRuntimeJobInput.model_construct(game_id=game_id, stop_timeout_s=stop_timeout_s).model_dump(
        exclude_none=True
    )
    workflow_id = stop_workflow_id(game_id, job or new_job_id())
    return await _start(client, STOP_WORKFLOW, payload, workflow_id, task_queue)


async def _start(
    client: Client, workflow: str, payload: dict[str, Any], workflow_id: str, task_queue: str | None
) -> WorkflowHandle[Any, JobResult]:
    try:
        return await client.start_workflow(
            workflow,
            payload,
            id=workflow_id,
            task_queue=task_queue or Settings().task_queue,
            result_type=JobResult,
            id_conflict_policy=ID_CONFLICT_POLICY,
            id_reuse_policy=ID_REUSE_POLICY,
        )
    except WorkflowAlreadyStartedError as err:
        # The job already ran to its end under this id: hand back that run instead of a second one.
        return client.get_workflow_handle(workflow_id, run_id=err.run_id, result_type=JobResult)
