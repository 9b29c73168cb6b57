"""The development stack of `worker.py --dev`: Redis, a Docker engine and a demo engine image, so that
`make run` on a fresh machine runs real jobs.

Each part is used where it already answers (REDIS_URL / 127.0.0.1:6379, DOCKER_HOST / the default socket,
RTJOBS_ENGINE_IMAGE) and started privately under `.state/` where nothing does (a `redis-server`, a private
`dockerd`, a busybox-static image imported through the Engine API). What it started stops with the worker;
what a killed run left running is adopted. The test harness builds its daemons and images with this code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiodocker

from contract.settings import Settings, redact_url

BUSYBOX_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))
APPLETS = (
    "sh", "httpd", "wget", "sleep", "echo", "test", "touch", "cat", "true", "false", "nslookup", "ls", "head", "tr",
)  # fmt: skip
DEFAULT_DOCKER_SOCKET = "unix:///var/run/docker.sock"
DEMO_IMAGE = "rtjobs-dev/engine:demo"
REDIS_START_S = 10.0
DOCKERD_START_S = 60.0
STOP_GRACE_S = 20.0
# containerd refuses a unix socket path longer than 104 bytes; dockerd puts containerd's sockets this
# deep below its exec root.
_SOCKET_PATH_MAX = 104
_EXEC_ROOT_DEPTH = len("/containerd/containerd-debug.sock")

# The engine: httpd on 8080 serving /www; sh as PID 1 so that SIGTERM ends it at once
# (PID 1 without a handler would ignore SIGTERM and every stop would wait the whole grace).
SERVE_HTTP = "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"
HEALTH_HTTP = (
    "HEALTHCHECK --interval=1s --timeout=2s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:8080/healthz"
)


def shell_cmd(script: str) -> str:
    """A `CMD` change running `script` under /bin/sh (exec form, JSON-quoted)."""
    return 'CMD ["/bin/sh", "-c", ' + json.dumps(script) + "]"


# `docker import` images carry no HEALTHCHECK, CMD or EXPOSE: they are set by these changes.
HTTP_ENGINE_CHANGES = [shell_cmd(SERVE_HTTP), "EXPOSE 8080", HEALTH_HTTP]
DEMO_CHANGES = [*HTTP_ENGINE_CHANGES, "LABEL org.opencontainers.image.title=rtjobs-demo-engine"]


class DevStackError(Exception):
    """A part the dev stack needs cannot be had; the message is the one line the operator sees."""


class EngineUnavailable(DevStackError):
    """No Docker engine can be had here; the message says why."""


def say(line: str) -> None:
    """What the dev stack used or started: one line on stderr, as the dev server's own lines."""
    print(line, file=sys.stderr, flush=True)


# --- the engine image, offline ------------------------------------------------------------------------


def static_busybox() -> Path:
    for path in BUSYBOX_PATHS:
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:65536]:
            return path
    raise EngineUnavailable("no static busybox (install busybox-static: scripts/system-deps.sh)")


def rootfs_tar() -> bytes:
    """A minimal root file system: static busybox, its applets as symlinks, /www/healthz and an index."""
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
        add_file("www/index.html", b"rtjobs demo engine\n")
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


async def ensure_demo_image(url: str) -> bool:
    """The demo engine image in the engine at `url`; True when it was built now (False: it was there).

    Built only when absent: a rebuilt image has another id, and an engine of the earlier one would
    then count as running another image (its next start would replace it).
    """
    async with aiodocker.Docker(url=url) as docker:
        try:
            await docker.images.inspect(DEMO_IMAGE)
            return False
        except aiodocker.DockerError as err:
            if err.status != 404:
                raise
        await import_image(docker, DEMO_IMAGE, rootfs_tar(), DEMO_CHANGES)
    return True


async def engine_answers(url: str, timeout_s: float = 3.0) -> bool:
    try:
        async with aiodocker.Docker(url=url) as docker, asyncio.timeout(timeout_s):
            await docker.version()
        return True
    except Exception:
        return False


# --- a private dockerd --------------------------------------------------------------------------------


