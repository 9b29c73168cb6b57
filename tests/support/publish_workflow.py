"""A workflow whose only step is the publish activity, called exactly as the job workflows call it."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from contract.models import PublishRequest
    from contract.policies import (
        PUBLISH_ACTIVITY,
        PUBLISH_RETRY_POLICY,
        PUBLISH_START_TO_CLOSE_TIMEOUT,
    )


@workflow.defn(name="TestPublishOnly")
class PublishOnlyWorkflow:
    @workflow.run
    async def run(self, result: dict[str, Any]) -> str:
        entry_id: str = await workflow.execute_activity(
            PUBLISH_ACTIVITY,
            PublishRequest(result=result),
            start_to_close_timeout=PUBLISH_START_TO_CLOSE_TIMEOUT,
            retry_policy=PUBLISH_RETRY_POLICY,
            result_type=str,
        )
        return entry_id
