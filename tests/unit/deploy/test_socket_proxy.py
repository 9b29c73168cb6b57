"""The Docker API the worker really needs, and the socket proxy that allows exactly that
(deploy/docker-socket-proxy: HAProxy from Debian's package).

1. A recording relay between the worker's aiodocker client and a real dockerd records every request of
   real jobs (start, its replay, stop, its replay, a failed start and its clean-up, a pull from a closed
   registry, a duplicate game network removed, the start-up check, the engine's identification by
   `GET /info` and its marker volume, and the host reports' list of our containers): the recorded calls and
   allowed-endpoints.txt must cover each other exactly, so the list cannot drift either way.
2. The real `haproxy` with the shipped config in front of the daemon: a start and a stop job succeed.
3. Through that proxy, calls outside the list are answered 403 and never reach the daemon: a
   privileged container, host mounts, exec, secrets, image load and delete, ...
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from temporalio.client import Client

from activities.docker import EngineActivities
from activities.hosts import HOST_VOLUME
from activities.publish import redis_client
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, JobResult
from contract.settings import Settings
from rtjobs.client import start_job, stop_job
from rtjobs.hosting import serving
from rtjobs.startup import check_docker
from tests.support.docker_engine import DockerEngine
from tests.support.docker_relay import DockerRelay
from tests.support.job_worker import e2e_settings, remove_game_containers
from tests.support.socket_proxy import (
    CFG_FILE,
    HAProxy,
    ProxyUnavailable,
    cfg_block,
    load_allowed,
    raw_request,
    rendered_block,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

RESULT_WAIT_S = 120.0
ABSENT_IMAGE = "127.0.0.1:9/rtjobs-test/absent:1"  # a closed local port: the pull fails at once, offline
REFUSED = b"refused by the rtjobs Docker socket proxy"


# --- helpers -------------------------------------------------------------------------------------


def unix_path(url: str) -> Path:
    if not url.startswith("unix://"):
        pytest.skip(f"the relay and the proxy need a unix-socket Docker engine, not {url}")
    return Path(url.removeprefix("unix://"))


@contextlib.contextmanager
def short_dir() -> Iterator[Path]:
    """A temp dir with a short path: unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rtj-sp-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def settings_for(docker_url: str, redis_url: str, task_queue: str, stream: str, network: str, image: str) -> Settings:
    extra: dict[str, Any] = {}
    if "image_allow" in Settings.model_fields:  # the image policy must not refuse the closed registry's image
        extra["image_allow"] = "*"
    return e2e_settings(
        docker_url=docker_url,
        redis_url=redis_url,
        task_queue=task_queue,
        stream=stream,
        game_network=network,
        engine_image=image,
        **extra,
    )


@contextlib.asynccontextmanager
async def worker_like_main(client: Client, settings: Settings) -> AsyncIterator[None]:
    """What `worker.run` does with Docker: the start-up check, then `serving` (it identifies the engine
    with `GET /info`, reports the host with its list of our containers, and polls the shared queue and
    the host's own queue, where the jobs' Docker steps run).
    """
    redis = redis_client(settings.redis_url)
    engine = EngineActivities(settings)
    try:
        await check_docker(engine)
        async with serving(client, settings, redis, engine):
            yield
    finally:
        await engine.close()
        await redis.aclose()


async def result(handle: Any) -> JobResult:
    done: JobResult = await asyncio.wait_for(handle.result(), RESULT_WAIT_S)
    return done


async def remove_network(docker: aiodocker.Docker, name: str) -> None:
    for net in await docker.networks.list(filters={"name": [name]}):
        if net["Name"] == name:
            with contextlib.suppress(DockerError):
                await DockerNetwork(docker, net["Id"]).delete()  # type: ignore[no-untyped-call]


async def unmark_private_engine(docker_engine: DockerEngine, docker: aiodocker.Docker) -> bool:
    """Remove the host marker of the tests' own dockerd, so that the worker's identify makes it (and its
    create is seen); an engine given by DOCKER_HOST keeps its marker (its id may be in use). Whether the
    marker will be made.
    """
    if docker_engine.private is None:
        return False
    with contextlib.suppress(DockerError):
        await (await docker.volumes.get(HOST_VOLUME)).delete()  # type: ignore[no-untyped-call]
    return True


