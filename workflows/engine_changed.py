"""A job or `RuntimeReconcile` telling a host's workflow of an engine it made or removed, so that the
host counts it at once instead of at its workers' next report.
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.hosts import ENGINE_CHANGED_SIGNAL, EngineChanged, host_workflow_id, registry_workflow_id
    from workflows.patches import HOST_WORKFLOWS


def host_of_change(change: EngineChanged) -> str:
    """The workflow told of an engine made or removed: the host's own (1.0: the fleet's registry)."""
    queue = workflow.info().task_queue
    if workflow.patched(HOST_WORKFLOWS):
        return host_workflow_id(queue, change.host_id)
    return registry_workflow_id(queue)


async def tell_host(change: EngineChanged) -> None:
    """The host counts (or forgets) an engine at once, without waiting for its next report."""
    try:
        await workflow.get_external_workflow_handle(host_of_change(change)).signal(ENGINE_CHANGED_SIGNAL, change)
    except ApplicationError as err:
        # No run (forgotten, terminated): the host's next report tells it the same.
        workflow.logger.warning("could not tell host %s about game %s: %s", change.host_id, change.game_id, err)
