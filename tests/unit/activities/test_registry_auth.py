"""Registry credentials (activities/registry_auth.py) and pull progress (activities/pull_progress.py):
parsing and matching as the Docker CLI does, then pulls from a loopback registry that requires a login.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import logging
import os
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.docker import EngineActivities
from activities.pull_progress import PROGRESS_EVERY_S, PullTracker
from activities.registry_auth import (
    DOCKER_HUB_KEY,
    RegistryAuthError,
    RegistryCredentials,
    credentials_for,
    from_auths,
    hostname_of,
    matching_key,
    read_config,
    registry_of,
)
from contract.engine import EngineOutcome, EnsureEngineRunning, PullProgress, pull_progress_of
from contract.models import ErrorCode
from contract.settings import Settings
from rtjobs.client import pull_progress, start_job
from tests.support.docker_engine import TEST_REPO, DockerEngine, EngineImages, rootfs_tar
from tests.support.job_worker import MakeSettings, real_worker
from tests.support.tiny_registry import TinyRegistry

USER = "rtjobs-puller"
PASSWORD = "pw-" + uuid.uuid4().hex  # never to be seen in a message or a log
HELPER = "rtjobstest"
RESULT_WAIT_S = 120.0  # stops a hang only


def auth_of(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(json.dumps(config))
    return path


def write_login(directory: Path, key: str, password: str = PASSWORD) -> Path:
    """A config.json whose `auths` entry `key` logs USER in with `password`."""
    return write_config(directory / "config.json", {"auths": {key: {"auth": auth_of(USER, password)}}})


def header_json(credentials: RegistryCredentials) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(credentials.header()))
    return decoded


# --- matching and parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("ubuntu", "docker.io"),
        ("galaxy/engine:1", "docker.io"),
        ("docker.io/galaxy/engine", "docker.io"),
        ("index.docker.io/library/busybox@sha256:" + "0" * 64, "docker.io"),
        ("registry.example.com/team/engine:1", "registry.example.com"),
        ("Registry.Example.com:5000/x", "registry.example.com:5000"),
        ("localhost/engine", "localhost"),
        ("localhost:5000/engine:2", "localhost:5000"),
        ("127.0.0.1:5000/a/b/c@sha256:" + "1" * 64, "127.0.0.1:5000"),
        ("team.name/engine", "team.name"),
    ],
)
def test_the_registry_of_a_reference(image: str, registry: str) -> None:
    assert registry_of(image) == registry


def test_config_keys_match_as_the_docker_cli_matches_them() -> None:
    assert hostname_of("https://registry.example.com:5000/v2/") == "registry.example.com:5000"
    assert hostname_of("http://Registry.Example.com") == "registry.example.com"
    assert hostname_of("registry.example.com/some/path") == "registry.example.com"
    for key in (DOCKER_HUB_KEY, "index.docker.io", "docker.io", "registry-1.docker.io", "https://docker.io/v2/"):
        assert matching_key(["other.example.com", key], "docker.io") == key
    # The exact server address wins over an alias earlier in the file.
    assert matching_key(["docker.io", DOCKER_HUB_KEY], "docker.io") == DOCKER_HUB_KEY
    for key in (
        "registry.example.com:5000",
        "https://registry.example.com:5000",
        "http://registry.example.com:5000/v1/",
    ):
        assert matching_key([key], "registry.example.com:5000") == key
    assert matching_key(["registry.example.com"], "registry.example.com:5000") is None
    assert matching_key(["registry.example.com:5000"], "registry.example.com") is None
    assert matching_key(["evil.example.com/registry.example.com"], "registry.example.com") is None
    assert matching_key([DOCKER_HUB_KEY], "registry.example.com") is None


def test_auths_entries(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    host = "registry.example.com"
    config: dict[str, Any] = {
        "auths": {
            f"https://{host}": {"auth": auth_of(USER, PASSWORD)},
            "split.example.com": {"username": USER, "password": PASSWORD},
            "token.example.com": {"identitytoken": PASSWORD},
            "placeholder.example.com": {},  # what `docker login` leaves beside a credsStore
        }
    }
    by_auth = from_auths(config, host, path)
    assert by_auth is not None and (by_auth.username, by_auth.password) == (USER, PASSWORD)
    assert header_json(by_auth) == {"serveraddress": host, "username": USER, "password": PASSWORD}
    split = from_auths(config, "split.example.com", path)
    assert split is not None and (split.username, split.password) == (USER, PASSWORD)
    token = from_auths(config, "token.example.com", path)
    assert token is not None and header_json(token) == {"serveraddress": "token.example.com", "identitytoken": PASSWORD}
    assert from_auths(config, "placeholder.example.com", path) is None
    assert from_auths(config, "absent.example.com", path) is None
    hub = from_auths({"auths": {"docker.io": {"auth": auth_of(USER, PASSWORD)}}}, "docker.io", path)
    assert hub is not None and hub.server_address == DOCKER_HUB_KEY
    assert PASSWORD not in repr(by_auth) and PASSWORD not in repr(token)


def test_missing_or_bad_auth_file(tmp_path: Path) -> None:
    """A missing file is no credentials and a bad one a clear error without the secret."""
    assert read_config(tmp_path / "absent.json") is None
    broken = tmp_path / "broken.json"
    broken.write_text('{"auths": {"r.example.com": {"auth": "' + PASSWORD + '"')
    with pytest.raises(RegistryAuthError) as caught:
        read_config(broken)
    assert str(broken) in str(caught.value) and "not valid JSON" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    not_base64 = {"auths": {"r.example.com": {"auth": PASSWORD + "!"}}}
    with pytest.raises(RegistryAuthError, match="not base64") as caught:
        from_auths(not_base64, "r.example.com", broken)
    assert PASSWORD not in str(caught.value)
    with pytest.raises(RegistryAuthError, match="not a JSON object"):
        read_config(write_config(tmp_path / "list.json", [1]))  # type: ignore[arg-type]
    if os.geteuid() != 0:  # root reads any file
        unreadable = write_config(tmp_path / "unreadable.json", {})
        unreadable.chmod(0)
        with pytest.raises(RegistryAuthError, match="unreadable"):
            read_config(unreadable)


def test_the_auth_file_setting_and_its_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTJOBS_REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert Settings().registry_auth_path == tmp_path / "home" / ".docker" / "config.json"
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    assert Settings().registry_auth_path == tmp_path / "dc" / "config.json"
    monkeypatch.setenv("RTJOBS_REGISTRY_AUTH_FILE", "")
    assert Settings().registry_auth_path == tmp_path / "dc" / "config.json"
    monkeypatch.setenv("RTJOBS_REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    assert Settings().registry_auth_path == tmp_path / "auth.json"
    assert Settings.model_fields["registry_auth_file"].description


@pytest.fixture
def helper_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Path]:
    """`install(script_body)`: a `docker-credential-rtjobstest` on the PATH; it logs what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(body: str) -> Path:
        script = bin_dir / f"docker-credential-{HELPER}"
        script.write_text(
            f'#!/bin/sh\n[ "$1" = get ] || exit 2\nread server\necho "$server" >> {bin_dir}/asked\n{body}\n'
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return bin_dir / "asked"

    return install


def helper_answer(username: str, secret: str) -> str:
    return f"echo '{json.dumps({'ServerURL': 'x', 'Username': username, 'Secret': secret})}'"


async def test_credential_helpers(tmp_path: Path, helper_on_path: Callable[[str], Path]) -> None:
    host = "registry.example.com:5000"
    path = write_config(
        tmp_path / "config.json",
        {
            "auths": {host: {}, "docker.io": {"auth": auth_of("file-user", "file-pass")}},
            "credHelpers": {f"https://{host}": HELPER},
        },
    )
    asked = helper_on_path(helper_answer(USER, PASSWORD))
    creds = await credentials_for(f"{host}/team/engine:1", path, 10)
    assert creds is not None and (creds.username, creds.password) == (USER, PASSWORD)
    assert asked.read_text() == f"{host}\n"
    assert f"docker-credential-{HELPER}" in creds.source
    # Not named in credHelpers, no credsStore: the file's own entry.
    hub = await credentials_for("galaxy/engine", path, 10)
    assert hub is not None and hub.username == "file-user"

    # credsStore is the default helper, asked with Docker Hub's server address; `<token>`: an identity token.
    write_config(path, {"auths": {DOCKER_HUB_KEY: {}}, "credsStore": HELPER})
    asked = helper_on_path(helper_answer("<token>", PASSWORD))
    token = await credentials_for("ubuntu:24.04", path, 10)
    assert token is not None and header_json(token) == {"serveraddress": DOCKER_HUB_KEY, "identitytoken": PASSWORD}
    assert asked.read_text().splitlines()[-1] == DOCKER_HUB_KEY

    helper_on_path("echo 'credentials not found in native keychain'; exit 1")
    assert await credentials_for("ubuntu", path, 10) is None
    helper_on_path("echo 'keychain locked' >&2; exit 1")
    with pytest.raises(RegistryAuthError, match="keychain locked"):
        await credentials_for("ubuntu", path, 10)
    helper_on_path("echo not json")
    with pytest.raises(RegistryAuthError, match="did not print JSON"):
        await credentials_for("ubuntu", path, 10)
    helper_on_path("sleep 30")
    with pytest.raises(RegistryAuthError, match=r"did not answer within 0\.5s"):
        await credentials_for("ubuntu", path, 0.5)
    write_config(path, {"credsStore": "absent-helper-of-rtjobs"})
    with pytest.raises(RegistryAuthError, match=r"docker-credential-absent-helper-of-rtjobs .* is not on PATH"):
        await credentials_for("ubuntu", path, 10)
    write_config(path, {"credsStore": "../../bin/sh"})
    with pytest.raises(RegistryAuthError, match="invalid credential helper name"):
        await credentials_for("ubuntu", path, 10)


# --- progress -------------------------------------------------------------------------------------------


def test_pull_progress_from_the_stream_throttled() -> None:
    now = [0.0]
    reports: list[PullProgress] = []
    tracker = PullTracker("r.example.com/engine:1", reports.append, clock=lambda: now[0])
    stream: list[tuple[float, dict[str, Any]]] = [
        (0.0, {"status": "Pulling from engine", "id": "1"}),  # the tag: not a layer
        (0.0, {"status": "Already exists", "id": "aaa"}),
        (0.1, {"status": "Pulling fs layer", "id": "bbb"}),
        (0.1, {"status": "Pulling fs layer", "id": "ccc"}),
        (0.5, {"status": "Downloading", "id": "bbb", "progressDetail": {"current": 100, "total": 1000}}),
        (2.5, {"status": "Downloading", "id": "ccc", "progressDetail": {"current": 50, "total": 500}}),
        (3.0, {"status": "Download complete", "id": "bbb"}),
        (3.1, {"status": "Extracting", "id": "bbb", "progressDetail": {"current": 9, "total": 99}}),
        (3.2, {"status": "Pull complete", "id": "bbb"}),
        (4.6, {"status": "Download complete", "id": "ccc"}),
        (4.7, {"status": "Pull complete", "id": "ccc"}),
        (4.8, {"status": "Digest: sha256:00"}),
    ]
    for at, message in stream:
        now[0] = at
        tracker.update(message)
    tracker.finish()
    # At most one report per PROGRESS_EVERY_S (at 0.0 and 2.5 and 4.6), and the last at the end.
    assert PROGRESS_EVERY_S == 2.0
    assert [(p.layers_done, p.layers_total, p.bytes_done, p.bytes_total, p.done) for p in reports] == [
        (1, 1, None, None, False),
        (1, 3, 150, 1500, False),
        (2, 3, 1500, 1500, False),
        (3, 3, 1500, 1500, True),
    ]
    assert reports[1].line() == "pulling r.example.com/engine:1: 1/3 layers, 0.0/0.0 MB"
    assert reports[-1].line().startswith("pulled r.example.com/engine:1: 3/3 layers")
    assert pull_progress_of(["", reports[-1].model_dump(mode="json")]) == reports[-1]
    assert pull_progress_of(["c0ffee"]) is None and pull_progress_of([]) is None
    assert pull_progress_of(["", {"kind": "other"}]) is None


# --- pulls from a registry that requires a login ----------------------------------------------------------


def small_layer(name: str, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(f"www/{name}")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))  # random: gzip cannot shrink it
    return buf.getvalue()


