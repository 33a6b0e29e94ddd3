"""schema.build: dataclasses from YAML data, every problem named by its dotted key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from orchestrator.schema import SchemaError, build, dump, spec


@dataclass
class Inner:
    count: int = spec(ge=1)
    flag: bool = False


@dataclass
class Outer:
    name: str = spec(min_length=1, pattern=r"^[a-z]+$")
    kind: Literal["a", "b", "c"] = "a"
    inner: dict[str, Inner] = spec(default_factory=dict)
    paths: list[Path] = spec(default_factory=list)
    note: str | None = spec(None, before=lambda v: str(v) if isinstance(v, int) else v)
    _hidden: int = field(default=0, init=False)


def test_builds_nested_values_with_lax_scalars() -> None:
    out = build(Outer, {"name": "x", "kind": "c", "inner": {"k": {"count": "3", "flag": "yes"}},
                        "paths": ["a/b"], "note": 5})
    assert out == Outer(name="x", kind="c", inner={"k": Inner(count=3, flag=True)}, paths=[Path("a/b")], note="5")
    assert dump(out, json=True) == {"name": "x", "kind": "c", "inner": {"k": {"count": 3, "flag": True}},
                                    "paths": ["a/b"], "note": "5"}


@pytest.mark.parametrize(("data", "key", "fragment"), [
    ({"name": "x", "extra": 1}, "extra", "unknown key"),
    ({}, "name", "field required"),
    ({"name": "X"}, "name", "should match pattern"),
    ({"name": ""}, "name", "at least 1 character"),
    ({"name": "x", "kind": "d"}, "kind", "'a', 'b' or 'c'"),
    ({"name": "x", "inner": {"k": {"count": 0}}}, "inner.k.count", "greater than or equal to 1"),
    ({"name": "x", "inner": {"k": {"count": True}}}, "inner.k.count", "valid integer"),
    ({"name": "x", "inner": {"k": {"count": 1, "flag": "maybe"}}}, "inner.k.flag", "valid boolean"),
    ({"name": "x", "inner": []}, "inner", "valid dictionary"),
    ({"name": "x", "paths": "a"}, "paths", "valid list"),
    ({"name": "x", "paths": [1]}, "paths.0", "valid path"),
    ({"name": 3}, "name", "valid string"),
], ids=lambda v: v if isinstance(v, str) else None)  # fmt: skip
def test_first_problem_names_its_key(data: dict, key: str, fragment: str) -> None:
    with pytest.raises(SchemaError) as info:
        build(Outer, data)
    assert info.value.issues[0].key == key and fragment in info.value.issues[0].message


def test_every_problem_is_kept() -> None:
    with pytest.raises(SchemaError) as info:
        build(Outer, {"kind": "z", "bogus": 1})
    assert [issue.key for issue in info.value.issues] == ["bogus", "name", "kind"]
