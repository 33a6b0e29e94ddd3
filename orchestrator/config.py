"""Cluster and sweep configuration (dataclasses checked by `schema`), plus the YAML loading every config file goes through.

A cluster file describes where jobs run (executor, partitions and their Slurm settings). A sweep file
describes what to run (which cases, on which partitions, in which environment) and points at a cluster
file. Both forbid unknown keys, so a typo is an error that names the key instead of a silent default.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError
from .schema import SchemaError, build, dump, field_names, spec
from .task import WORKLOADS

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLUSTER = REPO_ROOT / "clusters" / "local.yaml"
CLI_SOURCE = "<command line>"

# --------------------------------------------------------------------------------------------------
# YAML: YAML 1.2 core-schema scalars (as yq, which Megatron uses, reads them), duplicate keys refused.
# PyYAML alone follows YAML 1.1: `yes` is a bool, `1:30:00` is the integer 5400 and `1e-2` is a string.
# --------------------------------------------------------------------------------------------------

_MERGE_TAG = "tag:yaml.org,2002:merge"
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class YamlNumber(str):
    """A YAML int or float kept as its source text, so `1.0e-5` or `.01` reaches argv exactly as written."""

    @property
    def number(self) -> int | float:
        return parse_yaml_number(self)

    def __repr__(self) -> str:
        return f"YamlNumber({str.__repr__(self)})"


def parse_yaml_number(text: str) -> int | float:
    """The value of a YAML 1.2 core-schema int or float literal."""
    low = text.lower()
    if low.lstrip("+-") == ".inf":
        return -math.inf if low.startswith("-") else math.inf
    if low == ".nan":
        return math.nan
    if low.startswith(("0x", "0o")):
        return int(low, 0)
    try:
        return int(text, 10)
    except ValueError:
        return float(text)


# libyaml's parser when PyYAML was built with it (several times faster on 1000-case sweeps); the
# resolvers and constructors below are Python either way, so both parse identically.
_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml12_loader(name: str, number: Any) -> type[yaml.SafeLoader]:
    loader = type(name, (_BASE_LOADER,), {"yaml_implicit_resolvers": {}})
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
    )
    loader.add_implicit_resolver(
        "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
    )
    loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))
    loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))
    loader.add_implicit_resolver(_MERGE_TAG, re.compile(r"^(?:<<)$"), ["<"])
    for tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
        loader.add_constructor(tag, lambda self, node: number(self.construct_scalar(node)))
    return loader


_PlainLoader = _yaml12_loader("_PlainLoader", parse_yaml_number)
_RawNumberLoader = _yaml12_loader("_RawNumberLoader", YamlNumber)


def display_path(path: str | Path) -> str:
    """The path as the user should see it in a message: relative to the cwd when below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _check_duplicate_keys(node: yaml.Node, where: str, seen_nodes: set[int]) -> str | None:
    """Dotted key of the first duplicated mapping key under `node`, or None."""
    if id(node) in seen_nodes:
        return None
    seen_nodes.add(id(node))
    children: list[tuple[str, yaml.Node]] = []
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                children.append((where, value_node))
                continue
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "?"
            dotted = f"{where}.{key}" if where else key
            if isinstance(key_node, yaml.ScalarNode) and key in keys:
                return f"{dotted} (line {key_node.start_mark.line + 1})"
            keys.add(key)
            children.append((dotted, value_node))
    elif isinstance(node, yaml.SequenceNode):
        children = [(f"{where}[{i}]", item) for i, item in enumerate(node.value)]
    for child_where, child in children:
        found = _check_duplicate_keys(child, child_where, seen_nodes)
        if found:
            return found
    return None


