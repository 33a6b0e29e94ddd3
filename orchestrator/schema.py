"""Plain dataclasses built from YAML/JSON data, with every problem reported by dotted key.

The config files (cluster, sweep) are validated here rather than with pydantic: importing pydantic and
building its models took ~0.1 s, a third of an `orchestrator run` on ten cases before the first sbatch.
What is supported is what the config files use: str, int, bool, Path, `X | None`, Literal, list[...],
dict[str, ...] and nested dataclasses, plus the constraints given by `spec()`. Unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal

_TRUE = {"true", "yes", "on", "1", "y", "t"}
_FALSE = {"false", "no", "off", "0", "n", "f"}
_INT_TEXT = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class Issue:
    loc: tuple[str | int, ...]
    kind: str  # "missing", "extra" or "invalid"
    message: str

    @property
    def key(self) -> str:
        return ".".join(str(part) for part in self.loc) or "<top>"


class SchemaError(ValueError):
    """Every problem found in one input, in the order met (the first one is usually what to fix)."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{issue.key}: {issue.message}" for issue in issues))


def spec(
    default: Any = MISSING,
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    ge: int | None = None,
    min_length: int | None = None,
    pattern: str | None = None,
    before: Callable[[Any], Any] | None = None,
    after: Callable[[Any], Any] | None = None,
) -> Any:
    """A dataclass field with constraints. `before` converts the raw input (may raise ValueError),
    `after` checks the converted value (may raise ValueError)."""
    metadata = {"ge": ge, "min_length": min_length, "pattern": re.compile(pattern) if pattern else None,
                "before": before, "after": after}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def build(cls: type, data: Any) -> Any:
    """An instance of dataclass `cls` from `data`; raises SchemaError listing every problem."""
    issues: list[Issue] = []
    value = _convert(cls, data, (), issues)
    if issues:
        raise SchemaError(issues)
    return value


def dump(obj: Any, *, json: bool = False) -> Any:
    """A dataclass (and everything in it) as plain dicts and lists; with json=True paths become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name), json=json) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, Mapping):
        return {key: dump(value, json=json) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [dump(value, json=json) for value in obj]
    if json and isinstance(obj, Path):
        return str(obj)
    return obj


def field_names(*classes: type) -> list[str]:
    return sorted({f.name for cls in classes for f in dataclasses.fields(cls) if f.init})


# ----------------------------------------------------------------------------------------------- internals

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(tp: Any, value: Any, loc: tuple, issues: list[Issue]) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [arg for arg in args if arg is not type(None)]
        return _convert(inner[0], value, loc, issues)
    if origin is Literal:
        if any(value == choice and type(value) is type(choice) for choice in args):
            return value
        return _fail(issues, loc, f"Input should be {_choices(args)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            return _fail(issues, loc, "Input should be a valid list")
        return [_convert(args[0], item, (*loc, index), issues) for index, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            return _fail(issues, loc, "Input should be a valid dictionary")
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                _fail(issues, (*loc, str(key)), "Keys should be strings")
                continue
            out[key] = _convert(args[1], item, (*loc, key), issues)
        return out
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, loc, issues)
    return _scalar(tp, value, loc, issues)


def _scalar(tp: Any, value: Any, loc: tuple, issues: list[Issue]) -> Any:
    if tp is Any:
        return value
    if tp is str:
        return str(value) if isinstance(value, str) else _fail(issues, loc, "Input should be a valid string")
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, str | int) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        return _fail(issues, loc, "Input should be a valid boolean")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _INT_TEXT.match(value.strip()):
            return int(value)
        return _fail(issues, loc, "Input should be a valid integer")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        return _fail(issues, loc, "Input should be a valid path")
    raise TypeError(f"schema: unsupported field type {tp!r}")


def _build_dataclass(cls: type, data: Any, loc: tuple, issues: list[Issue]) -> Any:
    if not isinstance(data, Mapping):
        return _fail(issues, loc, "Input should be a valid dictionary")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    before = len(issues)
    for key in data:
        if key not in fields:
            issues.append(Issue((*loc, str(key)), "extra", "unknown key"))
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is MISSING and field.default_factory is MISSING:
                issues.append(Issue((*loc, name), "missing", "field required"))
            continue
        kwargs[name] = _field_value(field, hints[name], data[name], (*loc, name), issues)
    return cls(**kwargs) if len(issues) == before else None


def _field_value(field: dataclasses.Field, tp: Any, raw: Any, loc: tuple, issues: list[Issue]) -> Any:
    meta = field.metadata
    before = len(issues)
    try:
        value = meta["before"](raw) if meta.get("before") else raw
    except ValueError as error:
        return _fail(issues, loc, str(error))
    value = _convert(tp, value, loc, issues)
    if len(issues) > before or value is None:
        return value
    problem = _constraint_problem(meta, value)
    if problem:
        return _fail(issues, loc, problem)
    if meta.get("after"):
        try:
            value = meta["after"](value)
        except ValueError as error:
            return _fail(issues, loc, str(error))
    return value


def _constraint_problem(meta: Mapping[str, Any], value: Any) -> str | None:
    ge, min_length, pattern = meta.get("ge"), meta.get("min_length"), meta.get("pattern")
    if ge is not None and value < ge:
        return f"Input should be greater than or equal to {ge}"
    if min_length is not None and len(value) < min_length:
        if isinstance(value, str):
            return f"String should have at least {min_length} character{'s' * (min_length != 1)}"
        kind = "Dictionary" if isinstance(value, Mapping) else "List"
        return f"{kind} should have at least {min_length} item{'s' * (min_length != 1)}, not {len(value)}"
    if pattern is not None and not pattern.search(value):
        return f"String should match pattern '{pattern.pattern}'"
    return None


def _choices(args: tuple) -> str:
    shown = [repr(arg) for arg in args]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def _fail(issues: list[Issue], loc: tuple, message: str) -> None:
    issues.append(Issue(loc, "invalid", message))
    return None
