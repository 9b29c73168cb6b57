"""Job inputs for the bad-input tests, written from the contract text (not imported from contract.models):
hypothesis strategies whose every generated field carries whether it is valid, and the cases made of them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from pydantic import TypeAdapter

from contract.models import MAX_STOP_TIMEOUT_S, ImageRef

START, STOP = "StartRuntimeJob", "StopRuntimeJob"


ImageRefAdapter: TypeAdapter[str] = TypeAdapter(ImageRef)


# --- the rules, written from the contract text (not imported from contract.models) ---------------

GAME_ID_RULE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,49}[a-z0-9])?")


def usable_game_id(payload: Any) -> str | None:
    """The game id a run publishes for: a string field that is not blank (contract section 2)."""
    if isinstance(payload, dict):
        value = payload.get("game_id")
        if isinstance(value, str) and value.strip():
            return value
    return None


# --- strategies: each generated field carries whether it is valid ------------------------------


@dataclass(frozen=True)
class Field:
    """A generated input field: its JSON value, or absent; and whether the contract accepts it."""

    value: Any
    valid: bool
    present: bool = True


ABSENT = Field(None, valid=True, present=False)


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()


_json_values = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)


_non_strings: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), _json_scalars, max_size=2),
)


def _huge(min_len: int, max_len: int) -> st.SearchStrategy[str]:
    """Long strings made by repetition: hypothesis' own data budget would cap drawn text."""
    return st.builds(lambda unit, n: (unit * n)[:n], st.text(min_size=1, max_size=4), st.integers(min_len, max_len))


valid_game_ids = st.from_regex(GAME_ID_RULE, fullmatch=True)


invalid_game_ids = st.one_of(
    st.text(min_size=1).filter(lambda s: s.strip() != "" and not GAME_ID_RULE.fullmatch(s)),
    valid_game_ids.map(str.upper).filter(lambda s: s != s.lower()),  # uppercase
    st.sampled_from(["../etc/passwd", "a/b", "/abs", "g-1/../../x", "C:\\games\\1", "g-1%2F..", "~root"]),  # path-like
    st.sampled_from(["-g", "g-", "g_1", "g.1", "g 1", " g-1", "g-1\n", "g\x00", "g\u200b1", "\uff47-1", "ǵ-1"]),
    st.just("a" * 52),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc"]), min_size=1).filter(lambda s: s.strip() != ""),
    _huge(52, 20_000),
)


unusable_game_ids = st.one_of(
    st.just(ABSENT), (_non_strings | st.sampled_from(["", " ", "\t\n", "\u2003"])).map(lambda v: Field(v, False))
)


game_ids = st.one_of(
    valid_game_ids.map(lambda v: Field(v, True)),
    invalid_game_ids.map(lambda v: Field(v, False)),
    unusable_game_ids,
)


_path = st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,6})?", fullmatch=True)


valid_images = st.builds(
    lambda domain, parts, tag, digest: domain + "/".join(parts) + tag + digest,
    st.sampled_from(["", "localhost:5000/", "registry.example.org/", "reg-1.example:443/"]),
    st.lists(_path, min_size=1, max_size=3),
    st.one_of(st.just(""), st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
    st.one_of(st.just(""), st.from_regex(r"@sha256:[0-9a-f]{64}", fullmatch=True)),
)


invalid_images = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            "Not A Ref",
            "UPPER:x",
            "img::bad",
            "img:",
            ":tag",
            "/img",
            "img/",
            "a//b",
            "http://reg/img",
            "img@sha256:abc",
            "img:-tag",
            "../../etc/passwd",
            "img\n",
            "img:" + "t" * 129,
            "a" * 513,
        ]
    ),
    valid_images.map(lambda s: s + " "),
    st.tuples(valid_images, st.characters(codec="utf-8", min_codepoint=0x80) | st.sampled_from(" \t\n\x00\x7f")).map(
        lambda t: f"{t[0]}:tag{t[1]}" if "@" not in t[0] else t[0] + t[1]
    ),  # a tag (or digest) with a character outside Docker's ASCII grammar
    _huge(513, 20_000),
    _non_strings.filter(lambda v: v is not None),
)


images = st.one_of(
    st.just(ABSENT),
    st.just(Field(None, True)),  # null means "not given": the worker's default image
    valid_images.map(lambda v: Field(v, True)),
    invalid_images.map(lambda v: Field(v, False)),
)


stop_timeouts = st.one_of(
    st.just(ABSENT),
    st.just(Field(None, True)),
    st.integers(0, MAX_STOP_TIMEOUT_S).map(lambda v: Field(v, True)),
    st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_STOP_TIMEOUT_S + 1),
        st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
        st.text(max_size=6),
        st.booleans(),
        st.lists(st.integers(0, 10), max_size=2),
    ).map(lambda v: Field(v, False)),
)


_extra_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp", "Zs"]), min_size=1, max_size=20
)


@dataclass(frozen=True)
class Case:
    """One job: the workflow, its raw JSON, and what the contract says must come of it."""

    workflow: str
    payload: Any
    raw: bytes
    game_id: str | None  # None: no usable game id, the run must fail
    bad_fields: tuple[str, ...]  # empty: valid input, the job must succeed

    def __str__(self) -> str:
        text = self.raw.decode("utf-8", "replace")
        return f"{self.workflow} {text[:200]}{'…' if len(text) > 200 else ''}"


def make_case(workflow: str, payload: Any, ensure_ascii: bool = False) -> Case:
    """The expectation of a whole payload, from the validity of each field the strategies drew."""
    raw = json.dumps(payload, ensure_ascii=ensure_ascii).encode()
    game_id = usable_game_id(payload)
    bad: list[str] = []
    if isinstance(payload, dict) and game_id is not None:
        if not GAME_ID_RULE.fullmatch(game_id):
            bad.append("game_id")
        known = {"game_id", "image"} if workflow == START else {"game_id", "stop_timeout_s"}
        bad += [name for name in payload if name not in known]
    return Case(workflow, payload, raw, game_id, tuple(bad))


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A start or stop job input: usually an object of drawn fields, sometimes not an object at all."""
    workflow = draw(st.sampled_from([START, STOP]))
    ensure_ascii = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        return make_case(workflow, draw(_json_values.filter(lambda v: not isinstance(v, dict))), ensure_ascii)
    game = draw(game_ids)
    second = draw(images if workflow == START else stop_timeouts)
    name = "image" if workflow == START else "stop_timeout_s"
    fields: dict[str, Any] = {}
    if game.present:
        fields["game_id"] = game.value
    if second.present:
        fields[name] = second.value
    for extra in draw(st.lists(_extra_names.filter(lambda n: n not in ("game_id", name)), max_size=2, unique=True)):
        fields[extra] = draw(_json_values | _huge(1, 50_000))
    order = draw(st.permutations(list(fields)))
    payload = {key: fields[key] for key in order}
    case = make_case(workflow, payload, ensure_ascii)
    if case.game_id is not None and not second.valid:
        case = Case(case.workflow, case.payload, case.raw, case.game_id, (*case.bad_fields, name))
    return case
