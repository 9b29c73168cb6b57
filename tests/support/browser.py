"""Headless Chromium for UI tests, in a network namespace of its own.

Chromium aborts every request in flight (`net::ERR_NETWORK_CHANGED`) when the host's network interfaces
change, and on this machine they change all the time: every private dockerd of the suite (and of
other sessions) adds and removes bridges and veth pairs. In a namespace of its own Chromium sees only
its loopback, where a relay listens and forwards each connection to the page's server on the host's
loopback. chromedriver stays on the host and drives Chromium through a pipe (`--remote-debugging-pipe`),
not a TCP port, so nothing else has to cross the namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen_in(namespace: Path) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (a free port) of `namespace`: made by a thread that enters
    the namespace and leaves it again (a socket stays in the namespace it was made in).
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(namespace, os.O_RDONLY)
        try:
            _setns(target)
            try:
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                sock.listen(64)
                made.append(sock)
            finally:
                _setns(own)
        except BaseException as err:
            failed.append(err)
        finally:
            os.close(own)
            os.close(target)

    thread = threading.Thread(target=make)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class Relay:
    """Accepts on `listener` (in the browser's namespace) and pipes each connection to 127.0.0.1:`port`
    of the host, a thread per direction.
    """

    def __init__(self, listener: socket.socket, port: int) -> None:
        self.listener = listener
        self.port = port
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def inner_port(self) -> int:
        port: int = self.listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                outer = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            for src, dst in ((inner, outer), (outer, inner)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def isolated_chrome(port: int, *, window: tuple[int, int] = (1440, 1000)) -> Iterator[tuple[webdriver.Chrome, str]]:
    """Headless Chromium in a network namespace of its own, and the base URL under which it reaches
    127.0.0.1:`port` of the host. Skipped (a failure under CI=true) without chromium, chromedriver or root.
    """
    chromium, driver, ip = shutil.which("chromium"), shutil.which("chromedriver"), shutil.which("ip")
    if chromium is None or driver is None or ip is None:
        pytest.skip("chromium, chromium-driver and iproute2 are needed (scripts/system-deps.sh installs them)")
    if os.geteuid() != 0:
        pytest.skip("a network namespace for chromium needs root")
    name = f"rtjobs-ui-{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "netns", "add", name], check=True)
    work = Path(tempfile.mkdtemp(prefix="rtjobs-chromium-"))
    relay: Relay | None = None
    try:
        subprocess.run([ip, "-n", name, "link", "set", "lo", "up"], check=True)
        relay = Relay(listen_in(Path("/run/netns") / name), port)
        wrapper = work / "chromium-in-netns"
        wrapper.write_text(f'#!/bin/sh\nexec {ip} netns exec {name} {chromium} "$@"\n')
        wrapper.chmod(0o755)
        options = webdriver.ChromeOptions()
        options.binary_location = str(wrapper)
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(arg)
        options.add_argument("--remote-debugging-pipe")
        options.add_argument(f"--user-data-dir={work / 'profile'}")
        options.add_argument(f"--window-size={window[0]},{window[1]}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        chrome = webdriver.Chrome(service=Service(driver), options=options)
        try:
            yield chrome, f"http://127.0.0.1:{relay.inner_port}"
        finally:
            chrome.quit()
    finally:
        if relay is not None:
            relay.close()
        subprocess.run([ip, "netns", "delete", name], check=False)
        shutil.rmtree(work, ignore_errors=True)
