"""`scripts/system-deps.sh` fails, with one line naming what is missing and the command that installs it, when it
cannot install the packages itself (not root): `make run` and `make test` then stop there, not later with a less
clear error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT

SCRIPT = ROOT / "scripts" / "system-deps.sh"
NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory uid 65534 can reach (pytest's tmp_path sits under a root-only directory)."""
    path = Path(tempfile.mkdtemp(prefix="rtjobs-system-deps-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _run_as_nobody(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The script as uid 65534 with a PATH holding only `id`: every package it checks for is missing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.fail("the test needs root and setpriv (util-linux) to run the script as another user")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id") or "/usr/bin/id")
    # A copy it can read: the checkout may sit in a directory only root enters (CI clones into `mktemp -d`).
    script = tmp_path / SCRIPT.name
    shutil.copy(SCRIPT, script)
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/bin/bash", str(script), *args],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize("args", [(), ("run",)], ids=["test", "run"])
def test_missing_packages_fail_with_the_install_command(open_dir: Path, args: tuple[str, ...]) -> None:
    done = _run_as_nobody(open_dir, *args)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "redis-server" in lines[0] and "docker.io" in lines[0]
    assert "apt-get install -y redis-server docker.io" in lines[0]
    assert ("chromium" in lines[0]) == (args == ()), "`run` asks only for the dev stack's packages"