def load_yaml(path: str | Path, *, raw_numbers: bool = False) -> Any:
    """Parse one YAML file; every problem becomes a ConfigError naming the file.

    raw_numbers=True keeps ints and floats as `YamlNumber` (their source text); otherwise they are
    int/float. Anchors, aliases and `<<` merge keys are expanded; a duplicated key is an error.
    """
    shown = display_path(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(shown, "<file>", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(shown, "<file>", f"cannot read: {exc}") from None
    loader = (_RawNumberLoader if raw_numbers else _PlainLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        duplicate = _check_duplicate_keys(node, "", set())
        if duplicate:
            key, _, line = duplicate.partition(" ")
            raise ConfigError(shown, key, f"duplicate key {line}")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(shown, where, f"invalid YAML: {problem}") from None
    finally:
        loader.dispose()


def _load_mapping(path: str | Path) -> dict[str, Any]:
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(display_path(path), "<top>", f"expected a mapping, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------------
# Slurm time limits
# --------------------------------------------------------------------------------------------------

_TIME_HELP = 'expected minutes or "[D-]HH:MM:SS"'


def time_to_minutes(value: str | int) -> int:
    """Minutes (rounded up) of a Slurm time limit: `30`, `"45:00"`, `"01:30:00"`, `"2-00:00:00"`, ..."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(_TIME_HELP)
    text = str(value).strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        if not day_text.isdigit():
            raise ValueError(_TIME_HELP)
        days = int(day_text)
        parts = text.split(":")  # D-H, D-H:M, D-H:M:S
        parts += ["0"] * (3 - len(parts))
    else:
        parts = text.split(":")  # M, M:S, H:M:S
        parts = {1: ["0", parts[0], "0"], 2: ["0", *parts]}.get(len(parts), parts)
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(_TIME_HELP)
    hours, minutes, seconds = (int(p) for p in parts)
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total <= 0:
        raise ValueError("time limit must be positive")
    return math.ceil(total / 60)


def _check_time(value: Any) -> Any:
    if value is None:
        return None
    time_to_minutes(value)
    return str(value)


# --------------------------------------------------------------------------------------------------
# The config dataclasses (validated by schema.build)
# --------------------------------------------------------------------------------------------------


def _mem_text(value: Any) -> Any:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _exclude_text(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


def _sbatch_text(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if isinstance(item, bool):
            item = "" if item else None
        if isinstance(item, int | float):
            item = str(item)
        if item is not None:
            out[key] = item
    return out


@dataclass
class PartitionConfig:
    """One partition of a cluster: what a node offers and how to ask Slurm for it."""

    platform: str = spec(min_length=1)  # picks the golden file: golden_values_<env>_<platform>.json
    ranks_per_node: int = spec(ge=1)  # GPUs, or CPU ranks, per node
    gpus_per_node: int = spec(0, ge=0)
    cpus_per_task: int = spec(1, ge=1)
    nodes: int = spec(1, ge=1)  # the most nodes one job may use
    slurm_partition: str | None = None  # Slurm's name when it differs from the key (e.g. "batch_h100")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time: str = spec("00:30:00", before=_check_time)
    mem: str | None = spec(None, before=_mem_text)
    executor: Literal["slurm", "local"] | None = None
    exclude: str | None = spec(None, before=_exclude_text)
    extra_sbatch: dict[str, str] = spec(default_factory=dict, before=_sbatch_text)

    @property
    def time_minutes(self) -> int:
        return time_to_minutes(self.time)


class _ConfigFile:
    """What the cluster and sweep configs share: validation from plain data, a JSON-ready dump, and the file
    they were loaded from (set by the loaders; None when built in code)."""

    _source: Path | None = None

    @classmethod
    def from_dict(cls, data: Any, path: str | Path = CLI_SOURCE) -> Any:
        return _validate(cls, data, path)

    def to_dict(self, *, json: bool = False) -> dict[str, Any]:
        return dump(self, json=json)

    @property
    def source(self) -> Path | None:
        """The file this config was loaded from, if any."""
        return self._source


def _default_local_ranks() -> int:
    return max(8, (os.cpu_count() or 1) * 4)


@dataclass
class ClusterConfig(_ConfigFile):
    """Where jobs run: `slurm` (submitit) or `local` (embedded executor), and the partitions offered."""

    name: str = spec(min_length=1)
    executor: Literal["slurm", "local"] = spec()
    partitions: dict[str, PartitionConfig] = spec(min_length=1)
    max_array_size: int | None = spec(None, ge=1)  # None: ask `scontrol show config`
    local_max_ranks: int = spec(default_factory=_default_local_ranks, ge=1)

    def partition(self, name: str) -> PartitionConfig:
        if name not in self.partitions:
            known = ", ".join(self.partitions)
            raise ConfigError(
                self._shown(), "partitions", f"unknown partition {name!r} (cluster has: {known})"
            )
        return self.partitions[name]

    def executor_for(self, partition: str) -> str:
        return self.partition(partition).executor or self.executor

    def slurm_partition(self, partition: str) -> str:
        return self.partition(partition).slurm_partition or partition

    def _shown(self) -> str:
        return display_path(self._source) if self._source else CLI_SOURCE


# Sweep fields that are paths resolved against the repository root when relative.
_REPO_PATHS = ("results_dir", "artifacts_dir", "data_dir", "megatron_lm")


def _non_empty_items(value: list[str] | None) -> list[str] | None:
    if value is not None and any(not item.strip() for item in value):
        raise ValueError("items must be non-empty strings")
    return value


@dataclass
class SweepConfig(_ConfigFile):
    """What to run: case selection, partitions, environment and where results go."""

    name: str = spec("sweep", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    cluster: Path = DEFAULT_CLUSTER
    cases: list[str] = spec(default_factory=lambda: ["*"], after=_non_empty_items)
    tags: list[str] = spec(default_factory=list, after=_non_empty_items)
    scope: str | None = None  # a recipe scope: only cases whose recipe lists it
    partitions: list[str] | None = spec(None, after=_non_empty_items)  # None: every partition of the cluster
    environment: Literal["dev", "lts"] = "dev"
    repeats: int | None = spec(None, ge=1)  # overrides a case's N_REPEAT
    case_roots: list[Path] = spec(default_factory=lambda: [Path("cases")])
    results_dir: Path = Path("results")
    artifacts_dir: Path = Path("artifacts")  # read-only store frozen-start loads from (CHECKPOINT_LOAD_PATH)
    data_dir: Path = Path("data")  # DATA_PATH
    allow_scripts: bool = False  # run a case's BEFORE_SCRIPT/AFTER_SCRIPT only when True
    megatron_lm: Path | None = None  # a Megatron-LM checkout to run instead of the embedded workload
    workload: Literal[WORKLOADS] | None = None  # type: ignore[valid-type]
    infra_retries: int = spec(1, ge=0)
    time: str | None = spec(None, before=_check_time)  # overrides every partition's time limit

    @property
    def time_minutes(self) -> int | None:
        return time_to_minutes(self.time) if self.time else None

    def resolved(
        self, cluster_base: Path, repo_root: Path = REPO_ROOT, keys: tuple[str, ...] | None = None
    ) -> SweepConfig:
        """Relative paths made absolute: `cluster` against cluster_base, the others against repo_root.

        keys limits this to those fields (default: every path field).
        """
        keys = keys if keys is not None else ("cluster", "case_roots", *_REPO_PATHS)
        update: dict[str, Any] = {}
        for key in keys:
            value = getattr(self, key, None)
            if key == "cluster":
                update[key] = _absolute(value, cluster_base)
            elif key == "case_roots":
                update[key] = [_absolute(root, repo_root) for root in value]
            elif key in _REPO_PATHS and value is not None:
                update[key] = _absolute(value, repo_root)
        out = dataclasses.replace(self, **update)
        out._source = self._source
        return out

    def with_overrides(self, base: Path | None = None, **overrides: Any) -> SweepConfig:
        """A copy with command-line overrides applied (None values are ignored).

        Relative paths given here are resolved against `base` (default: the current directory).
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        if not given:
            return self
        data = self.to_dict()
        data.update(given)
        out = _validate(SweepConfig, data, CLI_SOURCE)
        out._source = self._source
        cwd = base or Path.cwd()
        return out.resolved(cluster_base=cwd, repo_root=cwd, keys=tuple(given))

    def load_cluster(self) -> ClusterConfig:
        return load_cluster(self.cluster)

    def selected_partitions(self, cluster: ClusterConfig) -> list[str]:
        """The sweep's partitions, checked against the cluster (all of them when none are named)."""
        if self.partitions is None:
            return list(cluster.partitions)
        unknown = [p for p in self.partitions if p not in cluster.partitions]
        if unknown:
            shown = display_path(self._source) if self._source else CLI_SOURCE
            known = ", ".join(cluster.partitions)
            raise ConfigError(
                shown,
                "partitions",
                f"unknown partition(s) {', '.join(unknown)} (cluster {cluster.name} has: {known})",
            )
        return list(dict.fromkeys(self.partitions))


def _absolute(path: Path, base: Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


# --------------------------------------------------------------------------------------------------
# Validation errors -> one line
# --------------------------------------------------------------------------------------------------

_ALL_FIELDS = field_names(PartitionConfig, ClusterConfig, SweepConfig)


def config_error(path: str | Path, exc: SchemaError) -> ConfigError:
    """ONE-line ConfigError for a SchemaError: file, dotted key, message."""
    first = exc.issues[0]
    message = first.message
    if first.kind == "extra":
        close = difflib.get_close_matches(str(first.loc[-1]) if first.loc else "", _ALL_FIELDS, n=1)
        message = "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
    message = message[:1].lower() + message[1:]
    more = len(exc.issues) - 1
    if more:
        message += f" (+{more} more error{'s' if more > 1 else ''})"
    shown = path if path == CLI_SOURCE else display_path(path)
    return ConfigError(shown, first.key, " ".join(message.split()))


def _validate(model: type, data: Any, path: str | Path) -> Any:
    try:
        return build(model, data)
    except SchemaError as exc:
        raise config_error(path, exc) from None


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_cluster(path: str | Path) -> ClusterConfig:
    """Load a cluster file. `name` defaults to the file's stem."""
    path = Path(path)
    data = _load_mapping(path)
    data.setdefault("name", path.stem)
    cluster = _validate(ClusterConfig, data, path)
    cluster._source = path.resolve()
    return cluster


def load_sweep(path: str | Path, repo_root: Path = REPO_ROOT) -> SweepConfig:
    """Load a sweep file. `name` defaults to the file's stem; `cluster` is relative to the sweep file,
    the other paths to the repository root."""
    path = Path(path)
    data = _load_mapping(path)
    data.setdefault("name", path.stem)
    sweep = _validate(SweepConfig, data, path)
    sweep._source = path.resolve()
    return sweep.resolved(cluster_base=path.resolve().parent, repo_root=repo_root)


def sweep_from_args(
    sweep: str | Path | None = None, base: Path | None = None, **overrides: Any
) -> SweepConfig:
    """The sweep the CLI runs: a sweep file (if given) with flag overrides on top (None = not given)."""
    if sweep is not None:
        config = load_sweep(sweep)
    else:
        config = SweepConfig(name="adhoc").resolved(cluster_base=REPO_ROOT)
    return config.with_overrides(base=base, **overrides)