class PrivateDockerd:
    """A dockerd of our own under `root` (a new temp dir when None); `stop()` ends it and whatever it
    left running, `close()` also deletes the directory.
    """

    def __init__(self, root: Path | None = None, storage_driver: str = "vfs") -> None:
        binary = shutil.which("dockerd")
        if binary is None:
            raise EngineUnavailable("DOCKER_HOST is not set/reachable and dockerd is not installed")
        if os.geteuid() != 0:
            raise EngineUnavailable("DOCKER_HOST is not set/reachable and a private dockerd needs root")
        self.binary = binary
        # vfs works everywhere (also inside a container); overlay2 copies less (an image build: 56-98 s
        # instead of 599 s) where the kernel and file system allow it.
        self.storage_driver = storage_driver
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="rtjobs-dockerd-"))
        root.mkdir(parents=True, exist_ok=True)
        self.dir = root
        self.exec_root = root / "exec"
        self.socket = root / "docker.sock"
        if len(str(self.exec_root)) + _EXEC_ROOT_DEPTH > _SOCKET_PATH_MAX:
            # Too deep for containerd's sockets: the run-time state goes to a short dir named for `root`
            # instead (the same one each time, so that a later run finds a daemon left running).
            run_dir = Path(tempfile.gettempdir()) / f"rtjobs-dockerd-{hashlib.sha256(bytes(root)).hexdigest()[:12]}"
            run_dir.mkdir(mode=0o700, exist_ok=True)
            self.exec_root, self.socket = run_dir / "exec", run_dir / "docker.sock"
        self.pidfile = root / "docker.pid"
        self.proc: subprocess.Popen[bytes] | None = None
        self.adopted: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, wait_s: float = DOCKERD_START_S) -> PrivateDockerd:
        cmd = [
            self.binary,
            f"--storage-driver={self.storage_driver}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--data-root={self.dir / 'data'}",
            f"--exec-root={self.exec_root}",
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
                self.stop()  # (what it had started, and its mounts)
                raise EngineUnavailable(f"private dockerd exited at start: {tail}")
            if time.monotonic() > deadline:
                self.close()
                raise EngineUnavailable(f"private dockerd did not answer within {wait_s}s")
            time.sleep(0.1)
        return self

    def adopt(self) -> int | None:
        """The pid of a daemon of ours still answering here (left by a run that was killed), which
        `stop()` then ends too; None when there is none (then `start()` makes one).
        """
        pid = _pid_in(self.pidfile, "dockerd")
        if pid is None or not self._ping():
            return None
        self.adopted = pid
        return pid

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in sock.recv(256)
        except OSError:
            return False

    def _our_pids(self) -> list[int]:
        """Processes (containerd, shims) whose command line names our directories: ours, nobody else's."""
        markers = {str(self.dir).encode(), str(self.exec_root).encode()}
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if any(marker in cmdline for marker in markers):
                pids.append(int(entry.name))
        return pids

    def _bridges(self) -> list[str]:
        """Host interfaces of our daemon's bridge networks (`br-` + the network id's first 12 hex)."""
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

    def stop(self) -> None:
        """SIGTERM the daemon (it stops its containers), then end what it left and free its bridges."""
        # A stopped daemon leaves its networks' bridges on the host, holding their address ranges:
        # enough of them and no new daemon finds a free pool. Remove ours once it is down.
        bridges = self._bridges() if self.proc is not None or self.adopted is not None else []
        if self.adopted is not None:
            stop_pid(self.adopted)
            self.adopted = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        leftovers = self._our_pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_gone(leftovers)
        for bridge in bridges:
            subprocess.run(["ip", "link", "delete", bridge], check=False, capture_output=True)
        self._unmount_below()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self.exec_root.is_relative_to(self.dir):
            shutil.rmtree(self.exec_root.parent, ignore_errors=True)

    def _unmount_below(self) -> None:
        prefixes = (str(self.dir), str(self.exec_root))
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        points = [line.split()[1] for line in mounts if len(line.split()) > 1]
        for point in sorted((p for p in points if p.startswith(prefixes)), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_gone(pids: list[int], timeout_s: float = 10.0) -> None:
    """Wait until none of `pids` runs: a SIGKILL is delivered, not awaited, and a process that still
    exits holds its mounts and network devices.
    """
    deadline = time.monotonic() + timeout_s
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def _pid_in(pidfile: Path, name: str) -> int | None:
    """The running process `pidfile` names, if its command is `name` (not a reused pid)."""
    try:
        pid = int(pidfile.read_text().strip())
        # (redis-server rewrites its title: "/usr/bin/redis-server 127.0.0.1:6379" in one argument)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split(b" ")[0]
    except (OSError, ValueError):
        return None
    return pid if running(pid) and Path(command.decode(errors="replace")).name == name else None


def stop_pid(pid: int, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM a process that is not our child, SIGKILL it after `grace_s`, and wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_gone([pid], grace_s)
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone([pid])


# --- a private redis-server ---------------------------------------------------------------------------


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_redis_server(port: int, data_dir: Path, extra_args: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`redis-server` on 127.0.0.1:`port`, its files in `data_dir`, once it accepts connections."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise DevStackError(
            f"nothing answers on 127.0.0.1:{port} and redis-server is not installed "
            "(scripts/system-deps.sh installs it; or set REDIS_URL)"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), *(extra_args or [])]
    err_log = data_dir / "stderr.log"
    with open(err_log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + REDIS_START_S
    while not port_answers(port):
        if proc.poll() is not None:
            raise DevStackError(f"redis-server exited at start: {err_log.read_text(errors='replace')[-500:]}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise DevStackError(f"redis-server on port {port} did not answer within {REDIS_START_S:g} s")
        time.sleep(0.02)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM a helper server (redis-server, haproxy, ...), SIGKILL it after `grace_s`, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the stack ----------------------------------------------------------------------------------------


async def start(settings: Settings, stack: contextlib.AsyncExitStack) -> Settings:
    """Redis, Docker and the engine image for `--dev`: the settings pointed at what is used, and what
    was started registered on `stack` to be stopped.
    """
    given = settings.model_fields_set
    update: dict[str, object] = {}
    if "redis_url" in given:
        say(f"Redis: REDIS_URL is set ({redact_url(settings.redis_url)}): the dev stack starts none")
    else:
        update["redis_url"] = await _redis(settings, stack)
    if "docker_host" in given:
        say(f"Docker: DOCKER_HOST is set ({settings.docker_host}): the dev stack starts no engine")
        docker_url: str | None = settings.docker_host
    else:
        docker_url = await _docker(settings, stack)
        update["docker_host"] = docker_url
    if "engine_image" not in given and docker_url is not None and await _demo_image(docker_url):
        update["engine_image"] = DEMO_IMAGE
    return settings.model_copy(update=update)


async def _redis(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    port = settings.dev_redis_port
    url = f"redis://127.0.0.1:{port}/0"
    data_dir = settings.state_dir / "redis"
    pidfile = data_dir / "redis.pid"
    if await asyncio.to_thread(port_answers, port):
        leftover = _pid_in(pidfile, "redis-server")
        if leftover is None:
            say(f"Redis: using the server answering on 127.0.0.1:{port}")
            return url
        stack.push_async_callback(_stopping, f"Redis: stopped redis-server (pid {leftover})", stop_pid, leftover)
        say(f"Redis: adopted the redis-server (pid {leftover}) an earlier run left on 127.0.0.1:{port}")
        return url
    proc = await asyncio.to_thread(start_redis_server, port, data_dir, ["--pidfile", str(pidfile)])
    stack.push_async_callback(_stopping, f"Redis: stopped redis-server (pid {proc.pid})", stop_process, proc)
    say(f"Redis: started redis-server (pid {proc.pid}) on 127.0.0.1:{port}, data in {data_dir}")
    return url


async def _docker(settings: Settings, stack: contextlib.AsyncExitStack) -> str | None:
    if await engine_answers(DEFAULT_DOCKER_SOCKET):
        say(f"Docker: using the engine answering at {DEFAULT_DOCKER_SOCKET}")
        return DEFAULT_DOCKER_SOCKET
    try:
        daemon = PrivateDockerd(settings.state_dir / "docker")
        pid = await asyncio.to_thread(daemon.adopt)
        what = "adopted the private dockerd an earlier run left"
        if pid is None:
            await asyncio.to_thread(daemon.start)
            assert daemon.proc is not None
            pid, what = daemon.proc.pid, "started a private dockerd"
    except EngineUnavailable as err:
        say(f"Docker: no engine at {DEFAULT_DOCKER_SOCKET} and none started ({err}): starts report docker_unavailable")
        return None
    stack.push_async_callback(_stopping, f"Docker: stopped the private dockerd (pid {pid})", daemon.stop)
    say(f"Docker: {what} (pid {pid}) at {daemon.url}, data in {daemon.dir}")
    return daemon.url


async def _stopping(line: str, stop: Callable[..., None], *args: object) -> None:
    await asyncio.to_thread(stop, *args)
    say(line)


async def _demo_image(docker_url: str) -> bool:
    try:
        built = await ensure_demo_image(docker_url)
    except (EngineUnavailable, RuntimeError, aiodocker.DockerError) as err:
        say(f"Engine image: the demo image could not be built ({err}); starts use RTJOBS_ENGINE_IMAGE's default")
        return False
    what = "built" if built else "found"
    say(f"Engine image: {what} {DEMO_IMAGE} (busybox httpd on 8080, HEALTHCHECK), the default of start jobs")
    return True
