"""Security (issue 5): Redis over TLS with the documented least-privilege ACL user, start-up errors that
say what is wrong without printing the secret, and the hardening of a real engine container.

The TLS material is a throwaway CA and server certificate made with the `openssl` CLI
(scripts/system-deps.sh installs it) in the test's temp dir; the `redis-server` is the test's own,
with the `default` user disabled and an `admin` user for arranging and checking.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import aiodocker
import pytest
import redis.asyncio as aioredis
from aiodocker.exceptions import DockerError
from aiodocker.networks import DockerNetwork
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.docker import EngineActivities
from contract.engine import EnsureEngineRemoved, EnsureEngineRunning
from contract.models import LABEL_GAME_ID, LABEL_MANAGED_BY, MANAGED_BY, container_name
from contract.settings import Settings
from rtjobs.client import stop_job
from tests.support.docker_engine import DockerEngine
from tests.support.processes import ROOT, STARTUP_S, Process, start_ready_worker, start_worker
from tests.support.redis_server import RedisServer, free_port

STREAM = "runtime:job_results"  # the default, so the documented ACL line applies verbatim
USER = "rtjobs"
# Characters that must be percent-encoded in a URL: the masking must hide both spellings.
PASSWORD = "s3cr3t/p@ss:w%rd"
ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
DOC = ROOT / "docs" / "security.md"


def documented_acl_line() -> str:
    """The one `ACL SETUSER rtjobs ...` line of docs/security.md: the test uses exactly what operators copy."""
    [line] = [ln.strip() for ln in DOC.read_text().splitlines() if ln.strip().startswith(f"ACL SETUSER {USER} ")]
    return line


def url_password(password: str) -> str:
    return quote(password, safe="")


# --- TLS material and the server ----------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA valid for a day and a server certificate for 127.0.0.1 (SAN), signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (scripts/system-deps.sh installs it)")
    d = tmp_path_factory.mktemp("tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=rtjobs-test-ca", cwd=d
    )
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf", cwd=d,
    )  # fmt: skip
    return Tls(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


@dataclass
class TlsRedis:
    port: int
    tls: Tls

    def url(self, user: str = USER, password: str = PASSWORD, *, ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.tls.ca}&ssl_cert_reqs=required" if ca else ""
        return f"rediss://{user}:{url_password(password)}@127.0.0.1:{self.port}/0{query}"

    def admin(self) -> aioredis.Redis:
        client: aioredis.Redis = aioredis.Redis.from_url(
            self.url("admin", ADMIN_PASSWORD), decode_responses=True, socket_timeout=5
        )
        return client


@pytest.fixture
async def tls_redis(tls: Tls) -> AsyncIterator[TlsRedis]:
    """TLS only (no plain port), `default` disabled, `rtjobs` set up with the documented line."""
    port = free_port()
    server = RedisServer(
        port=port,
        extra_args=[
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca),
            "--tls-auth-clients", "no",
            # A config directive's arguments are separate command-line words.
            "--user", "admin", "on", f">{ADMIN_PASSWORD}", "~*", "&*", "+@all",
            "--user", "default", "off",
        ],
    )  # fmt: skip
    server.start()
    try:
        rig = TlsRedis(port, tls)
        admin = rig.admin()
        line = documented_acl_line().replace(">CHANGE-ME", f">{PASSWORD}")
        try:
            reply = await admin.execute_command(*line.split())  # type: ignore[no-untyped-call]
            assert reply in (True, "OK"), reply
        finally:
            await admin.aclose()
        yield rig
    finally:
        server.close()


async def acl_refusals(rig: TlsRedis) -> list[dict[str, Any]]:
    """`ACL LOG` entries of our user, except redis-py's optional CLIENT SETINFO (see docs/security.md)."""
    admin = rig.admin()
    try:
        log = cast(list[dict[str, Any]], await admin.acl_log())
    finally:
        await admin.aclose()
    return [e for e in log if e.get("username") == USER and "setinfo" not in str(e.get("object", "")).lower()]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " ERROR " in line]


