"""The AsyncAPI file, the pydantic model and what the activity really writes must agree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import redis.asyncio as aioredis
import yaml

from activities.publish import ResultPublisher, redis_client
from contract.models import ErrorCode, JobResult
from tests.support.streams import read_entries

SPEC = Path(__file__).resolve().parent.parent / "api" / "runtime-jobs-asyncapi.yaml"


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec


def payload_schema(spec: dict[str, Any]) -> dict[str, Any]:
    ref = spec["components"]["messages"]["JobResult"]["payload"]["$ref"]
    assert ref == "#/components/schemas/JobResult"
    schema: dict[str, Any] = spec["components"]["schemas"]["JobResult"]
    return schema


def test_channel_address_is_the_contract_stream() -> None:
    spec = load_spec()
    assert spec["asyncapi"].startswith("3.")
    assert spec["channels"]["jobResults"]["address"] == "runtime:job_results"


def test_model_and_asyncapi_payload_agree_field_by_field() -> None:
    model = JobResult.model_json_schema()
    payload = payload_schema(load_spec())
    assert list(payload["properties"]) == list(model["properties"])
    assert payload["required"] == list(model["properties"])
    assert payload["additionalProperties"] is False
    assert model["additionalProperties"] is False
    for name, prop in model["properties"].items():
        assert prop["type"] == payload["properties"][name]["type"] == "string", name
    assert payload["properties"]["outcome"]["enum"] == model["properties"]["outcome"]["enum"]
    assert payload["properties"]["error_code"]["enum"] == ["", *[code.value for code in ErrorCode]]


async def test_entries_the_activity_wrote_validate_against_the_payload_schema(
    redis_url: str, redis: aioredis.Redis, stream: str
) -> None:
    client = redis_client(redis_url)
    results = [
        JobResult.fresh_success("g-1", "abc"),
        JobResult.replay("g-1", "abc"),
        JobResult.replay("g-1"),
        *[JobResult.failure("g-1", code, f"{code} happened") for code in ErrorCode if code != "replay_no_op"],
    ]
    try:
        publisher = ResultPublisher(client, stream=stream, dedup_ttl_s=60)
        for n, result in enumerate(results):
            await publisher.publish(result, f"wf-{n}", "run")
    finally:
        await client.aclose()

    validator = jsonschema.Draft202012Validator(payload_schema(load_spec()))
    entries = await read_entries(redis, stream)
    assert len(entries) == len(results)
    for _entry_id, fields in entries:
        validator.validate(fields)
    # ... and the schema is not vacuous: a blank game id or a seventh field is rejected.
    assert not validator.is_valid({**entries[0][1], "game_id": " "})
    assert not validator.is_valid({**entries[0][1], "extra": ""})