@dataclasses.dataclass
class PrivateImage:
    registry: TinyRegistry
    ref: str

    @property
    def host(self) -> str:
        return self.registry.host


@pytest.fixture
async def private_image(docker: aiodocker.Docker, images: EngineImages) -> AsyncIterator[PrivateImage]:
    """The healthy engine as a 3-layer image in a loopback registry that wants USER / PASSWORD; the
    image is removed from the engine afterwards.
    """
    registry = await TinyRegistry(credentials=(USER, PASSWORD)).start()
    config = (await docker.images.inspect(images.healthy))["Config"]
    repo = f"rtjobs-test/private-{uuid.uuid4().hex[:8]}"
    registry.put_image(repo, "1", [rootfs_tar(), small_layer("a", 200_000), small_layer("b", 300_000)], config)
    image = PrivateImage(registry, f"{registry.host}/{repo}:1")
    yield image
    await registry.close()
    with contextlib.suppress(DockerError):
        await docker.images.delete(image.ref, force=True)


@pytest.fixture
async def engine_activities(
    docker_engine: DockerEngine, private_image: PrivateImage, tmp_path: Path
) -> AsyncIterator[EngineActivities]:
    """The activities on the test's engine, allowed the private image, credentials from tmp_path/config.json."""
    settings = Settings(
        DOCKER_HOST=docker_engine.url,
        engine_image=private_image.ref,
        game_network="rtjobs-test-games",
        start_timeout_s=30.0,
        docker_call_timeout_s=10.0,
        engine_memory_bytes=64 * 1024 * 1024,
        docker_poll_interval_s=0.1,
        registry_auth_file=tmp_path / "config.json",
    )
    acts = EngineActivities(settings)
    yield acts
    await acts.close()