def assert_no_secret(output: str) -> None:
    for spelling in (PASSWORD, url_password(PASSWORD), "s3cr3t"):
        assert spelling not in output, f"the password ({spelling!r}) was printed:\n{output}"


# --- a real job through rediss:// with the least-privilege user ----------------------------------


@pytest.mark.docker
async def test_job_publishes_over_tls_as_acl_user(
    processes: list[Process],
    worker_env: dict[str, str],
    temporal_env: WorkflowEnvironment,
    docker_engine: DockerEngine,
    tls_redis: TlsRedis,
    task_queue: str,
) -> None:
    """Job publishes over verified TLS as the least privilege ACL user."""
    env = {
        **worker_env,
        "REDIS_URL": tls_redis.url(),
        "RTJOBS_RESULTS_STREAM": STREAM,
        "DOCKER_HOST": docker_engine.url,
    }
    worker = await start_ready_worker(processes, env)
    game_id = f"sec-{uuid.uuid4().hex[:10]}"

    # A stop of a game without a container: one Docker inspect, then the publish over TLS.
    handle = await stop_job(temporal_env.client, game_id, task_queue=task_queue)
    result = await asyncio.wait_for(handle.result(), 60)
    assert (result.outcome, result.error_code) == ("success", "replay_no_op")

    admin = tls_redis.admin()
    try:
        entries = cast(list[tuple[str, dict[str, str]]], await admin.xrange(STREAM))
        keys = sorted(cast(list[str], await admin.keys("*")))
    finally:
        await admin.aclose()
    assert [fields for _id, fields in entries] == [result.stream_fields()]
    assert keys[0] == STREAM and all(k.startswith(f"{{{STREAM}}}:published:") for k in keys[1:]), keys
    assert await acl_refusals(tls_redis) == [], "the documented ACL lacks something the worker used"

    # The operator CLI reads (XREVRANGE) and follows (XREAD) the stream as the same user.
    follower = Process(
        ["-m", "rtjobs.cli", "results", "--follow", "-o", "json", "--game", game_id],
        {**env, "PYTHONUNBUFFERED": "1"},
    )
    processes.append(follower)
    await follower.wait_for('"error_code": "replay_no_op"')
    second = await stop_job(temporal_env.client, game_id, task_queue=task_queue)
    await asyncio.wait_for(second.result(), 60)
    await _until(lambda: follower.output().count('"error_code": "replay_no_op"') == 2, "the follower saw the second")
    assert await acl_refusals(tls_redis) == [], "the documented ACL lacks something the CLI used"
    assert_no_secret(worker.output() + follower.output())


async def _until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s}s: {what}")


async def test_the_acl_user_can_do_nothing_else(tls_redis: TlsRedis) -> None:
    """Least privilege: other keys, other commands and the admin surface are refused."""
    client: aioredis.Redis = aioredis.Redis.from_url(tls_redis.url(), decode_responses=True, socket_timeout=5)
    try:
        assert await client.ping() is True
        assert await client.xrevrange(STREAM, count=1) == []
        refused: list[tuple[str, ...]] = [
            ("GET", "other-key"),
            ("SET", "other-key", "x"),
            ("XADD", "other-stream", "*", "a", "b"),
            ("DEL", STREAM),
            ("XTRIM", STREAM, "MAXLEN", "0"),
            ("EVAL", "return 1", "0"),
            ("KEYS", "*"),
            ("SCAN", "0"),
            ("FLUSHALL",),
            ("CONFIG", "GET", "requirepass"),
            ("INFO", "server"),  # only INFO's memory section (the eviction check) is granted
            ("ACL", "WHOAMI"),
            ("SCRIPT", "FLUSH"),
            ("PUBLISH", "ch", "x"),
            ("SELECT", "1"),
        ]
        for command in refused:
            with pytest.raises(aioredis.ResponseError, match=r"NOPERM|permission"):
                await client.execute_command(*command)  # type: ignore[no-untyped-call]
        # Inside a script the ACL applies too: the publish script cannot be bent to another key.
        sha = await client.script_load("return redis.call('SET', KEYS[1], 'x')")
        with pytest.raises(aioredis.ResponseError, match=r"NOPERM|permission"):
            await client.evalsha(sha, 1, "other-key")
    finally:
        await client.aclose()


