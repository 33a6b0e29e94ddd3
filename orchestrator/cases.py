"""Test cases: Megatron-LM's `model_config.yaml` folders, their flag->argv rendering, discovery and recipes.

A case is one folder `<root>/<model>/<case>/` holding `model_config.yaml` (and golden files). The schema
and the flag rendering are Megatron-LM's (`tests/functional_tests/shell_test_utils/_run_training.sh`), except
that we build argv lists and never a shell string: a value is never evaluated by a shell.
"""

from __future__ import annotations

import difflib
import math
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .config import YamlNumber, display_path, load_yaml, time_to_minutes
from .errors import ConfigError

CONFIG_NAME = "model_config.yaml"
RECIPES_NAME = "recipes.yaml"  # kept next to the model folders: cases/recipes.yaml

TEST_TYPES = ("regular", "ckpt-resume", "frozen-start", "frozen-resume", "release", "checkpoint-consistency")
RESUME_TEST_TYPES = ("ckpt-resume", "frozen-resume")
MODES = ("pretraining", "inference", "rl")
LAUNCHERS = ("torchrun", "ft_launcher")
TEST_EVALUATIONS = ("pass", "xpass")
ENVIRONMENTS = ("dev", "lts")
DEFAULT_METRICS = ("lm loss", "num-zeros")
# The placeholders Megatron's recipes fill in (run_ci_test.sh's ARGUMENTS); others stay literal.
KNOWN_PLACEHOLDERS = (
    "OUTPUT_PATH",
    "TENSORBOARD_PATH",
    "CHECKPOINT_SAVE_PATH",
    "CHECKPOINT_LOAD_PATH",
    "DATA_PATH",
    "DATA_CACHE_PATH",
    "INFERENCE_OUTPUT_PATH",
)

_MAPPING_KEYS = ("MODEL_ENV_VARS", "THROUGHPUT_TEST_PARAMS")
_TOP_LEVEL_KEYS = (
    "ENV_VARS",
    "MODEL_ARGS",
    "BASE_MODEL_ARGS",
    "TEST_TYPE",
    "MODE",
    "METRICS",
    "LAUNCHER",
    "TEST_EVALUATION",
    "BEFORE_SCRIPT",
    "AFTER_SCRIPT",
    "N_REPEAT",
    "TAGS",
    *_MAPPING_KEYS,
)
_RUN_KEY_RE = re.compile(r"MODEL_ARGS_(\d+)")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Flags whose value must be a positive integer: we compute with them.
_INT_FLAGS = (
    "--train-iters",
    "--tensor-model-parallel-size",
    "--pipeline-model-parallel-size",
    "--context-parallel-size",
    "--expert-model-parallel-size",
    "--expert-tensor-parallel-size",
)

# --------------------------------------------------------------------------------------------------
# Placeholders and flag -> argv (the rules of _run_training.sh)
# --------------------------------------------------------------------------------------------------

# envsubst syntax: ${NAME} and $NAME. Anything else ($(...), ${X:-d}, $1) is left alone.
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_PAREN_RE = re.compile(r"\([^)]+\)")
_BRACKET_RE = re.compile(r"\[[^\]]+\]")


def substitute(text: str, placeholders: Mapping[str, str]) -> str:
    """Fill `${VAR}` and `$VAR` from placeholders; names not in it stay literal (envsubst semantics)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return placeholders.get(name, match.group(0))

    return _VAR_RE.sub(replace, text)


def placeholder_names(text: str) -> list[str]:
    return [m.group(1) or m.group(2) for m in _VAR_RE.finditer(text)]


def scalar_text(value: Any) -> str:
    """A YAML scalar as yq prints it: `true`/`false`, numbers as written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def render_flag(flag: str, value: Any, placeholders: Mapping[str, str] | None = None) -> list[str]:
    """argv for one `--flag: value` entry.

    - `true` (or the text "true") -> bare `--flag`; `false` -> `--flag false`
    - an empty value -> nothing (Megatron's yq filter drops the entry)
    - a YAML list -> the flag followed by each item
    - text `[a b c]` -> brackets dropped, split on whitespace: `--flag a b c`
    - anything else, `( ... )`, spaces, `|`, `$(...)`, `;`, newlines included -> ONE literal argument
    """
    placeholders = placeholders or {}
    if isinstance(value, list):
        return [flag, *(substitute(scalar_text(item), placeholders) for item in value)]
    text = substitute(scalar_text(value), placeholders).strip()
    if text == "":
        return []
    if text == "true":
        return [flag]
    if _BRACKET_RE.fullmatch(text):
        return [flag, *text[1:-1].split()]
    return [flag, text]


