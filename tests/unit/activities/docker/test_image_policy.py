"""The image policy (RTJOBS_IMAGE_ALLOW, RTJOBS_IMAGE_REQUIRE_DIGEST) in the start activity: allowed
tags and digests run, other tags, repositories and registries are refused before Docker or a registry is
asked.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from activities.docker import EngineActivities
from contract.image_policy import parse_allow, refusal
from contract.models import ErrorCode, container_name
from tests.support.docker_engine import (
    TEST_REPO,
    EngineImages,
    image_ref,
)
from tests.support.tiny_registry import TinyRegistry
from tests.unit.activities.docker.engines import (
    ABSENT_IMAGE,
    ABSENT_REPO,
    MakeActivities,
    expect_error,
    inspect,
    settings_for,
    start,
    stop,
)

pytestmark = pytest.mark.docker


# --- the image policy (RTJOBS_IMAGE_ALLOW, RTJOBS_IMAGE_REQUIRE_DIGEST) ----------------------------------


class CallCounter:
    """Counts every Docker call the activities make (all go through `DockerGateway.call` or `pull`)."""

    def __init__(self, acts: EngineActivities, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real_call, real_pull = acts.gateway.call, acts.gateway.pull

        async def call(what: str, *args: Any, **kwargs: Any) -> Any:
            self.calls.append(what)
            return await real_call(what, *args, **kwargs)

        async def pull(image: str, *args: Any) -> None:
            self.calls.append(f"pull {image}")
            await real_pull(image, *args)

        monkeypatch.setattr(acts.gateway, "call", call)
        monkeypatch.setattr(acts.gateway, "pull", pull)


async def expect_refused(acts: EngineActivities, game_id: str, image: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The start fails `invalid_request` saying the image is not allowed, before any Docker call."""
    counter = CallCounter(acts, monkeypatch)
    err = await expect_error(start(acts, game_id, image), ErrorCode.INVALID_REQUEST)
    assert "not allowed" in err.message and image in err.message, err.message
    assert counter.calls == [], f"a refused image reached Docker: {counter.calls}"
    return err.message


@pytest.fixture
async def extra_tags(docker: aiodocker.Docker) -> AsyncIterator[Callable[[str, str], Any]]:
    """`await tag(source, "repo:tag")`: a local tag of an image, removed (untagged) at teardown."""
    made: list[str] = []

    async def tag(source: str, target: str) -> None:
        repo, name = target.rsplit(":", 1)
        await docker.images.tag(source, repo, tag=name)
        made.append(target)

    yield tag
    for target in made:
        with contextlib.suppress(DockerError):
            await docker.images.delete(target)