# --- start-up failures: one clear line, no secret ------------------------------------------------


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("wrong-password", re.compile(r"invalid username-password pair|WRONGPASS", re.I)),
        ("disabled-default-user", re.compile(r"invalid username-password pair|WRONGPASS|NOAUTH", re.I)),
        ("untrusted-certificate", re.compile(r"certificate verify failed", re.I)),
    ],
)
async def test_bad_redis_credentials_fail_start_up(
    processes: list[Process], worker_env: dict[str, str], tls_redis: TlsRedis, case: str, says: re.Pattern[str]
) -> None:
    """Bad Redis credentials or certificate fail start up in one line without the secret."""
    url = {
        "wrong-password": tls_redis.url(password=PASSWORD + "-wrong"),
        "disabled-default-user": tls_redis.url(user="default"),
        "untrusted-certificate": tls_redis.url(ca=False),
    }[case]
    worker = start_worker(processes, {**worker_env, "REDIS_URL": url})
    assert await worker.wait(STARTUP_S) == 1
    out = worker.output()
    assert_no_secret(out)
    [line] = error_lines(out)
    assert "Redis" in line and f"127.0.0.1:{tls_redis.port}" in line and ":***@" in line, line
    assert says.search(line), f"the error does not say what is wrong: {line}"
    assert "Traceback" not in out


# --- the engine container's hardening ------------------------------------------------------------


async def _exec(docker: aiodocker.Docker, container_id: str, cmd: list[str], user: str = "") -> str:
    exe = await docker.containers.container(container_id).exec(cmd, user=user)
    out = b""
    async with exe.start(detach=False) as stream:
        while (msg := await stream.read_out()) is not None:
            out += msg.data
    return out.decode(errors="replace")


def _status_field(status: str, name: str) -> str:
    [value] = [ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith(f"{name}:")]
    return value


CAP_NET_BIND_SERVICE = 1 << 10


@pytest.fixture
def game_id() -> str:
    return f"sec-{uuid.uuid4().hex[:10]}"


