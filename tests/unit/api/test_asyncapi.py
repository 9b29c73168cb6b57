"""The AsyncAPI file, the pydantic model and what the activity really writes must agree."""

from __future__ import annotations

from typing import Any

import jsonschema
import redis.asyncio as aioredis
import yaml
from temporalio.testing import ActivityEnvironment

from activities.publish import ResultPublisher, redis_client
from activities.reconcile import EngineEventPublisher
from contract.models import ErrorCode, JobResult
from contract.reconcile import EngineEvent
from contract.settings import Settings
from tests.support.processes import ROOT
from tests.support.streams import read_entries

SPEC = ROOT / "api" / "runtime-jobs-asyncapi.yaml"


def load_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return spec


def payload_schema(spec: dict[str, Any]) -> dict[str, Any]:
    ref = spec["components"]["messages"]["JobResult"]["payload"]["$ref"]
    assert ref == "#/components/schemas/JobResult"
    schema: dict[str, Any] = spec["components"]["schemas"]["JobResult"]
    return schema


# The channels each version of the description added: a new channel is a new minor version.
CHANNELS_ADDED = {"1.0.0": {"jobResults"}, "1.1.0": {"engineEvents"}}


def test_channel_address_is_the_contract_stream() -> None:
    spec = load_spec()
    assert spec["asyncapi"].startswith("3.")
    assert spec["channels"]["jobResults"]["address"] == "runtime:job_results"


def test_info_version_is_the_version_that_added_the_newest_channel() -> None:
    spec = load_spec()
    assert spec["info"]["version"] == list(CHANNELS_ADDED)[-1]
    assert set(spec["channels"]) == set().union(*CHANNELS_ADDED.values())


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


async def test_written_entries_match_the_schema(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    """Entries the activity wrote validate against the payload schema."""
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


def test_engine_event_model_matches_asyncapi() -> None:
    """Engine event model and AsyncAPI payload agree field by field."""
    spec = load_spec()
    assert spec["channels"]["engineEvents"]["address"] == Settings().engine_events_stream == "runtime:engine_events"
    payload = spec["components"]["schemas"]["EngineEvent"]
    model = EngineEvent.model_json_schema()
    assert list(payload["properties"]) == list(model["properties"]) == payload["required"]
    assert payload["additionalProperties"] is False and model["additionalProperties"] is False
    for name, prop in model["properties"].items():
        assert prop["type"] == payload["properties"][name]["type"] == "string", name
    assert payload["properties"]["event"]["enum"] == model["properties"]["event"]["enum"]


async def test_written_engine_events_match_the_schema(redis_url: str, redis: aioredis.Redis, stream: str) -> None:
    """Engine events the activity wrote validate against the payload schema.

    Through the worker's publisher (its once-only key per reconcile run and game): a second publish of
    the same game in the same run appends nothing.
    """
    client = redis_client(redis_url)
    events = [
        EngineEvent(
            game_id=f"g-{n}",
            event=kind,
            host="h1",
            container_id="abc",
            state=state,
            detail="engine_gone: no container of ours here",
            observed_at="2026-11-28T03:00:00+00:00",
        )
        for n, (kind, state) in enumerate(
            [("engine_lost", "gone"), ("engine_lost", "exited"), ("engine_removed", "running")]
        )
    ]
    try:
        publisher = EngineEventPublisher(client, Settings(engine_events_stream=stream))
        env = ActivityEnvironment()
        ids = [await env.run(publisher.publish_engine_event, e) for e in [*events, events[0]]]
    finally:
        await client.aclose()
    assert ids[-1] == ids[0] and len(set(ids)) == 3, ids
    schema = load_spec()["components"]["schemas"]["EngineEvent"]
    validator = jsonschema.Draft202012Validator(schema)
    entries = await read_entries(redis, stream)
    assert [EngineEvent.model_validate(fields) for _id, fields in entries] == events
    for _entry_id, fields in entries:
        validator.validate(fields)
    assert not validator.is_valid({**entries[0][1], "event": "engine_died"})
    assert not validator.is_valid({**entries[0][1], "extra": ""})