def render_argv(model_args: Mapping[str, Any], placeholders: Mapping[str, str] | None = None) -> list[str]:
    """A MODEL_ARGS mapping as an argv list, in file order."""
    argv: list[str] = []
    for flag, value in model_args.items():
        argv.extend(render_flag(flag, value, placeholders))
    return argv


def render_env(env_vars: Mapping[str, str], placeholders: Mapping[str, str] | None = None) -> dict[str, str]:
    """ENV_VARS with placeholders filled (Megatron's envsubst runs over the whole file)."""
    placeholders = placeholders or {}
    return {key: substitute(value, placeholders) for key, value in env_vars.items()}


def shell_quote_argv(argv: Iterable[str]) -> str:
    """argv as one shell-safe line, for generated scripts."""
    return shlex.join(list(argv))


# --------------------------------------------------------------------------------------------------
# Case
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One test case folder, validated. Numbers in model_args keep their source text (`YamlNumber`)."""

    model: str  # parent folder name, e.g. "gpt"
    name: str  # folder name
    path: Path  # the case folder (absolute)
    config_path: Path
    env_vars: dict[str, str] = field(compare=False)
    model_args: dict[str, Any] = field(compare=False)
    # MODEL_ARGS_<n> by n (n >= 2): run n uses them instead of MODEL_ARGS.
    model_args_by_run: dict[int, dict[str, Any]] = field(default_factory=dict, compare=False)
    test_type: str = "regular"
    mode: str = "pretraining"
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS), compare=False)
    metrics_declared: bool = False
    launcher: str = "torchrun"
    test_evaluation: str = "pass"
    n_repeat: int | None = None
    before_script: str | None = None
    after_script: str | None = None
    tags: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.name}"

    @property
    def train_iters(self) -> int | None:
        return _int_flag(self.model_args, "--train-iters")

    @property
    def is_resume(self) -> bool:
        return self.test_type in RESUME_TEST_TYPES

    @property
    def n_phases(self) -> int:
        return 2 if self.is_resume else 1

    @property
    def nondeterministic(self) -> bool:
        env = self.env_vars
        # NON_DETERMINSTIC_RESULTS: Megatron's spelling (sic).
        return (
            env.get("NVTE_ALLOW_NONDETERMINISTIC_ALGO") == "1" or env.get("NON_DETERMINSTIC_RESULTS") == "1"
        )

    @property
    def tp(self) -> int:
        return _int_flag(self.model_args, "--tensor-model-parallel-size") or 1

    @property
    def pp(self) -> int:
        return _int_flag(self.model_args, "--pipeline-model-parallel-size") or 1

    @property
    def cp(self) -> int:
        return _int_flag(self.model_args, "--context-parallel-size") or 1

    @property
    def ep(self) -> int:
        return _int_flag(self.model_args, "--expert-model-parallel-size") or 1

    @property
    def etp(self) -> int:
        return _int_flag(self.model_args, "--expert-tensor-parallel-size") or self.tp

    @property
    def min_world_size(self) -> int:
        """Smallest world size every run's parallel layout fits: a multiple of tp*pp*cp (and of the
        expert layout etp*ep*pp, which must also divide the world)."""
        size = 1
        for args in self.all_model_args():
            tp = _int_flag(args, "--tensor-model-parallel-size") or 1
            pp = _int_flag(args, "--pipeline-model-parallel-size") or 1
            cp = _int_flag(args, "--context-parallel-size") or 1
            ep = _int_flag(args, "--expert-model-parallel-size") or 1
            etp = _int_flag(args, "--expert-tensor-parallel-size") or tp
            size = math.lcm(size, tp * pp * cp, etp * ep * pp)
        return size

    def all_model_args(self) -> list[dict[str, Any]]:
        return [self.model_args, *(self.model_args_by_run[n] for n in sorted(self.model_args_by_run))]

    def model_args_for_run(self, run: int) -> dict[str, Any]:
        """MODEL_ARGS_<run> if the file has it (Megatron uses MODEL_ARGS_2 for the resumed run), else MODEL_ARGS."""
        return self.model_args_by_run.get(run, self.model_args) if run >= 2 else self.model_args

    def argv(self, run: int = 1, placeholders: Mapping[str, str] | None = None) -> list[str]:
        return render_argv(self.model_args_for_run(run), placeholders)

    def env(self, placeholders: Mapping[str, str] | None = None) -> dict[str, str]:
        return render_env(self.env_vars, placeholders)

    def placeholders_used(self) -> list[str]:
        """Every `${VAR}`/`$VAR` name in the args and env vars, sorted."""
        names: set[str] = set()
        for value in self.env_vars.values():
            names.update(placeholder_names(value))
        for args in self.all_model_args():
            for value in args.values():
                for item in value if isinstance(value, list) else [value]:
                    names.update(placeholder_names(scalar_text(item)))
        return sorted(names)

    def unknown_placeholders(self, known: Iterable[str] = KNOWN_PLACEHOLDERS) -> list[str]:
        known_set = set(known)
        return [name for name in self.placeholders_used() if name not in known_set]

    def matches_tag(self, tag: str) -> bool:
        return tag in self.tags or tag in (self.model, self.test_type, self.mode)

    def unsupported_reason(self) -> str | None:
        """One line saying why this orchestrator cannot run the case, or None."""
        if self.test_type == "checkpoint-consistency":
            return (
                "TEST_TYPE checkpoint-consistency is not supported: it compares optimizer grads across "
                "MODEL_ARGS_<n> runs with Megatron's test_optimizer_grads_match.py, which this orchestrator "
                "does not implement"
            )
        if self.mode == "rl":
            return (
                "MODE rl is not supported: it is checked by Megatron's test_grpo_training_loop.py, which this "
                "orchestrator does not implement"
            )
        if self.mode == "inference" and self.test_type != "frozen-start":
            return (
                f"MODE inference with TEST_TYPE {self.test_type} is not supported: Megatron checks inference "
                "only for frozen-start"
            )
        return None


def _int_flag(args: Mapping[str, Any], flag: str) -> int | None:
    value = args.get(flag)
    return None if value is None else int(YamlNumber(value).number)


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and not isinstance(value, YamlNumber)


def _type_name(value: Any) -> str:
    if isinstance(value, YamlNumber):
        return "number"
    return {dict: "mapping", list: "list", bool: "bool", str: "string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_top_level(shown: str, data: dict[str, Any]) -> None:
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(shown, str(key), "top-level keys must be strings")
        match = _RUN_KEY_RE.fullmatch(key)
        if match:
            if int(match.group(1)) < 2:
                raise ConfigError(shown, key, "MODEL_ARGS_<n> needs n >= 2 (run 1 uses MODEL_ARGS)")
            continue
        if key not in _TOP_LEVEL_KEYS:
            raise ConfigError(shown, key, "unknown top-level key" + _suggest(key, _TOP_LEVEL_KEYS))


def _env_vars(shown: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(shown, "ENV_VARS", f"must be a mapping of NAME: value, got {_type_name(value)}")
    env: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
            raise ConfigError(shown, f"ENV_VARS.{key}", "not a valid environment variable name")
        if isinstance(item, dict | list):
            raise ConfigError(shown, f"ENV_VARS.{key}", f"value must be a scalar, got {_type_name(item)}")
        env[key] = scalar_text(item)
    return env


def _model_args(shown: str, key: str, value: Any, *, required: bool = False) -> dict[str, Any]:
    if value is None:
        if required:
            raise ConfigError(shown, key, "required key is missing")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(shown, key, f"must be a mapping of --flag: value, got {_type_name(value)}")
    for flag, item in value.items():
        where = f"{key}.{flag}"
        if not _is_text(flag) or not flag.startswith("--") or len(flag) < 3:
            raise ConfigError(shown, where, "flags must start with '--'")
        if item is None:
            raise ConfigError(
                shown, where, "no value: write `true` for a bare flag, or quote an empty string"
            )
        if isinstance(item, dict):
            raise ConfigError(shown, where, "value must be a scalar or a list, got mapping")
        if isinstance(item, list) and any(isinstance(i, dict | list) or i is None for i in item):
            raise ConfigError(shown, where, "list items must be scalars")
        if flag in _INT_FLAGS and not _positive_int(item):
            raise ConfigError(shown, where, f"must be a positive integer, got {scalar_text(item)!r}")
    return dict(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, YamlNumber) and isinstance(value.number, int) and value.number >= 1


def _choice(shown: str, data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = data.get(key)
    if value is None:
        if default is None:
            raise ConfigError(shown, key, f"required key is missing (one of: {', '.join(allowed)})")
        return default
    if not _is_text(value) or value not in allowed:
        raise ConfigError(shown, key, f"{scalar_text(value)!r} is not one of: {', '.join(allowed)}")
    return value


def _str_list(shown: str, key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(_is_text(item) and item.strip() for item in value):
        raise ConfigError(shown, key, "must be a list of non-empty strings")
    return list(value)


def _optional_text(shown: str, key: str, value: Any) -> str | None:
    if value is not None and not _is_text(value):
        raise ConfigError(shown, key, f"must be a string, got {_type_name(value)}")
    return value


def _metrics(shown: str, data: dict[str, Any], mode: str) -> tuple[list[str], bool]:
    if "METRICS" not in data:
        if mode == "inference":
            raise ConfigError(shown, "METRICS", "required when MODE is inference")
        return list(DEFAULT_METRICS), False
    return _str_list(shown, "METRICS", data["METRICS"]), True


def _n_repeat(shown: str, data: dict[str, Any], env: dict[str, str]) -> int | None:
    top = data.get("N_REPEAT")
    if top is not None and not _positive_int(top):
        raise ConfigError(shown, "N_REPEAT", f"must be a positive integer, got {scalar_text(top)!r}")
    from_env = env.get("N_REPEAT")
    if from_env is not None and not (from_env.isdigit() and int(from_env) >= 1):
        raise ConfigError(shown, "ENV_VARS.N_REPEAT", f"must be a positive integer, got {from_env!r}")
    if top is not None and from_env is not None and int(top.number) != int(from_env):
        raise ConfigError(shown, "N_REPEAT", f"{top} conflicts with ENV_VARS.N_REPEAT {from_env}")
    if from_env is not None:
        return int(from_env)
    return int(top.number) if top is not None else None


def load_case(case_dir: str | Path) -> Case:
    """Load and validate `<case_dir>/model_config.yaml`. Bad input raises ConfigError(file, key, ...)."""
    case_dir = Path(case_dir).resolve()
    config_path = case_dir / CONFIG_NAME
    shown = display_path(config_path)
    if not config_path.is_file():
        raise ConfigError(shown, "<file>", f"missing {CONFIG_NAME}")
    data = load_yaml(config_path, raw_numbers=True)
    if not isinstance(data, dict):
        raise ConfigError(shown, "<top>", f"expected a mapping, got {_type_name(data)}")
    _check_top_level(shown, data)

    env = _env_vars(shown, data.get("ENV_VARS"))
    model_args = _model_args(shown, "MODEL_ARGS", data.get("MODEL_ARGS"), required=True)
    by_run = {
        int(m.group(1)): _model_args(shown, key, data[key], required=True)
        for key in data
        if (m := _RUN_KEY_RE.fullmatch(key))
    }
    _model_args(shown, "BASE_MODEL_ARGS", data.get("BASE_MODEL_ARGS"))
    for key in _MAPPING_KEYS:
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(shown, key, f"must be a mapping, got {_type_name(data[key])}")
    mode = _choice(shown, data, "MODE", MODES, default="pretraining")
    metrics, declared = _metrics(shown, data, mode)
    return Case(
        model=case_dir.parent.name,
        name=case_dir.name,
        path=case_dir,
        config_path=config_path,
        env_vars=env,
        model_args=model_args,
        model_args_by_run=by_run,
        test_type=_choice(shown, data, "TEST_TYPE", TEST_TYPES, default=None),
        mode=mode,
        metrics=metrics,
        metrics_declared=declared,
        launcher=_choice(shown, data, "LAUNCHER", LAUNCHERS, default="torchrun"),
        test_evaluation=_choice(shown, data, "TEST_EVALUATION", TEST_EVALUATIONS, default="pass"),
        n_repeat=_n_repeat(shown, data, env),
        before_script=_optional_text(shown, "BEFORE_SCRIPT", data.get("BEFORE_SCRIPT")),
        after_script=_optional_text(shown, "AFTER_SCRIPT", data.get("AFTER_SCRIPT")),
        tags=tuple(_str_list(shown, "TAGS", data.get("TAGS"))),
        raw=data,
    )


# --------------------------------------------------------------------------------------------------
# Discovery and selection
# --------------------------------------------------------------------------------------------------


def discover_cases(roots: Iterable[str | Path], errors: list[ConfigError] | None = None) -> list[Case]:
    """Every folder under the roots holding a model_config.yaml, sorted by id.

    With `errors` given, a case that fails to load is appended there instead of raising.
    """
    found: dict[str, Case] = {}
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(display_path(root), "case_roots", "not a directory")
        for config in sorted(root.rglob(CONFIG_NAME)):
            if any(part.startswith(".") for part in config.relative_to(root).parts):
                continue
            try:
                case = load_case(config.parent)
            except ConfigError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                continue
            other = found.get(case.id)
            if other is not None and other.path != case.path:
                raise ConfigError(
                    display_path(case.config_path),
                    "<case id>",
                    f"{case.id} is also defined at {display_path(other.path)}",
                )
            found[case.id] = case
    return sorted(found.values(), key=lambda c: c.id)


def _matches_pattern(case: Case, pattern: str) -> bool:
    return any(fnmatchcase(text, pattern) for text in (case.id, case.name))


def select_cases(
    cases: Iterable[Case],
    patterns: Iterable[str] | None = None,
    tags: Iterable[str] | None = None,
    *,
    scope: str | None = None,
    recipes: Mapping[str, Recipe] | None = None,
    source: str = "<selection>",
) -> list[Case]:
    """Cases matching ANY pattern (`model/name` or `name`, exact or glob) and ALL tags, in input order.

    A tag matches a case's TAGS, model, test_type or mode. With `scope`, only cases whose recipe lists
    that scope remain. A pattern or tag that matches no case at all is a ConfigError (likely a typo).
    """
    cases = list(cases)
    chosen: set[str] = set()
    for pattern in patterns or ["*"]:
        hits = [case.id for case in cases if _matches_pattern(case, pattern)]
        if not hits:
            raise ConfigError(source, "cases", f"pattern {pattern!r} matches no case")
        chosen.update(hits)
    tags = list(tags or [])
    for tag in tags:
        if not any(case.matches_tag(tag) for case in cases):
            raise ConfigError(source, "tags", f"tag {tag!r} matches no case")
    selected = [c for c in cases if c.id in chosen and all(c.matches_tag(t) for t in tags)]
    if scope is not None:
        selected = [c for c in selected if scope in recipe_for(recipes or {}, c.id).scopes]
    return list({c.id: c for c in selected}.values())


# --------------------------------------------------------------------------------------------------
# Recipes: which cases run where (our small version of Megatron's tests/test_utils/recipes)
# --------------------------------------------------------------------------------------------------

_RECIPE_KEYS = ("case", "nodes", "ranks_per_node", "time", "scopes", "platforms", "environments")


@dataclass(frozen=True)
class Recipe:
    """How and where one case is scheduled. None means "the planner's default" / "any"."""

    case: str  # "<model>/<case>"
    nodes: int | None = None
    ranks_per_node: int | None = None
    time: str | None = None  # Slurm time limit: minutes or [D-]HH:MM:SS
    scopes: tuple[str, ...] = ()
    platforms: tuple[str, ...] | None = None
    environments: tuple[str, ...] | None = None

    @property
    def time_minutes(self) -> int | None:
        return time_to_minutes(self.time) if self.time is not None else None

    def matches(
        self, scope: str | None = None, platform: str | None = None, environment: str | None = None
    ) -> bool:
        return (
            (scope is None or scope in self.scopes)
            and (platform is None or self.platforms is None or platform in self.platforms)
            and (environment is None or self.environments is None or environment in self.environments)
        )


def recipe_for(recipes: Mapping[str, Recipe], case_id: str) -> Recipe:
    """The case's recipe, or the all-defaults recipe when it has none."""
    return recipes.get(case_id) or Recipe(case=case_id)