@pytest.mark.docker
@pytest.mark.parametrize(
    ("cap_add", "user", "cap_eff"),
    [
        ([], None, 0),  # the defaults: uid/gid 65534
        # Added to the bounding set, but a non-root process holds no capability (Docker sets no ambient
        # ones, and no-new-privileges blocks file capabilities): only a root engine can use CapAdd.
        (["NET_BIND_SERVICE"], None, 0),
        (["NET_BIND_SERVICE"], "0:0", CAP_NET_BIND_SERVICE),
    ],
    ids=["defaults", "cap-add-non-root", "cap-add-root"],
)
async def test_engine_container_runs_hardened_as_the_contract_says(
    docker_engine: DockerEngine, game_id: str, cap_add: list[str], user: str | None, cap_eff: int
) -> None:
    network = f"rtjobs-sec-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "DOCKER_HOST": docker_engine.url,
        "engine_image": docker_engine.images.healthy,
        "game_network": network,
        "start_timeout_s": 20.0,
        "engine_memory_bytes": 96 * 1024 * 1024,
        "engine_nano_cpus": 250_000_000,
        "engine_pids_limit": 48,
        "engine_cap_add": cap_add,
        **({} if user is None else {"engine_user": user}),
    }
    settings = Settings(**values)
    acts = EngineActivities(settings)
    docker = aiodocker.Docker(url=docker_engine.url)
    try:
        outcome = await ActivityEnvironment().run(acts.ensure_engine_running, EnsureEngineRunning(game_id=game_id))
        info: dict[str, Any] = await docker.containers.container(outcome.container_id).show()
        host = info["HostConfig"]

        assert host["Privileged"] is False
        assert host["CapDrop"] == ["ALL"]
        assert (host["CapAdd"] or []) == cap_add
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Memory"] == settings.engine_memory_bytes
        assert host["MemorySwap"] == settings.engine_memory_bytes
        assert host["NanoCpus"] == settings.engine_nano_cpus
        assert host["PidsLimit"] == settings.engine_pids_limit
        assert info["Config"]["Labels"][LABEL_GAME_ID] == game_id
        assert info["Config"]["Labels"][LABEL_MANAGED_BY] == MANAGED_BY
        assert host["AutoRemove"] is False
        assert host["RestartPolicy"]["Name"] in ("", "no")
        # No way out to the host: its own network only, no host namespaces, ports, mounts or devices.
        assert host["NetworkMode"] == network
        assert list(info["NetworkSettings"]["Networks"]) == [network]
        assert host["PidMode"] in ("", "private") and host["IpcMode"] in ("", "private", "shareable")
        assert host["UsernsMode"] != "host"
        assert not host.get("PortBindings") and not host.get("PublishAllPorts")
        assert not host.get("Binds") and not info.get("Mounts") and not host.get("Devices")
        assert not host.get("VolumesFrom") and not info["Config"].get("Volumes")
        # Locked down by default: read-only root, a bounded noexec tmpfs for scratch, uid/gid 65534, and
        # Docker's default seccomp profile (no seccomp option at all, so never `unconfined`).
        assert host["ReadonlyRootfs"] is True
        uid, _, gid = (user or "65534:65534").partition(":")
        options = f"rw,noexec,nosuid,nodev,mode=1777,uid={uid},gid={gid},size={settings.engine_tmpfs_bytes}"
        assert host["Tmpfs"] == {"/tmp": options}
        assert info["Config"]["User"] == (user or "65534:65534")
        assert not any("seccomp" in opt or "unconfined" in opt for opt in host["SecurityOpt"])

        # What the kernel enforces for the engine's PID 1.
        status = await _exec(docker, outcome.container_id, ["cat", "/proc/1/status"])
        assert int(_status_field(status, "CapEff"), 16) == cap_eff
        assert int(_status_field(status, "CapBnd"), 16) == (CAP_NET_BIND_SERVICE if cap_add else 0)
        assert _status_field(status, "NoNewPrivs") == "1"
        assert _status_field(status, "Seccomp") == "2", "Docker's default seccomp profile is not applied"
        assert _status_field(status, "Uid").split() == [uid] * 4, f"the engine does not run as {uid}"
        assert _status_field(status, "Gid").split() == [uid] * 4
        # Its file systems, as the engine sees them: nothing writable but the scratch tmpfs.
        mounts = {
            line.split()[1]: line.split()
            for line in (await _exec(docker, outcome.container_id, ["cat", "/proc/1/mounts"])).splitlines()
        }
        assert "ro" in mounts["/"][3].split(","), mounts["/"]
        scratch = mounts["/tmp"]
        assert scratch[2] == "tmpfs" and {"rw", "noexec", "nosuid", "nodev"} <= set(scratch[3].split(",")), scratch
        assert f"size={settings.engine_tmpfs_bytes // 1024}k" in scratch[3].split(","), scratch
        probe = (
            "for f in /probe /bin/probe /www/probe /etc/probe; do echo x > $f && echo wrote $f; done;"
            " echo x > /tmp/probe$$ && echo scratch ok"
        )
        for user in ("", "0"):  # as the engine; and as root (owner of /, so only the read-only mount stops it)
            said = await _exec(docker, outcome.container_id, ["sh", "-c", probe], user)
            assert "wrote" not in said and "scratch ok" in said, (user, said)
            assert said.count("Read-only file system") == 4, (user, said)
    finally:
        with contextlib.suppress(Exception):
            await ActivityEnvironment().run(
                acts.ensure_engine_removed, EnsureEngineRemoved(game_id=game_id, stop_timeout_s=0)
            )
        with contextlib.suppress(DockerError):
            await docker.containers.container(container_name(game_id)).delete(force=True)
        with contextlib.suppress(DockerError):
            await DockerNetwork(docker, network).delete()  # type: ignore[no-untyped-call]
        await acts.close()
        await docker.close()
