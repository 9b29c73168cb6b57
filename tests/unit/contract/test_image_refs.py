"""What "a valid image reference" means must be what Docker means: a reference the contract model accepts
is one a real Docker engine parses (else it would fail as container_start_failed, not invalid_request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract.models import IMAGE_REF_PATTERN
from tests.support.docker_engine import DockerEngine
from tests.unit.contract.inputs import ImageRefAdapter

# --- what "a valid image reference" means must be what Docker means ---------------------------


@pytest.fixture(scope="module")
async def docker(docker_engine: DockerEngine) -> AsyncIterator[aiodocker.Docker]:
    client = aiodocker.Docker(url=docker_engine.url)
    yield client
    await client.close()


async def assert_docker_parses_if_the_model_accepts(docker: aiodocker.Docker, ref: str) -> None:
    """A reference the model rejects never reaches Docker (invalid_request); one it accepts must be one
    Docker parses: 404 (no such image) for a well-formed reference, 400 for one it cannot parse.
    """
    try:
        ImageRefAdapter.validate_python(ref)
    except ValidationError:
        return
    try:
        await docker.images.inspect(ref)
    except DockerError as err:
        assert err.status == 404, f"Docker rejects {ref!r} that the contract model accepts: {err.message}"


@pytest.mark.docker
@pytest.mark.parametrize(
    "ref",
    [
        "busybox:\u00e9t\u00e9",  # the model's tag class is Python's Unicode \w; Go's (Docker's) is ASCII
        "a" * 238,  # docker.io/library/ + 238 > 255: "repository name must not be more than 255 characters"
        "x@sha256:" + "a" * 32,  # sha256 digests have exactly 64 hex digits
        "x@sha256:" + "A" * 64,  # ... lowercase
        "x@foo:" + "0" * 32,  # unsupported digest algorithm
        "A/0",  # Docker 20.10: "repository name must be lowercase" (newer engines read `A` as a registry host)
    ],
    ids=["unicode-tag", "name-over-255", "short-sha256", "uppercase-digest", "unknown-algorithm", "uppercase-host"],
)
async def test_reference_the_model_accepts_is_one_docker_accepts(docker: aiodocker.Docker, ref: str) -> None:
    """Otherwise a "valid" image reaches Docker and fails as container_start_failed, not invalid_request."""
    await assert_docker_parses_if_the_model_accepts(docker, ref)


@pytest.mark.docker
@settings(max_examples=150, deadline=None, database=None, phases=[Phase.generate, Phase.shrink])
@given(ref=st.from_regex(IMAGE_REF_PATTERN, fullmatch=True))
async def test_every_reference_the_model_accepts_is_one_docker_accepts(docker: aiodocker.Docker, ref: str) -> None:
    await assert_docker_parses_if_the_model_accepts(docker, ref)