async def test_policy_allows_tags_refuses_others(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    extra_tags: Callable[[str, str], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Image policy runs allowed tags and refuses other tags repositories and registries."""
    run = uuid.uuid4().hex[:8]
    other_repo = f"rtjobs-test/other-{run}"
    await extra_tags(images.healthy, f"{other_repo}:healthy")  # present locally: refused all the same
    # Explicit patterns, spelled differently from the references (docker.io/ prefix, tag glob).
    acts = make_activities(image_allow=f"docker.io/{TEST_REPO}:healthy*, {ABSENT_REPO}:1")

    # Allowed: a tag matching the pattern, the same repository after normalisation.
    outcome = await start(acts, game_id, images.healthy)
    assert outcome.replay is False
    await stop(acts, game_id, stop_timeout_s=0)

    refused = [
        images.exits,  # the same repository, a tag outside the pattern
        f"{other_repo}:healthy",  # another repository, even though the image is here
        f"127.0.0.1:9/{TEST_REPO}:healthy",  # another registry with the same repository name
        f"{ABSENT_REPO}:2",  # the allowed closed registry's repository, another tag
    ]
    for image in refused:
        message = await expect_refused(acts, game_id, image, monkeypatch)
        assert "RTJOBS_IMAGE_ALLOW" in message
        assert await inspect(docker, container_name(game_id)) is None
    # Never pulled: Docker has no image of the closed registry's name (a pull would have failed anyway,
    # but the start says `invalid_request`, not `image_pull_failed`, because it never asked Docker).
    for image in (f"127.0.0.1:9/{TEST_REPO}:healthy", f"{ABSENT_REPO}:2"):
        with pytest.raises(DockerError) as missing:
            await docker.images.inspect(image)
        assert missing.value.status == 404
    # The allowed reference of the closed registry does reach Docker (and fails its pull): the policy let
    # it through, and only it.
    await expect_error(start(acts, game_id, ABSENT_IMAGE), ErrorCode.IMAGE_PULL_FAILED)


async def test_default_policy_is_engine_repository(
    make_activities: MakeActivities, images: EngineImages, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Default image policy is the engine image's repository any tag."""
    acts = make_activities()  # RTJOBS_IMAGE_ALLOW unset; RTJOBS_ENGINE_IMAGE=rtjobs-test/engine:healthy
    assert [p.text for p in acts.settings.image_allow_patterns] == [f"docker.io/{TEST_REPO}"]
    assert (await start(acts, game_id, images.healthy_b)).replay is False
    await stop(acts, game_id, stop_timeout_s=0)
    await expect_refused(acts, game_id, "busybox:latest", monkeypatch)
    await expect_refused(acts, game_id, f"evil.example.com/{TEST_REPO}:healthy", monkeypatch)


async def test_a_tag_that_moves_still_runs_the_policy_is_about_names(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    extra_tags: Callable[[str, str], Any],
) -> None:
    """Tags are mutable: an allowed tag re-pointed to another image still runs, now that other image.
    Only RTJOBS_IMAGE_REQUIRE_DIGEST pins content; the allow list is about names.
    """
    moving = f"{TEST_REPO}:moving-{uuid.uuid4().hex[:8]}"
    acts = make_activities(engine_image=moving, image_allow=f"{TEST_REPO}:moving-*")
    await extra_tags(images.healthy, moving)
    first = await start(acts, game_id, moving)
    first_info = await inspect(docker, first.container_id)
    await stop(acts, game_id, stop_timeout_s=0)

    await extra_tags(images.healthy_b, moving)  # the same name, another image
    second = await start(acts, game_id, moving)
    second_info = await inspect(docker, second.container_id)
    assert first_info is not None and second_info is not None
    assert first_info["Config"]["Image"] == second_info["Config"]["Image"] == moving
    assert first_info["Image"] == (await docker.images.inspect(images.healthy))["Id"]
    assert second_info["Image"] == (await docker.images.inspect(images.healthy_b))["Id"] != first_info["Image"]


async def test_require_digest_refuses_tags(
    make_activities: MakeActivities, docker: aiodocker.Docker, game_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Require digest refuses tags and lets a digest reference through."""
    digest = "sha256:" + "0" * 64
    pinned_default = f"{TEST_REPO}@{digest}"
    acts = make_activities(
        engine_image=pinned_default, image_allow=f"{TEST_REPO}@*,{ABSENT_REPO}@*", image_require_digest=True
    )
    message = await expect_refused(acts, game_id, ABSENT_IMAGE, monkeypatch)
    assert "RTJOBS_IMAGE_REQUIRE_DIGEST" in message
    await expect_refused(acts, game_id, image_ref("healthy"), monkeypatch)  # present here: still a tag
    assert await inspect(docker, container_name(game_id)) is None
    # A digest reference of an allowed repository passes the policy and reaches Docker (here: a pull from
    # the closed registry, which fails; no registry holds a digest offline).
    err = await expect_error(start(acts, game_id, f"{ABSENT_REPO}@{digest}"), ErrorCode.IMAGE_PULL_FAILED)
    assert "connection refused" in err.message


@pytest.mark.parametrize(
    ("pattern", "allowed", "refused"),
    [
        ("busybox", ["busybox", "busybox:1.36", "docker.io/library/busybox:latest", "index.docker.io/busybox"],
         ["busyboxx", "library/busybox-x", "evil.example.com/busybox", "evil.example.com/library/busybox",
          "x/busybox"]),
        ("galaxy/engine", ["galaxy/engine", "docker.io/galaxy/engine:1.4", f"galaxy/engine@sha256:{'a' * 64}"],
         ["evil.example.com/galaxy/engine", "galaxy/engine-x", "galaxy/engine/x", "galaxy/other", "engine"]),
        ("galaxy/engine:*", ["galaxy/engine:1", f"galaxy/engine@sha256:{'a' * 64}"], ["galaxy/other:1"]),
        ("galaxy/engine:1.*", ["galaxy/engine:1.4", "galaxy/engine:1."],
         ["galaxy/engine:2.0", "galaxy/engine", "galaxy/engine:11", f"galaxy/engine:1.4@sha256:{'a' * 64}"]),
        ("galaxy/engine@*", [f"galaxy/engine@sha256:{'a' * 64}", f"galaxy/engine:1@sha256:{'b' * 64}"],
         ["galaxy/engine:1", "galaxy/engine"]),
        (f"galaxy/engine@sha256:{'a' * 64}", [f"galaxy/engine@sha256:{'a' * 64}"],
         [f"galaxy/engine@sha256:{'b' * 64}", "galaxy/engine:latest"]),
        ("registry.example.com/team/*", ["registry.example.com/team/engine:1", "registry.example.com/team/a/b"],
         ["registry.example.com/team", "registry.example.com/teamx/engine", "registry.example.com/other/engine",
          "evil.example.com/registry.example.com/team/engine", "team/engine"]),
        ("registry.example.com:5000/*", ["registry.example.com:5000/x", "registry.example.com:5000/x/y:1"],
         ["registry.example.com/x", "registry.example.com:5001/x"]),
        ("galaxy/*", ["galaxy/engine", "docker.io/galaxy/engine:2", "galaxy/a/b"], ["busybox", "x.io/galaxy/engine"]),
        ("localhost:5000/team/*:v*", ["localhost:5000/team/e:v1"], ["localhost:5000/team/e:1", "localhost:5000/e:v1"]),
        ("*", ["busybox", "evil.example.com/x:1"], []),
    ],
)  # fmt: skip
def test_image_policy_patterns_match_normalised_references(
    pattern: str, allowed: list[str], refused: list[str]
) -> None:
    policy = parse_allow(pattern)
    for ref in allowed:
        assert refusal(ref, policy, require_digest=False) is None, (pattern, ref)
    for ref in refused:
        why = refusal(ref, policy, require_digest=False)
        assert why is not None and "not allowed" in why, (pattern, ref)


@pytest.mark.parametrize(
    "bad",
    ["Galaxy/engine", "galaxy/engine:1.*@*", "galaxy/engine@sha1:00", "registry.example.com/*/x", ":1", "a b"],
)
def test_a_malformed_image_pattern_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ValueError, match="RTJOBS_IMAGE_ALLOW"):
        settings_for("unix:///x.sock", image_allow=f"{TEST_REPO},{bad}")


def test_the_engine_image_must_pass_its_own_policy() -> None:
    with pytest.raises(ValueError, match=r"RTJOBS_ENGINE_IMAGE.*not allowed by RTJOBS_IMAGE_ALLOW"):
        settings_for("unix:///x.sock", image_allow="galaxy/engine")
    with pytest.raises(ValueError, match=r"RTJOBS_ENGINE_IMAGE.*RTJOBS_IMAGE_REQUIRE_DIGEST"):
        settings_for("unix:///x.sock", image_require_digest=True)
    pinned = settings_for("unix:///x.sock", engine_image=f"{TEST_REPO}@sha256:{'a' * 64}", image_require_digest=True)
    assert pinned.image_refusal(f"{TEST_REPO}@sha256:{'b' * 64}") is None
    # Empty means unset: the default (a list allowing nothing would refuse even the engine image).
    assert settings_for("unix:///x.sock", image_allow=" ").image_refusal(image_ref("healthy")) is None


@pytest.fixture
async def registry() -> AsyncIterator[TinyRegistry]:
    reg = await TinyRegistry().start()
    yield reg
    await reg.close()


async def push_to(docker: aiodocker.Docker, registry: TinyRegistry, source: str, repo: str, tag: str) -> str:
    """Tag `source` as registry/repo:tag, push it, untag it locally; the manifest digest the push reported."""
    name = f"{registry.host}/{repo}"
    await docker.images.tag(source, name, tag=tag)
    try:
        messages = await docker.images.push(name, tag=tag, auth={"serveraddress": registry.host})
    finally:
        with contextlib.suppress(DockerError):
            await docker.images.delete(f"{name}:{tag}")
    errors = [m for m in messages if m.get("error") or m.get("errorDetail")]
    assert not errors, errors
    [digest] = [str(m["aux"]["Digest"]) for m in messages if "Digest" in (m.get("aux") or {})]
    with contextlib.suppress(DockerError):  # the push may have recorded the digest reference locally
        await docker.images.delete(f"{name}@{digest}")
    return digest


async def test_allowed_digest_runs_tag_refused_offline(
    make_activities: MakeActivities,
    docker: aiodocker.Docker,
    images: EngineImages,
    game_id: str,
    registry: TinyRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An allowed digest runs and require digest refuses a tag without asking the registry.

    A real digest reference: the healthy test image pushed to a registry of the test's own (imported
    images have no registry digest). Pinned by digest it runs, pulled by that digest when absent; a tag of
    the same repository is refused under RTJOBS_IMAGE_REQUIRE_DIGEST before anyone asks the registry.
    """
    repo = f"rtjobs-test/pinned-{uuid.uuid4().hex[:8]}"
    digest = await push_to(docker, registry, images.healthy, repo, "v1")
    pinned = f"{registry.host}/{repo}@{digest}"
    acts = make_activities(
        engine_image=pinned, image_allow=f"{registry.host}/rtjobs-test/*@*", image_require_digest=True
    )
    healthy_id = (await docker.images.inspect(images.healthy))["Id"]
    try:
        # Absent locally under that name: pulled by digest from the registry, then run.
        with pytest.raises(DockerError):
            await docker.images.inspect(pinned)
        outcome = await start(acts, game_id)  # no image given: RTJOBS_ENGINE_IMAGE, the pinned reference
        info = await inspect(docker, outcome.container_id)
        assert info is not None and info["Config"]["Image"] == pinned and info["Image"] == healthy_id
        assert f"GET /v2/{repo}/manifests/{digest}" in registry.requests
        assert pinned in (await docker.images.inspect(pinned))["RepoDigests"]
        await stop(acts, game_id, stop_timeout_s=0)

        asked = len(registry.requests)
        message = await expect_refused(acts, game_id, f"{registry.host}/{repo}:v1", monkeypatch)
        assert "RTJOBS_IMAGE_REQUIRE_DIGEST" in message
        # A digest of another repository (not under the allowed prefix) is refused as well.
        await expect_refused(acts, game_id, f"{registry.host}/other/{repo}@{digest}", monkeypatch)
        assert len(registry.requests) == asked, registry.requests[asked:]
        assert await inspect(docker, container_name(game_id)) is None
    finally:
        with contextlib.suppress(DockerError):
            await docker.images.delete(pinned)
