"""Reading Megatron-style argv lists (`--flag V`, `--flag=V`, bare `--switch`).

Pure and dependency-free: both sides of the launch contract use it (the orchestration reads a task's argv, the
workload adjusts its own).
"""

from __future__ import annotations


def flag_value(argv: list[str], flag: str, default: str | None = None) -> str | None:
    """The value of `--flag V` or `--flag=V` (the last one wins, as argparse does), else `default`."""
    value = default
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag`: its `=` form, and its value when the next item is not another flag."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == flag:
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("--")
            continue
        if not arg.startswith(flag + "="):
            out.append(arg)
    return out