def normalised(method: str, target: str) -> str:
    """A request as a reader wants it: ids, names and query values replaced by placeholders."""
    path, _, query = target.partition("?")
    path = re.sub(r"^/v[0-9]+\.[0-9]+/", "/v{api}/", path)
    path = re.sub(r"[0-9a-f]{64}", "{id}", path)
    path = re.sub(r"galaxy-game-[a-z0-9-]+", "galaxy-game-{game}", path)
    path = re.sub(r"^(/v\{api\})?/images/.+/json$", r"\1/images/{ref}/json", path)
    path = re.sub(r"^(/v\{api\})?/networks/(?!create$)[^/{]+$", r"\1/networks/{name}", path)
    if query:
        names = sorted({p.partition("=")[0] for p in query.split("&")})
        path += "?" + "&".join(f"{n}=…" for n in names)
    return f"{method} {path}"


# --- 0. the shipped config is the allowlist, and valid ------------------------------------------


def test_shipped_haproxy_cfg_is_the_allowlist() -> None:
    """The shipped haproxy.cfg carries exactly the allowlist and is valid."""
    assert cfg_block(CFG_FILE.read_text()) == rendered_block(load_allowed()), (
        "haproxy.cfg differs from allowed-endpoints.txt: run `python -m tests.support.socket_proxy --write`"
    )
    try:
        proxy = HAProxy(Path("/var/run/docker.sock"))
    except ProxyUnavailable as err:
        pytest.skip(str(err))
    try:
        assert "Configuration file is valid" in proxy.check()
    finally:
        proxy.close()


# --- 1. what the worker calls, recorded from real jobs -------------------------------------------


async def test_the_worker_calls_exactly_the_allowed_endpoints(
    client: Client, docker_engine: DockerEngine, docker: aiodocker.Docker, redis_url: str, task_queue: str, stream: str
) -> None:
    upstream = unix_path(docker_engine.url)
    images = docker_engine.images
    network = f"rtjobs-sp-{uuid.uuid4().hex[:8]}"
    ok, failing, absent = (f"sp-{uuid.uuid4().hex[:10]}" for _ in range(3))
    with short_dir() as tmp:
        relay = DockerRelay(upstream, tmp / "relay.sock")

        def duplicate_network() -> None:
            # Docker < 25 lets two creates of one name race to two networks: make the duplicate just
            # before the worker lists the name after its own create, so that it removes one.
            body = json.dumps({"Name": network, "Driver": "bridge", "CheckDuplicate": False}).encode()
            made = raw_request(upstream, "POST", "/networks/create", body)
            assert made.status == 201, made

        relay.before(b"/networks?filters=", duplicate_network)
        marks = await unmark_private_engine(docker_engine, docker)
        settings = settings_for(relay.url, redis_url, task_queue, stream, network, images.healthy)
        try:
            async with relay, worker_like_main(client, settings):
                q = settings.task_queue
                outcomes = [
                    await result(await start_job(client, ok, task_queue=q)),
                    await result(await start_job(client, ok, task_queue=q)),
                    await result(await stop_job(client, ok, stop_timeout_s=1, task_queue=q)),
                    await result(await stop_job(client, ok, task_queue=q)),
                    await result(await start_job(client, failing, image=images.exits_at_once, task_queue=q)),
                    # (a failed start's result comes once its clean-up, remove_failed_start, has run)
                    await result(await start_job(client, absent, image=ABSENT_IMAGE, task_queue=q)),
                ]
        finally:
            for game in (ok, failing, absent):
                await remove_game_containers(docker, game)
            await remove_network(docker, network)
    assert [(r.outcome, r.error_code) for r in outcomes] == [
        ("success", ""),
        ("success", "replay_no_op"),
        ("success", ""),
        ("success", "replay_no_op"),
        ("failure", "container_exited"),
        ("failure", "image_pull_failed"),
    ], outcomes
    assert relay.fired.is_set() and relay.hook_error is None, "the duplicate network was not made"
    assert relay.unparsed == 0

    calls = relay.requests
    allowed = load_allowed()
    examples: dict[str, str] = {}
    for m, t in calls:
        examples.setdefault(normalised(m, t), f"{m} {t}")
    print("\nDocker Engine API calls of the worker (one real request each):")
    for call in sorted(examples):
        print(f"  {call:<60} {examples[call][:160]}")
    uncovered = [(m, t) for m, t in calls if sum(a.matches(m, t) for a in allowed) != 1]
    assert not uncovered, f"calls not matched by exactly one line of allowed-endpoints.txt: {uncovered}"
    unused = [f"{a.method} {a.pattern}" for a in allowed if not any(a.matches(m, t) for m, t in calls)]
    if not marks:  # (an engine's marker is made once, by the first worker that identifies it)
        unused = [line for line in unused if "/volumes/create" not in line]
    assert not unused, f"allowed-endpoints.txt lines the worker never used: {unused}"
    # the parts that make the list what it is were really exercised
    assert any(m == "DELETE" and "/networks/" in t for m, t in calls)
    assert any(m == "POST" and "/images/create?fromImage=" in t for m, t in calls)
    listings = [
        json.loads(parse_qs(t.partition("?")[2])["filters"][0])
        for m, t in calls
        if m == "GET" and "/containers/json?" in t
    ]
    ours = {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}"]}
    assert any(f != ours for f in listings), listings  # remove_failed_start's list (one job run's labels)
    assert ours in listings, listings  # the host report's list of all our containers
    assert any(m == "GET" and re.fullmatch(r"(/v[0-9.]+)?/info", t) for m, t in calls)  # identify_host
    assert any(m == "GET" and t.endswith(f"/volumes/{HOST_VOLUME}") for m, t in calls)  # its marker


