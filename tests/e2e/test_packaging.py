"""The package as it installs: one wheel with the project's packages and `worker` as its only top-level names,
the `rtjobs` console script, the version; the CLI without the worker's modules; `--dev` without the
development stack (as in the production image) refused in one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.support.processes import process_env
from tests.support.worker_image import ROOT, stage_sources

TOP_LEVEL = {"activities", "contract", "rtjobs", "workflows", "worker"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def build_wheel(sources: Path, into: Path) -> Path:
    """`pip wheel` of the staged sources, without their dependencies."""
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), "."]
    done = subprocess.run(cmd, cwd=sources, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = into.glob("rtjobs-*.whl")
    return wheel


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtualenv with the wheel `pip install`ed (no dependencies); its site-packages."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    done = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    [site] = venv.glob("lib/python3*/site-packages")
    return site


def test_the_wheel_installs_only_the_projects_top_level_names(tmp_path: Path) -> None:
    wheel = build_wheel(stage_sources(tmp_path / "src"), tmp_path / "dist")
    assert wheel.name.startswith(f"rtjobs-{VERSION}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = set(archive.read(f"{dist_info}/top_level.txt").decode().split())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert top_level == TOP_LEVEL
    assert {n.split("/")[0].removesuffix(".py") for n in names} == TOP_LEVEL | {dist_info}
    assert "rtjobs/dev/stack.py" in names and "rtjobs/cli/__init__.py" in names
    assert "rtjobs = rtjobs.cli:main" in entry_points
    site = install(wheel, tmp_path / "venv")
    installed = {p.name.removesuffix(".py") for p in site.iterdir() if p.name != "__pycache__"}
    assert installed == TOP_LEVEL | {dist_info}


def test_an_install_without_the_dev_stack(tmp_path: Path) -> None:
    """As the image installs it (the Dockerfile removes rtjobs/dev first): the rest of the package builds and
    runs, and `--dev` is refused in one line.
    """
    sources = stage_sources(tmp_path / "src")
    shutil.rmtree(sources / "rtjobs" / "dev")
    wheel = build_wheel(sources, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        packages = {n.rsplit("/", 1)[0] for n in archive.namelist() if n.startswith("rtjobs/")}
    assert packages == {"rtjobs", "rtjobs/cli", "rtjobs/ops"}
    venv = tmp_path / "venv"
    site = install(wheel, venv)
    # The dependencies from this virtualenv's site-packages, as a plain path: its .pth files (the editable
    # install of this checkout, with rtjobs.dev) are not read from there.
    (site / "dependencies.pth").write_text(next(p for p in sys.path if p.endswith("site-packages")) + "\n")
    env = process_env(RTJOBS_METRICS_ADDRESS="", RTJOBS_STATE_DIR=str(tmp_path / "state"))

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)

    version = run(str(venv / "bin" / "rtjobs"), "--version")
    assert version.stdout.strip() == f"rtjobs {VERSION}", version
    dev = run(str(venv / "bin" / "python"), "-m", "worker", "--dev")
    assert dev.returncode == 1, dev.stderr
    [line] = dev.stderr.strip().splitlines()
    assert " ERROR " in line and "rtjobs.worker: --dev needs the development stack (rtjobs.dev)" in line
    assert not (tmp_path / "state").exists()


def test_the_cli_imports_none_of_the_workers_modules() -> None:
    probe = (
        "import json, sys, rtjobs.cli; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'worker' or m.startswith('rtjobs.'))))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    worker_side = {"worker", "rtjobs.startup", "rtjobs.hosting", "rtjobs.workers", "rtjobs.ops.health"}
    assert not loaded & worker_side, loaded
    assert not {m for m in loaded if m.startswith(("rtjobs.dev", "rtjobs.ops.tracing"))}, loaded


def test_version_in_the_source_tree() -> None:
    for command in (["-m", "rtjobs.cli", "--version"], ["worker.py", "--version"]):
        done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=True)
        assert done.stdout.split()[-1] == VERSION, done
