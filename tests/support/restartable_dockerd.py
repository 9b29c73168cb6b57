"""A private dockerd the test may stop and start again on the same socket and data root.

`PrivateDockerd.close()` deletes its directory; a restart must keep it (the containers and images
live in the data root), so stopping the daemon is split from cleaning up.
"""

from __future__ import annotations

import subprocess

from tests.support.docker_engine import PrivateDockerd


class RestartableDockerd(PrivateDockerd):
    def stop_daemon(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the daemon (it stops its containers, as a `systemctl restart docker` does) and wait."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def start(self, wait_s: float = 60.0) -> RestartableDockerd:
        super().start(wait_s)
        return self

    def restart(self) -> RestartableDockerd:
        self.stop_daemon()
        return self.start()