def _recipe_names(shown: str, key: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if _is_text(value):
        value = [value]
    return tuple(_str_list(shown, key, value))


def _recipe_count(shown: str, key: str, value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(shown, key, f"must be a positive integer, got {value!r}")
    return value


def _recipe(shown: str, index: int, entry: Any) -> Recipe:
    where = f"recipes[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(shown, where, f"must be a mapping, got {_type_name(entry)}")
    for key in entry:
        if key not in _RECIPE_KEYS:
            raise ConfigError(shown, f"{where}.{key}", "unknown key" + _suggest(str(key), _RECIPE_KEYS))
    case = entry.get("case")
    if not _is_text(case) or case.count("/") != 1 or "" in case.split("/"):
        raise ConfigError(shown, f"{where}.case", "required: the case id as <model>/<case>")
    time = entry.get("time")
    if time is not None:
        try:
            time_to_minutes(time)
        except ValueError as exc:
            raise ConfigError(shown, f"{where}.time", str(exc)) from None
    environments = _recipe_names(shown, f"{where}.environments", entry.get("environments"))
    for env in environments or ():
        if env not in ENVIRONMENTS:
            raise ConfigError(
                shown, f"{where}.environments", f"{env!r} is not one of: {', '.join(ENVIRONMENTS)}"
            )
    return Recipe(
        case=case,
        nodes=_recipe_count(shown, f"{where}.nodes", entry.get("nodes")),
        ranks_per_node=_recipe_count(shown, f"{where}.ranks_per_node", entry.get("ranks_per_node")),
        time=None if time is None else str(time),
        scopes=_recipe_names(shown, f"{where}.scopes", entry.get("scopes")) or (),
        platforms=_recipe_names(shown, f"{where}.platforms", entry.get("platforms")),
        environments=environments,
    )


def load_recipes(path: str | Path) -> dict[str, Recipe]:
    """Recipes by case id from a recipes file (a list of entries, or `recipes:` holding that list).

    A missing file means no recipes: every case gets the planner's defaults.
    """
    path = Path(path)
    if not path.exists():
        return {}
    shown = display_path(path)
    data = load_yaml(path)
    if isinstance(data, dict) and set(data) == {"recipes"}:
        data = data["recipes"]
    if data is None:
        return {}
    if not isinstance(data, list):
        raise ConfigError(shown, "recipes", f"must be a list of entries, got {_type_name(data)}")
    recipes: dict[str, Recipe] = {}
    for index, entry in enumerate(data):
        recipe = _recipe(shown, index, entry)
        if recipe.case in recipes:
            raise ConfigError(shown, f"recipes[{index}].case", f"{recipe.case} already has a recipe")
        recipes[recipe.case] = recipe
    return recipes


def load_recipes_for_roots(roots: Iterable[str | Path]) -> dict[str, Recipe]:
    """The recipes of every case root (`<root>/recipes.yaml`), merged; a case listed twice is an error."""
    merged: dict[str, Recipe] = {}
    for root in roots:
        path = Path(root) / RECIPES_NAME
        for case_id, recipe in load_recipes(path).items():
            if case_id in merged:
                raise ConfigError(display_path(path), case_id, "already has a recipe in another case root")
            merged[case_id] = recipe
    return merged


def unknown_recipe_cases(recipes: Mapping[str, Recipe], cases: Iterable[Case]) -> list[str]:
    """Recipe entries that name no discovered case (for `cases validate`)."""
    known = {case.id for case in cases}
    return sorted(case_id for case_id in recipes if case_id not in known)
