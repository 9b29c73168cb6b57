"""The documentation agrees with the code: the generated pages and schemas are current, every `RTJOBS_*` name
the docs use is a setting, and no link leaves the repository except to the public upstream docs.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from contract.models import ErrorCode, JobResult
from contract.settings import Settings
from scripts.gen_docs import ROOT, job_result_schema, outputs, start_input_schema, stop_input_schema, variable_names

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# Markdown links and images: [text](target) or ![alt](target "title").
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SETTING_NAME = re.compile(r"\bRTJOBS_[A-Z0-9_]*[A-Z0-9]\b")
# The public upstream documentation a page may link to.
UPSTREAM_HOSTS = {
    "docs.temporal.io",
    "github.com",  # only temporalio/…, checked below
    "docs.docker.com",
    "redis.io",
}


def _names() -> set[str]:
    return {env for name, field in Settings.model_fields.items() for env in variable_names(name, field)}


@pytest.mark.parametrize("path", sorted(outputs()), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_files_are_what_the_generator_writes_now(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run make docs"
    assert path.read_text() == outputs()[path], f"{path.relative_to(ROOT)} is stale: run make docs"


def test_every_setting_and_alias_is_on_the_configuration_page() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        for env in variable_names(name, field):
            assert f"`{env}`" in page, env


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_rtjobs_name_in_the_docs_is_a_setting(page: Path) -> None:
    unknown = sorted(set(SETTING_NAME.findall(page.read_text())) - _names())
    assert not unknown, f"{page.relative_to(ROOT)} names settings that do not exist: {unknown}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_in_the_repository_and_their_targets_exist(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        parts = urlsplit(target)
        if parts.scheme:
            assert parts.scheme == "https" and parts.hostname in UPSTREAM_HOSTS, f"{page.name}: {target}"
            if parts.hostname == "github.com":
                assert parts.path.startswith("/temporalio/"), f"{page.name}: {target}"
            continue
        file = (page.parent / parts.path).resolve() if parts.path else page
        assert file.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert file.exists(), f"{page.name}: {target} does not exist"
        if parts.fragment and file.suffix == ".md":
            assert parts.fragment in _anchors(file), f"{page.name}: {target}: no such heading"


def test_the_readme_stays_a_readme() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    long = [n for n, line in enumerate(lines, 1) if len(line) > 120]
    assert not long, f"README.md lines over 120 characters: {long}"


def test_input_schemas_match_the_workflows() -> None:
    """Input schemas accept valid inputs and refuse what the workflow refuses."""
    start = jsonschema.Draft202012Validator(start_input_schema())
    assert start.is_valid({"game_id": "g-1"})
    assert start.is_valid({"game_id": "g-1", "image": "registry.example.com/team/engine:1.4"})
    assert not start.is_valid({"game_id": "G_1"})
    assert not start.is_valid({"game_id": "g-1", "image": "Not An Image"})
    assert not start.is_valid({"game_id": "g-1", "extra": 1})
    stop = jsonschema.Draft202012Validator(stop_input_schema())
    assert stop.is_valid({"game_id": "g-1", "stop_timeout_s": 10})
    assert not stop.is_valid({"game_id": "g-1", "stop_timeout_s": 3601})
    assert not stop.is_valid({"game_id": "-g"})


def test_the_result_schema_holds_every_result_the_workflows_return() -> None:
    validator = jsonschema.Draft202012Validator(job_result_schema())
    results = [
        JobResult.fresh_success("g-1", "abc"),
        JobResult.replay("g-1"),
        *[JobResult.failure("g-1", code, "why") for code in ErrorCode if code is not ErrorCode.REPLAY_NO_OP],
    ]
    for result in results:
        validator.validate(result.model_dump(mode="json"))
    assert not validator.is_valid({**results[0].model_dump(mode="json"), "error_code": "boom"})
    assert not validator.is_valid({"game_id": "g-1", "outcome": "success"})  # all six fields, always
