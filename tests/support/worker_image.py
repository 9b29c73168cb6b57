"""The worker's Dockerfile built offline: no image registry answers here, so the base image is a Debian root
file system made with `mmdebstrap` from the machine's Debian mirror (cached under .state/, keyed by its
inputs), imported through the Engine API; Python packages come from a wheelhouse the venv's pip prepares
in the build context (`--no-index --find-links`), since the private dockerd's RUN steps have no network.
"""

from __future__ import annotations

import asyncio
import email.parser
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import aiodocker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.docker_engine import import_image

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".state" / "image-base"
# The release whose python3 is the venv's 3.11 (the wheelhouse is resolved for the venv's interpreter), as
# the normal build's python:3.11-slim-bookworm.
SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "ca-certificates")
MMDEBSTRAP_OPTIONS = (
    "--variant=minbase",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
OFFLINE_PIP = "--no-index --find-links=/src/wheels"
CONSTRAINTS = "constraints.txt"


def debian_mirror() -> str:
    """The Debian archive the machine's apt uses (deb822 `.sources` or one-line `.list` files)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        uris: list[str] = re.findall(r"^URIs:\s*(\S+)", text, re.M)
        uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
        for uri in uris:
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def mmdebstrap_version() -> str:
    done = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def base_key(mirror: str) -> str:
    inputs = {"suite": SUITE, "mirror": mirror, "packages": PACKAGES, "options": MMDEBSTRAP_OPTIONS}
    inputs["mmdebstrap"] = mmdebstrap_version()
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def base_rootfs() -> tuple[Path, bool]:
    """The cached root file system tar (built when absent); True when this call built it."""
    if shutil.which("mmdebstrap") is None:
        raise FileNotFoundError("mmdebstrap is not installed (scripts/system-deps.sh installs it)")
    mirror = debian_mirror()
    target = CACHE / f"debian-{SUITE}-python3-{base_key(mirror)}.tar"
    if target.is_file():
        return target, False
    CACHE.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: a run killed halfway leaves no truncated cache entry.
    fd, partial = tempfile.mkstemp(dir=CACHE, prefix=".building-", suffix=".tar")
    os.close(fd)
    cmd = ["mmdebstrap", *MMDEBSTRAP_OPTIONS, f"--include={','.join(PACKAGES)}", SUITE, partial, mirror]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        Path(partial).unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap failed ({done.returncode}): {done.stderr[-3000:]}")
    os.chmod(partial, 0o644)
    os.replace(partial, target)
    return target, True


def stage_sources(into: Path) -> Path:
    """A copy of what the build needs from the repository (pyproject.toml names the project's packages and
    modules), so that pip's in-tree build leaves nothing in the checkout.
    """
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    names = ["Dockerfile", "pyproject.toml", "README.md", CONSTRAINTS, *(f"{m}.py" for m in setuptools["py-modules"])]
    into.mkdir(parents=True)
    for name in names:
        shutil.copy2(ROOT / name, into / name)
    for package in setuptools["packages"]["find"]["include"]:
        if "." not in package:  # (a top-level package, with its subpackages)
            shutil.copytree(ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def pip_wheel(into: Path, *requirements: str) -> None:
    constraints = ["-c", str(ROOT / CONSTRAINTS)]  # (the versions the Dockerfile installs)
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", *constraints, "--wheel-dir", str(into), *requirements]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(requirements)} failed: {done.stderr[-3000:]}")


def wheelhouse(sources: Path, into: Path, python_version: str) -> list[str]:
    """Wheels of the project and all its runtime dependencies for the image's interpreter
    (`python_version`, e.g. 3.11.2), plus the build backend pip needs to build the project inside the image.

    pip resolves for the interpreter it runs in, whose patch release may differ from the image's: markers
    such as redis' `async-timeout; python_full_version < "3.11.3"` (Debian 12 has 3.11.2) then need
    wheels the host's resolution left out. Those are added until every requirement that holds for the
    image's version has its wheel.
    """
    if sys.version_info[:2] != tuple(int(n) for n in python_version.split(".")[:2]):
        host = sys.version.split()[0]
        raise RuntimeError(f"the wheelhouse is resolved by Python {host}; the image has {python_version}")
    build_requires = tomllib.loads((sources / "pyproject.toml").read_text())["build-system"]["requires"]
    pip_wheel(into, str(sources), *build_requires)
    target = {"python_full_version": python_version, "python_version": ".".join(python_version.split(".")[:2])}
    while missing := sorted(missing_for(into, target)):
        pip_wheel(into, *missing)
    return sorted(p.name for p in into.glob("*.whl"))


def missing_for(wheels: Path, environment: dict[str, str]) -> set[str]:
    """Requirements of the wheels in `wheels` that hold in `environment` (no extras) and have no wheel there."""
    metadata = []
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            metadata.append(email.parser.Parser().parsestr(archive.read(name).decode()))
    have = {canonicalize_name(str(m["Name"])) for m in metadata}
    missing = set()
    for meta in metadata:
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            holds = requirement.marker is None or requirement.marker.evaluate({**environment, "extra": ""})
            if holds and canonicalize_name(requirement.name) not in have:
                missing.add(f"{requirement.name}{requirement.specifier}")
    return missing


async def python_version_of(docker: aiodocker.Docker, image: str) -> str:
    code, out = await run_to_exit(docker, image, ["python3", "-c", "import platform; print(platform.python_version())"])
    if code != 0:
        raise RuntimeError(f"no python3 in {image}: {out}")
    return out.strip()


async def run_to_exit(
    docker: aiodocker.Docker,
    image: str,
    entrypoint: list[str],
    env: list[str] | None = None,
    host_network: bool = False,
) -> tuple[int, str]:
    """Run `entrypoint` in a throwaway container of `image`: its exit status and output."""
    config: dict[str, Any] = {
        "Image": image,
        "Entrypoint": entrypoint,
        "Env": env or [],
        "HostConfig": {"NetworkMode": "host"} if host_network else {},
    }
    container = await docker.containers.create(config)
    try:
        await container.start()
        state = await container.wait()
        return int(state["StatusCode"]), "".join(await container.log(stdout=True, stderr=True))
    finally:
        await container.delete(force=True)


def build_context(sources: Path, wheels: Path) -> bytes:
    """The build context as a tar: the staged sources (without what pip's build left there) and `wheels/`."""

    def leftovers(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        top = info.name.split("/", 1)[0]
        return None if top == "build" or top.endswith(".egg-info") or "__pycache__" in info.name else info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(sources.iterdir()):
            tar.add(path, arcname=path.name, filter=leftovers)
        tar.add(wheels, arcname="wheels")
    return buf.getvalue()


async def import_base(docker: aiodocker.Docker, rootfs: Path) -> str:
    ref = f"rtjobs-test/debian-python:{rootfs.stem.rsplit('-', 1)[1]}"
    try:
        await docker.images.inspect(ref)
    except aiodocker.DockerError as err:
        if err.status != 404:
            raise
        await import_image(docker, ref, await asyncio.to_thread(rootfs.read_bytes), [])
    return ref


async def build_image(docker: aiodocker.Docker, context: bytes, tag: str, buildargs: dict[str, str]) -> list[str]:
    """`docker build` through the Engine API (the classic builder); the build's output lines. A failed
    step raises with the output that led to it.
    """
    lines: list[str] = []
    try:
        async for message in docker.images.build(
            fileobj=io.BytesIO(context), encoding="identity", tag=tag, buildargs=buildargs, forcerm=True, stream=True
        ):
            if text := str(message.get("stream", "")).rstrip():
                lines.append(text)
    except aiodocker.DockerError as err:
        raise RuntimeError(f"building {tag} failed: {err}\n" + "\n".join(lines[-60:])) from None
    return lines
