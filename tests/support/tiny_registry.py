"""A registry of the test's own on loopback: just enough of the Docker Registry HTTP API v2 for a
`docker push` and a pull by tag or digest, in memory, plain HTTP (dockerd treats 127.0.0.0/8 as an
insecure registry by default). It gives offline test images what an import cannot: a registry digest
(`RepoDigests`), so that `name@sha256:…` references can run.

With `credentials` set it answers only requests with that HTTP basic login (401 with a Basic challenge
otherwise, as a private registry does); `put_image` stores a multi-layer image without a push; `trickle_s`
sends each blob in parts over that long (so that a pull reports its progress).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import platform
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
TRICKLE_PARTS = 4
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass
class TinyRegistry:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)  # (repo, ref) -> (body, type)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    credentials: tuple[str, str] | None = None
    refused: int = 0
    trickle_s: float = 0.0
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> TinyRegistry:
        app = web.Application(client_max_size=1 << 30, middlewares=[self._login])
        app.router.add_route("*", "/v2/", self._base)
        app.router.add_route("*", "/v2/{repo:.+}/blobs/uploads/", self._upload_start)
        app.router.add_route("*", "/v2/{repo:.+}/blobs/uploads/{uid}", self._upload)
        app.router.add_route("*", "/v2/{repo:.+}/blobs/{digest}", self._blob)
        app.router.add_route("*", "/v2/{repo:.+}/manifests/{ref}", self._manifest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def put_image(self, repo: str, tag: str, layers: list[bytes], config: dict[str, Any]) -> str:
        """Store an image of these layers (uncompressed tars, base first) and container `config` (an
        inspect's `Config`) under repo:tag; its manifest digest.
        """
        gzipped = [gzip.compress(layer, mtime=0) for layer in layers]
        image_config = json.dumps(
            {
                "architecture": docker_arch(),
                "os": "linux",
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": [sha256(layer) for layer in layers]},
            }
        ).encode()
        for blob in (image_config, *gzipped):
            self.blobs[sha256(blob)] = blob
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(image_config),
                    "digest": sha256(image_config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": len(blob),
                        "digest": sha256(blob),
                    }
                    for blob in gzipped
                ],
            }
        ).encode()
        digest = sha256(manifest)
        self.manifests[(repo, tag)] = self.manifests[(repo, digest)] = (manifest, MANIFEST_V2)
        return digest

    @web.middleware
    async def _login(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.credentials is not None:
            user, password = self.credentials
            expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                self.refused += 1
                self._note(request)
                return web.json_response(
                    {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                    status=401,
                    headers={**API_HEADERS, "WWW-Authenticate": 'Basic realm="tiny-registry"'},
                )
        return await handler(request)

    def _note(self, request: web.Request) -> None:
        self.requests.append(f"{request.method} {request.path}")

    async def _base(self, request: web.Request) -> web.Response:
        self._note(request)
        return web.json_response({}, headers=API_HEADERS)

    async def _upload_start(self, request: web.Request) -> web.Response:
        self._note(request)
        uid = uuid.uuid4().hex
        self.uploads[uid] = bytearray(await request.read())
        return self._upload_reply(request.match_info["repo"], uid, 202)

    def _upload_reply(self, repo: str, uid: str, status: int) -> web.Response:
        size = len(self.uploads[uid])
        headers = {
            **API_HEADERS,
            "Location": f"/v2/{repo}/blobs/uploads/{uid}",
            "Docker-Upload-UUID": uid,
            "Range": f"0-{max(size - 1, 0)}",
        }
        return web.Response(status=status, headers=headers)

    async def _upload(self, request: web.Request) -> web.Response:
        self._note(request)
        repo, uid = request.match_info["repo"], request.match_info["uid"]
        if uid not in self.uploads:
            return web.Response(status=404, headers=API_HEADERS)
        self.uploads[uid] += await request.read()
        if request.method == "PATCH":
            return self._upload_reply(repo, uid, 202)
        if request.method != "PUT":
            return self._upload_reply(repo, uid, 204)
        data = bytes(self.uploads.pop(uid))
        digest = sha256(data)
        if request.query.get("digest") != digest:
            return web.Response(status=400, text="digest mismatch", headers=API_HEADERS)
        self.blobs[digest] = data
        headers = {**API_HEADERS, "Location": f"/v2/{repo}/blobs/{digest}", "Docker-Content-Digest": digest}
        return web.Response(status=201, headers=headers)

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        digest = request.match_info["digest"]
        data = self.blobs.get(digest)
        if data is None:
            return web.Response(status=404, headers=API_HEADERS)
        headers = {**API_HEADERS, "Docker-Content-Digest": digest, "Content-Type": "application/octet-stream"}
        if not self.trickle_s or request.method == "HEAD":
            return web.Response(status=200, body=data, headers=headers)  # aiohttp sends no body to a HEAD
        response = web.StreamResponse(status=200, headers={**headers, "Content-Length": str(len(data))})
        await response.prepare(request)
        part = -(-len(data) // TRICKLE_PARTS)
        for offset in range(0, len(data), part):
            await response.write(data[offset : offset + part])
            await asyncio.sleep(self.trickle_s / TRICKLE_PARTS)
        await response.write_eof()
        return response

    async def _manifest(self, request: web.Request) -> web.Response:
        self._note(request)
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        if request.method == "PUT":
            body = await request.read()
            kind = request.headers.get("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
            digest = sha256(body)
            self.manifests[(repo, ref)] = self.manifests[(repo, digest)] = (body, kind)
            headers = {**API_HEADERS, "Location": f"/v2/{repo}/manifests/{digest}", "Docker-Content-Digest": digest}
            return web.Response(status=201, headers=headers)
        found = self.manifests.get((repo, ref))
        if found is None:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404, headers=API_HEADERS)
        body, kind = found
        digest = sha256(body)
        headers = {**API_HEADERS, "Docker-Content-Digest": digest, "Content-Type": kind}
        return web.Response(status=200, body=body, headers=headers)
