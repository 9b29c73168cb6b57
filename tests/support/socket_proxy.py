"""The shipped Docker socket proxy (deploy/docker-socket-proxy): its allowlist as data, the HAProxy
config block made from it, and a real `haproxy` running that config for a test.

`python -m tests.support.socket_proxy --write` rewrites the allowlist block of haproxy.cfg from
allowed-endpoints.txt (the test fails while the two differ).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import stop_process

ROOT = Path(__file__).resolve().parents[2]
PROXY_DIR = ROOT / "deploy" / "docker-socket-proxy"
ALLOWED_FILE = PROXY_DIR / "allowed-endpoints.txt"
CFG_FILE = PROXY_DIR / "haproxy.cfg"
BEGIN, END = "    # BEGIN allowed-endpoints", "    # END allowed-endpoints"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})


@dataclass(frozen=True)
class Allowed:
    """One allowlist line: a method and a regex the whole path-with-query must match."""

    method: str
    pattern: str

    def matches(self, method: str, target: str) -> bool:
        return method == self.method and re.fullmatch(self.pattern, target) is not None

    def cfg_line(self) -> str:
        return f"    http-request allow if {{ method {self.method} }} {{ pathq -m reg '{self.pattern}' }}"


def load_allowed(path: Path = ALLOWED_FILE) -> list[Allowed]:
    allowed = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2 or fields[0] not in METHODS or "'" in fields[1]:
            raise ValueError(f"{path.name}:{number}: expected `METHOD REGEX` (no blanks or quotes): {raw!r}")
        re.compile(fields[1])
        allowed.append(Allowed(fields[0], fields[1]))
    return allowed


def rendered_block(allowed: list[Allowed]) -> list[str]:
    return [a.cfg_line() for a in allowed]


def cfg_block(text: str) -> list[str]:
    """The lines between the BEGIN/END markers of haproxy.cfg."""
    lines = text.splitlines()
    return lines[lines.index(BEGIN) + 1 : lines.index(END)]


def write_cfg() -> bool:
    """Rewrite the block from the allowlist; whether anything changed."""
    text = CFG_FILE.read_text()
    lines = text.splitlines()
    start, end = lines.index(BEGIN), lines.index(END)
    new = [*lines[: start + 1], *rendered_block(load_allowed()), *lines[end:]]
    new_text = "\n".join(new) + "\n"
    if new_text == text:
        return False
    CFG_FILE.write_text(new_text)
    return True


# `option httplog`: ... Th/Ti/TR/Tw/Tc/Tr/Ta timers, then the status, ..., then the quoted request line.
_HTTPLOG = re.compile(
    r" (?:\+?-?[0-9]+/){4}\+?-?[0-9]+ (?P<status>[0-9]{3}) .*\"(?P<method>[A-Z]+) (?P<target>\S+) [^\"]*\"$"
)


class ProxyUnavailable(RuntimeError):
    """HAProxy is not installed or did not start."""


class HAProxy:
    """`haproxy -db -f deploy/docker-socket-proxy/haproxy.cfg` in front of `upstream`, listening on its
    own socket in a short temp dir (unix socket paths are limited to 107 bytes).
    """

    def __init__(self, upstream: Path) -> None:
        binary = shutil.which("haproxy") or next(
            (p for p in ("/usr/sbin/haproxy", "/sbin/haproxy") if os.access(p, os.X_OK)), None
        )
        if binary is None:
            raise ProxyUnavailable("haproxy is not installed (scripts/system-deps.sh installs Debian's)")
        self.binary = binary
        self.upstream = upstream
        self.dir = Path(tempfile.mkdtemp(prefix="rtj-hap-"))
        self.socket = self.dir / "docker.sock"
        self.log_path = self.dir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_SOCKET": str(self.upstream), "PROXY_SOCKET": str(self.socket)}

    def check(self) -> str:
        """`haproxy -c` on the shipped config: its output; raises when the config is invalid."""
        done = subprocess.run(
            [self.binary, "-c", "-f", str(CFG_FILE)], env=self.env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise ProxyUnavailable(f"haproxy -c failed ({done.returncode}): {done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def start(self, wait_s: float = 10.0) -> HAProxy:
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "-db", "-f", str(CFG_FILE)],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + wait_s
        while not self._connects():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise ProxyUnavailable(f"haproxy did not listen: {self.log()[-2000:]}")
            time.sleep(0.05)
        return self

    def _connects(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(1.0)
                sock.connect(str(self.socket))
            return True
        except OSError:
            return False

    def answers(self) -> list[tuple[int, str, str]]:
        """(status, method, target) of every request in HAProxy's log (`option httplog` lines)."""
        found = []
        for line in self.log().splitlines():
            hit = _HTTPLOG.search(line)
            if hit:
                found.append((int(hit["status"]), hit["method"], hit["target"]))
        return found

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        stop_process(self.proc)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass(frozen=True)
class RawResponse:
    status: int
    body: bytes


def raw_request(
    path: Path,
    method: str,
    target: str,
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    chunked: bool = False,
    timeout_s: float = 15.0,
) -> RawResponse:
    """One HTTP/1.1 request on a new connection to a unix socket, written byte for byte as given
    (no client library normalising it), then `Connection: close`; the status and the body read.
    """
    head = [f"{method} {target} HTTP/1.1", "Host: docker", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers]
    if chunked:
        head.append("Transfer-Encoding: chunked")
        payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    else:
        if body or method in {"POST", "PUT"}:
            head.append(f"Content-Length: {len(body)}")
        payload = body
    if body:
        head.append("Content-Type: application/json")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(path))
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    parts = status_line.split(b" ")
    if len(parts) < 2 or not parts[1].isdigit():
        raise RuntimeError(f"no HTTP answer to {method} {target}: {reply[:200]!r}")
    return RawResponse(int(parts[1]), rest.partition(b"\r\n\r\n")[2])


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.support.socket_proxy --write")
    print("haproxy.cfg rewritten" if write_cfg() else "haproxy.cfg already matches allowed-endpoints.txt")
