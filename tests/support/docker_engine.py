"""A Docker engine for the tests and the benchmark, and the test engine images, built offline.

`DOCKER_HOST` is used when it answers; otherwise, as root with Debian's `dockerd` installed, a private
daemon runs under a temp dir (vfs storage, iptables off, no default bridge, its own data/exec roots,
socket and pidfile) and is stopped at the end. The images are imported through the Engine API from a
busybox-static rootfs (no registry, no `docker` CLI), with HEALTHCHECK/CMD set by `changes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiodocker
from aiodocker.networks import DockerNetwork

BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
APPLETS = (
    "sh", "httpd", "wget", "sleep", "echo", "test", "touch", "cat", "true", "false", "nslookup", "ls", "head", "tr",
)  # fmt: skip
TEST_REPO = "rtjobs-test/engine"

# The engine: httpd on 8080 serving /healthz; sh as PID 1 so that SIGTERM ends it at once
# (PID 1 without a handler would ignore SIGTERM and every stop would wait the whole grace).
_SERVE = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"
_HEALTH_HTTP = (
    "HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:8080/healthz"
)


def _cmd(script: str) -> str:
    return 'CMD ["/bin/sh", "-c", ' + _json_str(script) + "]"


def _json_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# tag -> Dockerfile instructions applied at import.
IMAGE_CHANGES: dict[str, list[str]] = {
    "healthy": [_cmd(_SERVE), "EXPOSE 8080", _HEALTH_HTTP],
    # Healthy with another image id: the "same name, other image" and "other image" cases.
    "healthy-b": [_cmd(_SERVE), "EXPOSE 8080", _HEALTH_HTTP, "LABEL variant=b"],
    # Stays "starting" forever: failures inside the start period do not count.
    "never-healthy": [
        _cmd(_SERVE),
        "HEALTHCHECK --interval=1s --timeout=1s --start-period=1h CMD false",
    ],
    # Reported unhealthy after ~1 s.
    "unhealthy": [_cmd(_SERVE), "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false"],
    "exits": [
        _cmd("echo engine booting; echo loading map; echo 'fatal: no map' >&2; exit 3"),
        "HEALTHCHECK --interval=1s CMD true",
    ],
    # Without HEALTHCHECK ("running" would be ready): crash at once, or after ~0.3 s of booting. Only the
    # readiness stability window (RTJOBS_ENGINE_MIN_RUNNING_S) tells them from a healthy engine.
    "exits-at-once": [_cmd("echo engine booting; echo loading map; echo 'fatal: no map' >&2; exit 3")],
    "exits-soon": [_cmd("echo engine booting; sleep 0.3; echo loading map; echo 'fatal: no map' >&2; exit 3")],
    "slow-healthy": [
        _cmd("trap 'exit 0' TERM; (sleep 3; touch /tmp/ready) & httpd -f -p 8080 -h /www & wait"),
        "HEALTHCHECK --interval=1s --timeout=1s --retries=30 CMD test -f /tmp/ready",
    ],
    # Healthy ~8 s after start: long enough that a scenario can act on several engines (create them all
    # on a loaded machine, then kill a worker) while none is healthy yet.
    "late-healthy": [
        _cmd("trap 'exit 0' TERM; (sleep 8; touch /tmp/ready) & httpd -f -p 8080 -h /www & wait"),
        "HEALTHCHECK --interval=1s --timeout=1s --retries=60 CMD test -f /tmp/ready",
    ],
    # Fills memory until the kernel's OOM killer ends it (under a small memory limit).
    "oom": [
        _cmd("echo filling memory; x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo survived"),
        "HEALTHCHECK --interval=1s CMD true",
    ],
    # Ignores SIGTERM and has no HEALTHCHECK ("running" is ready).
    "ignores-term": [_cmd("trap '' TERM; while true; do sleep 1; done")],
}


@dataclass(frozen=True)
class EngineImages:
    healthy: str
    healthy_b: str
    never_healthy: str
    unhealthy: str
    exits: str
    exits_at_once: str
    exits_soon: str
    slow_healthy: str
    late_healthy: str
    ignores_term: str
    oom: str


def image_ref(tag: str) -> str:
    return f"{TEST_REPO}:{tag}"


TEST_IMAGES = EngineImages(
    healthy=image_ref("healthy"),
    healthy_b=image_ref("healthy-b"),
    never_healthy=image_ref("never-healthy"),
    unhealthy=image_ref("unhealthy"),
    exits=image_ref("exits"),
    exits_at_once=image_ref("exits-at-once"),
    exits_soon=image_ref("exits-soon"),
    slow_healthy=image_ref("slow-healthy"),
    late_healthy=image_ref("late-healthy"),
    ignores_term=image_ref("ignores-term"),
    oom=image_ref("oom"),
)


class EngineUnavailable(RuntimeError):
    """No Docker engine can be had here; the message says why (tests skip with it)."""


def static_busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:65536]:
            return path
    raise EngineUnavailable("no static busybox (install busybox-static: scripts/system-deps.sh)")


def rootfs_tar() -> bytes:
    """A minimal root file system: static busybox, its applets as symlinks, and /www/healthz."""
    busybox = static_busybox().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "etc", "proc", "sys", "dev", "www"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", busybox, 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        add_file("www/healthz", b"ok\n")
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
    return buf.getvalue()


async def import_image(docker: aiodocker.Docker, ref: str, rootfs: bytes, changes: list[str]) -> None:
    """POST /images/create?fromSrc=- (what `docker import --change` does), checking the JSON stream."""
    repo, tag = ref.rsplit(":", 1)
    params = [("fromSrc", "-"), ("repo", repo), ("tag", tag), *(("changes", c) for c in changes)]
    await docker._check_version()
    url = docker._canonicalize_url("images/create")
    async with docker.session.post(
        url, params=params, data=rootfs, headers={"Content-Type": "application/x-tar"}
    ) as resp:
        body = await resp.text()
        if resp.status != 200 or '"error"' in body:
            raise RuntimeError(f"importing {ref} failed: HTTP {resp.status} {body[:500]}")


async def build_test_images(docker: aiodocker.Docker) -> EngineImages:
    rootfs = rootfs_tar()
    await asyncio.gather(
        *(import_image(docker, image_ref(tag), rootfs, changes) for tag, changes in IMAGE_CHANGES.items())
    )
    return TEST_IMAGES


async def engine_answers(url: str, timeout_s: float = 3.0) -> bool:
    try:
        async with aiodocker.Docker(url=url) as docker, asyncio.timeout(timeout_s):
            await docker.version()
        return True
    except Exception:
        return False


class PrivateDockerd:
    """A dockerd of our own under a temp dir; `close()` stops it and whatever it left running."""

    def __init__(self, storage_driver: str = "vfs") -> None:
        binary = shutil.which("dockerd")
        if binary is None:
            raise EngineUnavailable("DOCKER_HOST is not set/reachable and dockerd is not installed")
        if os.geteuid() != 0:
            raise EngineUnavailable("DOCKER_HOST is not set/reachable and a private dockerd needs root")
        self.binary = binary
        self.storage_driver = storage_driver
        self.dir = Path(tempfile.mkdtemp(prefix="rtjobs-dockerd-"))
        self.socket = self.dir / "docker.sock"
        self.pidfile = self.dir / "docker.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, wait_s: float = 60.0) -> PrivateDockerd:
        cmd = [
            self.binary,
            f"--storage-driver={self.storage_driver}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={self.dir / 'data'}",
            f"--exec-root={self.dir / 'exec'}",
            f"--host={self.url}",
            f"--pidfile={self.pidfile}",
        ]
        log = open(self.dir / "dockerd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + wait_s
        while not self._ping():
            if self.proc.poll() is not None:
                tail = (self.dir / "dockerd.log").read_text(errors="replace")[-2000:]
                raise EngineUnavailable(f"private dockerd exited at start: {tail}")
            if time.monotonic() > deadline:
                self.close()
                raise EngineUnavailable(f"private dockerd did not answer within {wait_s}s")
            time.sleep(0.1)
        return self

    def _ping(self) -> bool:
        import socket

        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in sock.recv(256)
        except OSError:
            return False

    def _our_pids(self) -> list[int]:
        """Processes (containerd, shims) whose command line names our temp dir: ours, nobody else's."""
        marker = str(self.dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
        return pids

    def _bridges(self) -> list[str]:
        """Host interfaces of our daemon's bridge networks (`br-` + the network id's first 12 hex)."""
        import json
        import socket

        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(5.0)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /networks HTTP/1.0\r\n\r\n")
                reply = b""
                while chunk := sock.recv(65536):
                    reply += chunk
            networks = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        except (OSError, ValueError, IndexError):
            return []
        return [f"br-{n['Id'][:12]}" for n in networks if n.get("Driver") == "bridge"]

    def close(self) -> None:
        # A stopped daemon leaves its networks' bridges on the host, holding their address ranges:
        # enough of them and no new daemon finds a free pool. Remove ours once it is down.
        bridges = self._bridges() if self.proc is not None else []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        for pid in self._our_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for bridge in bridges:
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
        self._unmount_below()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _unmount_below(self) -> None:
        prefix = str(self.dir)
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        points = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


async def remove_test_leftovers(docker: aiodocker.Docker, *, everything: bool) -> None:
    """On our private engine, force-remove every container and network left.

    On an engine given by DOCKER_HOST nothing is removed here: it may run real games (and other test
    sessions' engines) under the same labels; each test removes the containers of its own games.
    """
    if not everything:
        return
    for c in await docker.containers.list(all=True):
        with contextlib.suppress(aiodocker.DockerError):
            await c.delete(force=True, v=True)
    if everything:
        for net in await docker.networks.list():
            if net["Name"] not in {"bridge", "host", "none"}:
                with contextlib.suppress(aiodocker.DockerError):
                    await DockerNetwork(docker, net["Id"]).delete()  # type: ignore[no-untyped-call]


@dataclass
class DockerEngine:
    """What the `docker_engine` fixture gives: the engine's URL, the test images, our own daemon if any."""

    url: str
    images: EngineImages
    private: PrivateDockerd | None

    async def close(self) -> None:
        async with aiodocker.Docker(url=self.url) as docker:
            await remove_test_leftovers(docker, everything=self.private is not None)
        if self.private is not None:
            self.private.close()


async def acquire_engine() -> DockerEngine:
    """DOCKER_HOST when it answers, else a private dockerd; the test images built in it."""
    private: PrivateDockerd | None = None
    url = os.environ.get("DOCKER_HOST", "")
    if not url or not await engine_answers(url):
        static_busybox()
        private = PrivateDockerd().start()
        url = private.url
    try:
        async with aiodocker.Docker(url=url) as docker:
            images = await build_test_images(docker)
    except BaseException:
        if private is not None:
            private.close()
        raise
    return DockerEngine(url=url, images=images, private=private)