# --- 2 and 3. the real HAProxy with the shipped config ---------------------------------------------


@pytest.fixture
def proxy(docker_engine: DockerEngine) -> Iterator[HAProxy]:
    try:
        started = HAProxy(unix_path(docker_engine.url)).start()
    except ProxyUnavailable as err:
        pytest.skip(str(err))
    yield started
    started.close()


async def test_jobs_through_the_proxy_succeed(
    client: Client,
    docker_engine: DockerEngine,
    docker: aiodocker.Docker,
    proxy: HAProxy,
    redis_url: str,
    task_queue: str,
    stream: str,
) -> None:
    network = f"rtjobs-sp-{uuid.uuid4().hex[:8]}"
    game = f"sp-{uuid.uuid4().hex[:10]}"
    settings = settings_for(proxy.url, redis_url, task_queue, stream, network, docker_engine.images.healthy)
    marks = await unmark_private_engine(docker_engine, docker)
    try:
        async with worker_like_main(client, settings):
            started = await result(await start_job(client, game, task_queue=settings.task_queue))
            assert (started.outcome, started.error_code) == ("success", ""), started
            info = await docker.containers.container(f"galaxy-game-{game}").show()
            assert info["Id"] == started.container_id and info["State"]["Health"]["Status"] == "healthy"
            stopped = await result(await stop_job(client, game, stop_timeout_s=1, task_queue=settings.task_queue))
            assert (stopped.outcome, stopped.container_id) == ("success", started.container_id), stopped
    finally:
        await remove_game_containers(docker, game)
        await remove_network(docker, network)
    answers = proxy.answers()
    refused = [a for a in answers if a[0] == 403]
    assert not refused, f"the proxy refused calls of the worker: {refused}"
    passed = {(method, re.sub(r"[0-9a-f]{64}", "{id}", target.partition("?")[0])) for _, method, target in answers}
    for call in [
        ("GET", "/info"),
        ("GET", f"/volumes/{HOST_VOLUME}"),
        *([("POST", "/volumes/create")] if marks else []),  # the marker's body passes the proxy's check
        ("GET", "/containers/json"),
        ("POST", "/containers/create"),
        ("POST", "/containers/{id}/start"),
        ("POST", "/containers/{id}/stop"),
    ]:
        assert any(m == call[0] and t.endswith(call[1]) for m, t in passed), (call, answers)


