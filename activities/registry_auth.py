"""Registry credentials for a pull, read from a Docker `config.json` the way the Docker CLI reads it.

The Engine API ignores `docker login`: a pull of a private image must carry the `X-Registry-Auth`
header. Its credentials come from RTJOBS_REGISTRY_AUTH_FILE (`Settings.registry_auth_path`),
read afresh for every pull so that rotated tokens are used: an `auths` entry (`auth`, `username` /
`password`, `identitytoken`), or a credential helper (`credHelpers` for the registry, else
`credsStore`) run as `docker-credential-NAME get`. No secret is ever put in a message or a log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The Docker CLI's key for Docker Hub, and every name its entries are found under.
DOCKER_HUB = "docker.io"
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
DOCKER_HUB_HOSTS = frozenset({"index.docker.io", "docker.io", "registry-1.docker.io"})
# What a credential helper prints when it holds nothing for the server (docker-credential-helpers).
HELPER_NOT_FOUND = "credentials not found"
# A helper's Username saying that its Secret is an identity token.
HELPER_TOKEN_USERNAME = "<token>"


class RegistryAuthError(Exception):
    """The credentials could not be read: the message names the file or helper, never a secret."""


@dataclass(frozen=True)
class RegistryCredentials:
    """What a pull sends for one registry; `source` says where it came from (for messages)."""

    server_address: str
    source: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def header(self) -> str:
        """The `X-Registry-Auth` value: base64url JSON, as the Engine API reads it."""
        body: dict[str, str] = {"serveraddress": self.server_address}
        if self.identity_token:
            body["identitytoken"] = self.identity_token
        else:
            body.update(username=self.username, password=self.password)
        return base64.urlsafe_b64encode(json.dumps(body).encode()).decode("ascii")


def registry_of(image: str) -> str:
    """The registry host of an image reference (`host[:port]`), `docker.io` when it names none.

    As Docker parses a reference: the first path component is a registry when it has a `.` or a `:`
    or is `localhost`; otherwise the image is on Docker Hub.
    """
    name = image.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return DOCKER_HUB if first.lower() in DOCKER_HUB_HOSTS else first.lower()
    return DOCKER_HUB


def hostname_of(key: str) -> str:
    """A config key as the registry it names: without `http(s)://` and anything after the host
    (the Docker CLI's ConvertToHostname).
    """
    stripped = key.strip()
    for scheme in ("https://", "http://"):
        if stripped.lower().startswith(scheme):
            stripped = stripped[len(scheme) :]
            break
    return stripped.split("/", 1)[0].lower()


def server_address_for(registry: str) -> str:
    """The server address Docker uses for a registry: its key in `auths` and what helpers are asked."""
    return DOCKER_HUB_KEY if registry == DOCKER_HUB else registry


def _names(registry: str) -> frozenset[str]:
    return DOCKER_HUB_HOSTS if registry == DOCKER_HUB else frozenset({registry})


def matching_key(keys: list[str], registry: str) -> str | None:
    """The config key for `registry`: the exact server address first, else the first key (in file
    order) whose hostname is one of the registry's names.
    """
    exact = server_address_for(registry)
    if exact in keys:
        return exact
    names = _names(registry)
    return next((key for key in keys if hostname_of(key) in names), None)


def read_config(path: Path) -> dict[str, Any] | None:
    """The parsed config file; None when there is none (no credentials, not an error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise RegistryAuthError(f"registry credentials file {path} is unreadable: {type(err).__name__}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:  # its message gives the position only, never the content
        raise RegistryAuthError(
            f"registry credentials file {path} is not valid JSON (line {err.lineno}, column {err.colno})"
        ) from None
    if not isinstance(config, dict):
        raise RegistryAuthError(f"registry credentials file {path} is not a JSON object")
    return config


def _section(config: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = config.get(name) or {}
    if not isinstance(value, dict):
        raise RegistryAuthError(f"registry credentials file {path}: `{name}` is not an object")
    return value


def helper_for(config: dict[str, Any], registry: str, path: Path) -> str | None:
    """The credential helper that holds the registry's credentials: its `credHelpers` entry, else `credsStore`."""
    helpers = _section(config, "credHelpers", path)
    key = matching_key(list(helpers), registry)
    name = helpers.get(key) if key is not None else config.get("credsStore")
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise RegistryAuthError(f"registry credentials file {path}: invalid credential helper name for {registry}")
    return name


def from_auths(config: dict[str, Any], registry: str, path: Path) -> RegistryCredentials | None:
    """The registry's `auths` entry, or None when the file has none (or only an empty placeholder)."""
    auths = _section(config, "auths", path)
    key = matching_key(list(auths), registry)
    if key is None:
        return None
    entry = auths[key]
    where = f"registry credentials file {path}, entry {key!r}"
    if not isinstance(entry, dict):
        raise RegistryAuthError(f"{where} is not an object")
    username, password = entry.get("username") or "", entry.get("password") or ""
    token = entry.get("identitytoken") or ""
    if entry.get("auth"):
        try:
            decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryAuthError(f"{where}: `auth` is not base64 of user:password") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise RegistryAuthError(f"{where}: `auth` is not base64 of user:password")
    if not all(isinstance(value, str) for value in (username, password, token)):
        raise RegistryAuthError(f"{where}: credentials must be strings")
    if not token and not (username and password):
        return None
    return RegistryCredentials(
        server_address=server_address_for(registry),
        source=f"`auths` entry {key!r} of {path}",
        username=username,
        password=password,
        identity_token=token,
    )


async def from_helper(helper: str, registry: str, path: Path, timeout_s: float) -> RegistryCredentials | None:
    """Ask `docker-credential-HELPER get` (the server address on stdin, JSON on stdout); None when it
    holds nothing for the registry.
    """
    program = f"docker-credential-{helper}"
    where = f"credential helper {program} (from {path})"
    address = server_address_for(registry)
    try:
        proc = await asyncio.create_subprocess_exec(
            program,
            "get",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a helper that hangs is killed with its children
        )
    except FileNotFoundError:
        raise RegistryAuthError(f"{where} is not on PATH") from None
    except OSError as err:
        raise RegistryAuthError(f"{where} could not be run: {type(err).__name__}") from None
    try:
        async with asyncio.timeout(timeout_s):
            out, err_out = await proc.communicate(address.encode())
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise RegistryAuthError(f"{where} did not answer within {timeout_s:g}s") from None
    if proc.returncode != 0:
        said = (out or err_out).decode("utf-8", "replace").strip()
        if HELPER_NOT_FOUND in said.lower():
            return None
        # A failed helper returned no secret: what it said is its reason.
        raise RegistryAuthError(f"{where} failed (exit {proc.returncode}): {said[:200]}")
    try:
        answer = json.loads(out)
        username, secret = answer["Username"], answer["Secret"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RegistryAuthError(f"{where} did not print JSON with Username and Secret") from None
    if not isinstance(username, str) or not isinstance(secret, str) or not secret:
        raise RegistryAuthError(f"{where} printed no usable Username and Secret")
    source = f"{program} (from {path})"
    if username == HELPER_TOKEN_USERNAME:
        return RegistryCredentials(server_address=address, source=source, identity_token=secret)
    return RegistryCredentials(server_address=address, source=source, username=username, password=secret)


async def credentials_for(image: str, path: Path, helper_timeout_s: float) -> RegistryCredentials | None:
    """The credentials a pull of `image` sends, read now from `path`; None: pull without any.

    Raises RegistryAuthError when the file or its helper cannot give an answer.
    """
    registry = registry_of(image)
    config = await asyncio.to_thread(read_config, path)
    if config is None:
        return None
    helper = helper_for(config, registry, path)
    if helper is not None:
        return await from_helper(helper, registry, path, helper_timeout_s)
    return from_auths(config, registry, path)
