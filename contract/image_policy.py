"""Which engine images may run: `RTJOBS_IMAGE_ALLOW` patterns and `RTJOBS_IMAGE_REQUIRE_DIGEST`
(docs/engines.md, "Which images may run").

Pure functions, no I/O: the settings validate the patterns at start-up, and `ensure_engine_running`
decides before any Docker call. References and patterns are compared normalised, as Docker resolves
names (`busybox` is `docker.io/library/busybox:latest`), so a name on another registry never passes
for an allowed one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

from contract.models import IMAGE_REF_PATTERN

_REF_RE = re.compile(IMAGE_REF_PATTERN)
_DIGEST_RE = re.compile(r"(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
_TAG_GLOB_RE = re.compile(r"[A-Za-z0-9_.*-]{1,128}")
# A registry alone, as Docker tells one from a path component: it has a `.` or a port, or is localhost.
_REGISTRY_RE = re.compile(r"localhost(?::[0-9]+)?|[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)+(?::[0-9]+)?|[a-zA-Z0-9-]+:[0-9]+")
DOCKER_HUB = "docker.io"


class ImagePolicyError(ValueError):
    """An `RTJOBS_IMAGE_ALLOW` entry that is not a pattern of the syntax above."""


@dataclass(frozen=True)
class ImageName:
    """A reference, normalised: `repository` includes the registry (`docker.io/library/busybox`)."""

    repository: str
    tag: str | None  # None only when a digest is given without a tag
    digest: str | None

    def __str__(self) -> str:
        text = self.repository
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _normalise_repository(name: str, domain: str | None) -> str:
    if domain is None:
        return f"{DOCKER_HUB}/{name}" if "/" in name else f"{DOCKER_HUB}/library/{name}"
    if domain == "index.docker.io":
        name = DOCKER_HUB + name[len(domain) :]
    if name.startswith(f"{DOCKER_HUB}/") and name.count("/") == 1:
        name = f"{DOCKER_HUB}/library/{name[len(DOCKER_HUB) + 1 :]}"
    return name


def parse_image(ref: str) -> ImageName | None:
    """The normalised name of a reference of the contract's grammar, or None when it is not one."""
    match = _REF_RE.fullmatch(ref)
    if match is None:
        return None
    name = match["name"]
    rest = ref[len(name) :]
    rest, _, digest = rest.partition("@")
    tag = rest[1:] if rest.startswith(":") else None
    if tag is None and not digest:
        tag = "latest"
    return ImageName(_normalise_repository(name, match["domain"]), tag, digest or None)


@dataclass(frozen=True)
class ImagePattern:
    """One parsed `RTJOBS_IMAGE_ALLOW` entry."""

    text: str
    repository: str  # normalised; for a prefix pattern, the path before `/*`; "" for `*`
    prefix: bool  # REPO/* (any repository under `repository`)
    tag_glob: str | None  # REPO:GLOB (None: no tag restriction)
    digest: str | None  # "*" any digest, or one exact digest; None: no digest restriction

    def matches(self, image: ImageName) -> bool:
        if self.repository:
            if self.prefix:
                if not image.repository.startswith(self.repository + "/"):
                    return False
            elif image.repository != self.repository:
                return False
        if self.tag_glob is not None:
            return image.digest is None and image.tag is not None and fnmatchcase(image.tag, self.tag_glob)
        if self.digest is not None:
            return image.digest is not None and self.digest in ("*", image.digest)
        return True


def parse_pattern(text: str) -> ImagePattern:
    """One `RTJOBS_IMAGE_ALLOW` entry: `REPO` (or `REPO:*`), `REPO:GLOB` (tags; never a digest reference),
    `REPO@*`, `REPO@sha256:HEX`, `PREFIX/*` (any depth; may take `:GLOB` or `@*`) or `*` (any image).
    REPO and PREFIX are normalised like references; `*` never stands for part of a path component.
    """
    entry = text.strip()
    if entry == "*":
        return ImagePattern(entry, "", True, None, None)
    body, at, digest = entry.partition("@")
    tag_glob: str | None = None
    last = body.rsplit("/", 1)[-1]
    if ":" in last:
        body, _, tag_glob = body.rpartition(":")
        if tag_glob == "*":
            tag_glob = None
        elif not _TAG_GLOB_RE.fullmatch(tag_glob):
            raise ImagePolicyError(f"{entry!r}: bad tag pattern {tag_glob!r}")
    if at and tag_glob is not None:
        raise ImagePolicyError(f"{entry!r}: give a tag pattern or a digest, not both")
    if at and digest != "*" and not _DIGEST_RE.fullmatch(digest):
        raise ImagePolicyError(f"{entry!r}: {digest!r} is neither `*` nor a digest (sha256:<64 hex>)")
    prefix = body.endswith("/*")
    if prefix:
        body = body[:-2]
    if prefix and _REGISTRY_RE.fullmatch(body):
        # `registry.example.com/*`: everything from that registry.
        registry = DOCKER_HUB if body == "index.docker.io" else body
        return ImagePattern(entry, registry, True, tag_glob, digest if at else None)
    match = _REF_RE.fullmatch(body)
    if match is None or match["name"] != body:
        raise ImagePolicyError(
            f"{entry!r}: not a repository pattern (REPO, REPO:TAG-GLOB, REPO@*, REPO@sha256:…, PREFIX/*, or *)"
        )
    if prefix and match["domain"] is None:
        repository = f"{DOCKER_HUB}/{body}"  # `galaxy/*`: under Docker Hub's galaxy (no `library/`)
    elif prefix:
        domain = match["domain"]
        repository = (DOCKER_HUB if domain == "index.docker.io" else domain) + body[len(domain) :]
    else:
        repository = _normalise_repository(body, match["domain"])
    return ImagePattern(entry, repository, prefix, tag_glob, digest if at else None)


def parse_allow(text: str) -> tuple[ImagePattern, ...]:
    """The comma-separated list; empty entries are skipped (a trailing comma is harmless)."""
    return tuple(parse_pattern(part) for part in text.split(",") if part.strip())


def default_allow(engine_image: str) -> tuple[ImagePattern, ...]:
    """`RTJOBS_IMAGE_ALLOW` unset: the repository of RTJOBS_ENGINE_IMAGE, any tag or digest."""
    image = parse_image(engine_image)
    if image is None:
        return ()
    return (ImagePattern(image.repository, image.repository, False, None, None),)


def refusal(ref: str, allow: tuple[ImagePattern, ...], *, require_digest: bool) -> str | None:
    """Why `ref` may not run, in one line, or None when it may. `ref` must be of the grammar."""
    image = parse_image(ref)
    if image is None:
        return f"image {ref[:80]!r} is not a valid image reference"
    if require_digest and image.digest is None:
        return (
            f"image {ref[:200]!r} is not allowed: RTJOBS_IMAGE_REQUIRE_DIGEST=true runs only references "
            "pinned by digest (name@sha256:…)"
        )
    if any(pattern.matches(image) for pattern in allow):
        return None
    allowed = ", ".join(p.text for p in allow) or "nothing"
    return f"image {ref[:200]!r} ({image}) is not allowed by RTJOBS_IMAGE_ALLOW (allowed: {allowed[:400]})"