async def test_calls_outside_the_list_are_refused_by_the_proxy(
    docker_engine: DockerEngine, docker: aiodocker.Docker, proxy: HAProxy
) -> None:
    api = "/v" + str((await docker.version())["ApiVersion"])
    image = docker_engine.images.healthy
    sock = proxy.socket
    tag = uuid.uuid4().hex[:8]
    name = f"galaxy-game-sp-{tag}"
    labels = {LABEL_GAME_ID: f"sp-{tag}", LABEL_MANAGED_BY: MANAGED_BY, "rtjobs.test": tag}

    def create_body(**host: Any) -> bytes:
        return json.dumps({"Image": image, "Labels": labels, "HostConfig": {"NetworkMode": "none", **host}}).encode()

    def create(body: bytes, target: str = f"{api}/containers/create?name={name}") -> int:
        return raw_request(sock, "POST", target, body).status

    # A running container of our own (made directly, not through the proxy) for exec, attach, archive.
    target_name = f"rtjobs-sp-target-{tag}"
    victim = await docker.containers.create(
        {"Image": image, "Labels": labels, "HostConfig": {"NetworkMode": "none"}}, name=target_name
    )
    await victim.start()
    cid = str(victim.id)
    try:
        # Control: the proxy passes what the worker needs, so the 403s below are the proxy's own.
        assert raw_request(sock, "GET", "/_ping").status == 200
        assert raw_request(sock, "GET", f"{api}/containers/{cid}/json").status == 200
        assert raw_request(sock, "GET", f"{api}/info").status == 200  # the worker identifies its engine
        # A legitimate create body is accepted (201), then removed again.
        plain = raw_request(sock, "POST", f"{api}/containers/create?name={name}", create_body())
        assert plain.status == 201, plain
        await docker.containers.container(json.loads(plain.body)["Id"]).delete(force=True)

        refused_creates = {
            "privileged": create_body(Privileged=True),
            "privileged, lower-case key (Go's decoder folds case)": json.dumps(
                {"Image": image, "HostConfig": {"privileged": True}}
            ).encode(),
            "privileged, spaced": b'{"Image": "' + image.encode() + b'", "HostConfig": {"Privileged" :  true}}',
            "bind mount of /": create_body(Binds=["/:/host"]),
            "bind mount of /, key \\u-escaped": (
                b'{"Image": "' + image.encode() + b'", "HostConfig": {"Bind\\u0073": ["/:/host"]}}'
            ),
            "bind mount of /, key with U+017F (Go folds it to s)": (
                b'{"Image": "' + image.encode() + b'", "HostConfig": {"Bind\xc5\xbf": ["/:/host"]}}'
            ),
            "mount of / (Mounts, type bind)": create_body(Mounts=[{"Type": "bind", "Source": "/", "Target": "/h"}]),
            "a volume": create_body(Mounts=[{"Type": "volume", "Source": "v", "Target": "/v"}]),
            "a device": create_body(Devices=[{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]),
            "host network": create_body(NetworkMode="host"),
            "host PID namespace": create_body(PidMode="host"),
            "another container's namespaces": create_body(IpcMode=f"container:{cid}"),
            "CAP_SYS_ADMIN": create_body(CapAdd=["SYS_ADMIN"]),
            "all capabilities": create_body(CapAdd=["NET_BIND_SERVICE", "ALL"]),
            "seccomp off": create_body(SecurityOpt=["seccomp=unconfined"]),
            "AppArmor off": create_body(SecurityOpt=["apparmor:unconfined"]),
            "published ports": create_body(PortBindings={"8080/tcp": [{"HostPort": "8080"}]}),
            "oversized body": create_body(Memory=64 << 20) + b" " * 9000,
        }
        for what, body in refused_creates.items():
            assert create(body) == 403, what
        assert create(create_body(), f"{api}/containers/create?name=other-{tag}") == 403, "a name not ours"
        assert create(create_body(), f"{api}/containers/create") == 403, "no name"
        chunked = raw_request(sock, "POST", f"{api}/containers/create?name={name}", create_body(), chunked=True)
        assert chunked.status == 403, "a chunked body (not fully checked)"

        refused = [
            ("POST", f"{api}/containers/{cid}/exec", json.dumps({"Cmd": ["cat", "/etc/passwd"]}).encode()),
            ("POST", f"{api}/exec/{'0' * 64}/start", b"{}"),
            ("POST", f"{api}/containers/{cid}/attach?stream=1&stdout=1", b""),
            ("GET", f"{api}/containers/{cid}/archive?path=/", b""),
            ("PUT", f"{api}/containers/{cid}/archive?path=/tmp", b""),
            ("GET", f"{api}/containers/{cid}/export", b""),
            ("POST", f"{api}/containers/{cid}/kill", b""),
            ("POST", f"{api}/containers/{cid}/update", b'{"Memory": 0}'),
            ("GET", f"{api}/secrets", b""),
            ("GET", f"{api}/swarm", b""),
            ("GET", f"{api}/system/df", b""),
            ("GET", f"{api}/events", b""),
            ("POST", f"{api}/images/load", b""),
            ("DELETE", f"{api}/images/{image}", b""),
            ("POST", f"{api}/images/create?fromSrc=-&repo=evil", b""),
            ("POST", f"{api}/images/create?fromImage=busybox&fromSrc=http://example.invalid/x.tar", b""),
            ("GET", f"{api}/images/{image}/get", b""),
            ("POST", f"{api}/build", b""),
            ("POST", f"{api}/volumes/create", b'{"Name": "x"}'),
            # only the host marker, exactly as the worker sends it: not with driver options (a bind of a
            # host path), another name hidden behind it (Go's decoder takes the last of two keys), or bare
            (
                "POST",
                f"{api}/volumes/create",
                b'{"DriverOpts": {"device": "/", "o": "bind", "type": "none"}, "Labels": {}, "Name": "rtjobs-host"}',
            ),
            (
                "POST",
                f"{api}/volumes/create",
                b'{"Labels": {"rtjobs.engine-id": "", "rtjobs.engine-name": "", "rtjobs.host-id": "x"}, '
                b'"Name": "rtjobs-host", "Name": "x"}',
            ),
            ("POST", f"{api}/volumes/create", b'{"Name": "rtjobs-host"}'),
            ("GET", f"{api}/volumes/x", b""),
            ("GET", f"{api}/volumes", b""),
            ("POST", f"{api}/plugins/pull?remote=evil", b""),
            ("POST", f"{api}/networks/create", b'{"Name": "x", "Driver": "macvlan"}'),
            ("POST", f"{api}/networks/create", b'{"Name": "x", "Driver": "bridge", "Options": {"a": "b"}}'),
            ("POST", f"{api}/networks/{'0' * 64}/connect", b"{}"),
            ("HEAD", "/_ping", b""),
            # path tricks: dockerd decodes and cleans the path, the proxy refuses such paths outright
            ("GET", f"{api}/images/x/../../containers/{cid}/export", b""),
            ("GET", f"{api}/containers/{cid}%2Fexport/json", b""),
            ("GET", f"{api}//containers/{cid}/json", b""),
        ]
        for method, target, body in refused:
            answer = raw_request(sock, method, target, body)
            assert answer.status == 403, (method, target, answer)
            if method != "HEAD":
                assert REFUSED in answer.body, (method, target, answer)
        upgrade = raw_request(sock, "GET", f"{api}/containers/{cid}/json", headers=(("Upgrade", "tcp"),))
        assert upgrade.status == 403, "a hijack (Upgrade) on an allowed path"

        # None of it reached the daemon: the image is still there, no container of that name exists.
        assert (await docker.images.inspect(image))["Id"]
        assert not await docker.containers.list(all=True, filters={"name": [name]})
        # ... while the same exec straight to the daemon would have worked.
        direct = raw_request(
            Path(docker_engine.url.removeprefix("unix://")),
            "POST",
            f"{api}/containers/{cid}/exec",
            json.dumps({"Cmd": ["true"]}).encode(),
        )
        assert direct.status == 201, direct
    finally:
        with contextlib.suppress(DockerError):
            await victim.delete(force=True)
        for container in await docker.containers.list(all=True, filters={"label": [f"rtjobs.test={tag}"]}):
            with contextlib.suppress(DockerError):
                await container.delete(force=True)
    # Each 403 is HAProxy's own: one refusal line in its log per refused request, matched by request line.
    create_at = f"{api}/containers/create"
    expected = collections.Counter(
        [("POST", f"{create_at}?name={name}")] * len(refused_creates)
        + [("POST", f"{create_at}?name=other-{tag}"), ("POST", create_at), ("POST", f"{create_at}?name={name}")]
        + [(method, target) for method, target, _ in refused]
        + [("GET", f"{api}/containers/{cid}/json")]
    )
    for _ in range(100):  # HAProxy logs a request when its stream ends, just after the client saw its answer
        logged = collections.Counter((method, target) for status, method, target in proxy.answers() if status == 403)
        if logged >= expected:
            break
        await asyncio.sleep(0.1)
    assert logged == expected, (f"not logged: {expected - logged}; not sent: {logged - expected}", proxy.log())
