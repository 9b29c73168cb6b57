"""Contract models: the wire rule, the constructors' invariants, and the input rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from contract.models import (
    ErrorCode,
    JobRequest,
    JobResult,
    StartRuntimeJobInput,
    StopRuntimeJobInput,
    UnusableJobInput,
    container_name,
)


def test_fresh_success_sets_id_and_endpoint_together() -> None:
    r = JobResult.fresh_success("g-1", "abc")
    assert (r.outcome, r.container_id, r.engine_endpoint, r.error_code, r.error_message) == (
        "success", "abc", "http://galaxy-game-g-1:8080", "", ""
    )  # fmt: skip


def test_stop_replay_has_no_id_and_no_endpoint() -> None:
    r = JobResult.replay("g-1")
    assert (r.container_id, r.engine_endpoint, r.error_code) == ("", "", "replay_no_op")
    assert JobResult.replay("g-1", "abc").engine_endpoint == "http://galaxy-game-g-1:8080"


def test_failure_has_code_one_line_message_and_no_container() -> None:
    r = JobResult.failure("g-1", ErrorCode.CONTAINER_EXITED, "exit 1\nlast line\n\n")
    assert (r.outcome, r.container_id, r.engine_endpoint) == ("failure", "", "")
    assert r.error_code == "container_exited"
    assert r.error_message == "exit 1 | last line"
    with pytest.raises(ValueError, match="not a failure code"):
        JobResult.failure("g-1", ErrorCode.REPLAY_NO_OP, "x")


@pytest.mark.parametrize("game_id", ["", "   ", "\t\n"])
def test_wire_rule_rejects_blank_game_id(game_id: str) -> None:
    with pytest.raises(ValidationError, match="game_id"):
        JobResult(game_id=game_id, outcome="success")


def test_wire_rule_rejects_unknown_outcome() -> None:
    with pytest.raises(ValidationError, match="outcome"):
        JobResult.model_validate({"game_id": "g", "outcome": "ok"})


def test_wire_rule_is_only_the_rule_other_fields_may_be_anything() -> None:
    JobResult(game_id="G_not_a_valid_game_id", outcome="failure", error_code="whatever")


@pytest.mark.parametrize("game_id", ["g", "g-1", "a" * 51, "0-0", "abc-def-123"])
def test_game_id_rule_accepts(game_id: str) -> None:
    assert StartRuntimeJobInput(game_id=game_id).game_id == game_id
    assert len(container_name(game_id)) <= 63


@pytest.mark.parametrize("game_id", ["", "-g", "g-", "G-1", "g_1", "a" * 52, "g.1", "g 1", "../etc", "ü", "g\n"])
def test_game_id_rule_rejects_naming_the_field(game_id: str) -> None:
    with pytest.raises(ValidationError) as err:
        StartRuntimeJobInput(game_id=game_id)
    assert err.value.errors()[0]["loc"] == ("game_id",)


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "galaxy/engine:1.2",
        "registry.local:5000/a/b:tag",
        "x@sha256:" + "a" * 64,
        "a-b_c.d/e:v1.0-rc",
    ],
)
def test_image_reference_accepts(image: str) -> None:
    assert StartRuntimeJobInput(game_id="g", image=image).image == image


@pytest.mark.parametrize("image", ["", "Upper", "lib/Upper", "a b", "img:", ":tag", "a//b", "x" * 600, "img:tag\n"])
def test_image_reference_rejects_naming_the_field(image: str) -> None:
    with pytest.raises(ValidationError) as err:
        StartRuntimeJobInput(game_id="g", image=image)
    assert err.value.errors()[0]["loc"] == ("image",)


@pytest.mark.parametrize("timeout", [-1, 3601, 10**12])
def test_stop_timeout_range(timeout: int) -> None:
    with pytest.raises(ValidationError) as err:
        StopRuntimeJobInput(game_id="g", stop_timeout_s=timeout)
    assert err.value.errors()[0]["loc"] == ("stop_timeout_s",)
    assert StopRuntimeJobInput(game_id="g", stop_timeout_s=0).stop_timeout_s == 0


def test_inputs_reject_unknown_fields_and_wrong_types() -> None:
    with pytest.raises(ValidationError, match="extra"):
        StartRuntimeJobInput.model_validate({"game_id": "g", "imgae": "x"})
    with pytest.raises(ValidationError, match="stop_timeout_s"):
        StopRuntimeJobInput.model_validate({"game_id": "g", "stop_timeout_s": "30"})


def test_job_request_needs_only_a_game_id() -> None:
    """Job request needs only a non blank `game_id` and keeps the rest."""
    assert JobRequest.model_validate({"game_id": "G!", "x": 1}).fields() == {"game_id": "G!", "x": 1}
    for bad in ({}, {"game_id": ""}, {"game_id": " "}, {"game_id": 5}, None, "g-1", ["g-1"]):
        with pytest.raises(UnusableJobInput, match="non-empty string game_id"):
            JobRequest.model_validate(bad)