async def start(acts: EngineActivities, game_id: str, heartbeats: list[tuple[Any, ...]] | None = None) -> EngineOutcome:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=f"runtime-test-{game_id}", workflow_run_id=str(uuid.uuid4()))
    if heartbeats is not None:
        env.on_heartbeat = lambda *details: heartbeats.append(details)
    outcome: EngineOutcome = await env.run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id))
    return outcome


async def refused(acts: EngineActivities, game_id: str, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.DEBUG), pytest.raises(ApplicationError) as caught:
        await start(acts, game_id)
    err = caught.value
    assert err.type == ErrorCode.IMAGE_PULL_FAILED.value and err.non_retryable, err
    assert PASSWORD not in err.message and PASSWORD not in caplog.text
    return err.message


async def expect_running(acts: EngineActivities, game_id: str, docker: aiodocker.Docker) -> None:
    outcome = await start(acts, game_id)
    info = await docker.containers.container(outcome.container_id).show()
    assert info["State"]["Health"]["Status"] == "healthy"


@pytest.mark.docker
async def test_pull_without_credentials_is_refused(
    engine_activities: EngineActivities,
    private_image: PrivateImage,
    game_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pull without or with wrong credentials is refused saying so."""
    message = await refused(engine_activities, game_id, caplog)  # no config.json at all
    assert f"authentication failed for registry {private_image.host}" in message, message
    assert f"no credentials in {tmp_path / 'config.json'}" in message
    refused_before = private_image.registry.refused

    write_login(tmp_path, private_image.host, "wrong-" + PASSWORD)
    message = await refused(engine_activities, game_id, caplog)
    assert f"authentication failed for registry {private_image.host}" in message, message
    assert "credentials from `auths` entry" in message and "wrong-" not in message
    assert private_image.registry.refused > refused_before  # the daemon did ask with them

    write_config(tmp_path / "config.json", {"auths": {private_image.host: "not an object"}})
    message = await refused(engine_activities, game_id, caplog)
    assert str(tmp_path / "config.json") in message and "is not an object" in message


@pytest.mark.docker
async def test_pull_with_credentials_reports_progress(
    engine_activities: EngineActivities,
    private_image: PrivateImage,
    game_id: str,
    tmp_path: Path,
    docker: aiodocker.Docker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pull with the right credentials starts the engine and reports its progress."""
    write_login(tmp_path, f"https://{private_image.host}/v2/")
    private_image.registry.trickle_s = 3 * PROGRESS_EVERY_S  # each blob takes that long: progress between
    heartbeats: list[tuple[Any, ...]] = []
    with caplog.at_level(logging.DEBUG):
        outcome = await start(engine_activities, game_id, heartbeats)
    assert PASSWORD not in caplog.text
    info = await docker.containers.container(outcome.container_id).show()
    assert info["State"]["Health"]["Status"] == "healthy"

    progress = [p for p in (pull_progress_of(details) for details in heartbeats) if p is not None]
    assert progress, heartbeats
    assert all(PASSWORD not in repr(details) for details in heartbeats)
    assert any(not p.done and p.layers_total == 3 and p.layers_done < 3 for p in progress), progress
    assert any(not p.done and p.bytes_total and 0 < (p.bytes_done or 0) < p.bytes_total for p in progress), progress
    final = progress[-1]
    assert final.done and (final.layers_done, final.layers_total) == (3, 3), final
    assert final.image == private_image.ref and final.bytes_total and final.bytes_done == final.bytes_total
    # After the create the container id comes first, the pull's last progress beside it.
    assert heartbeats[-1][0] == outcome.container_id and pull_progress_of(heartbeats[-1]) == final


@pytest.mark.docker
async def test_a_pull_with_credentials_from_a_helper_on_the_path(
    engine_activities: EngineActivities,
    private_image: PrivateImage,
    game_id: str,
    tmp_path: Path,
    docker: aiodocker.Docker,
    helper_on_path: Callable[[str], Path],
) -> None:
    write_config(
        tmp_path / "config.json", {"auths": {private_image.host: {}}, "credHelpers": {private_image.host: HELPER}}
    )
    asked = helper_on_path(helper_answer(USER, PASSWORD))
    await expect_running(engine_activities, game_id, docker)
    assert asked.read_text() == f"{private_image.host}\n"


@pytest.mark.docker
async def test_a_start_job_shows_its_pull_progress_in_a_describe(
    client: Client,
    make_settings: MakeSettings,
    private_image: PrivateImage,
    tmp_path: Path,
    game_id: str,
) -> None:
    """The route a starter (the CLI) takes: the pending Docker step's heartbeat details, via describe."""
    auth_file = write_login(tmp_path, private_image.host)
    private_image.registry.trickle_s = 4 * PROGRESS_EVERY_S
    settings = make_settings(
        image_allow=f"{TEST_REPO},{private_image.host}/rtjobs-test/*", registry_auth_file=auth_file
    )
    seen: list[PullProgress] = []
    async with real_worker(client, settings):
        handle = await start_job(client, game_id, image=private_image.ref, task_queue=settings.task_queue)
        async with asyncio.timeout(RESULT_WAIT_S):
            while not seen or seen[-1].done is False:
                progress = await pull_progress(client, handle)
                if progress is not None and progress not in seen:
                    seen.append(progress)
                await asyncio.sleep(0.2)
            result = await handle.result()
    assert result.outcome == "success", result
    assert any(not p.done and p.layers_total == 3 for p in seen), seen
    assert seen[-1].done and seen[-1].layers_done == 3, seen
