"""Cluster and sweep files: the shipped ones load, bad ones give one-line errors naming the key, overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.config import (
    CLI_SOURCE,
    REPO_ROOT,
    ClusterConfig,
    SweepConfig,
    load_cluster,
    load_sweep,
    load_yaml,
    sweep_from_args,
    time_to_minutes,
)
from orchestrator.errors import ConfigError

CLUSTER = """\
name: test
executor: slurm
partitions:
  h100:
    platform: dgx_h100
    ranks_per_node: 8
    gpus_per_node: 8
  cpu:
    platform: cpu
    ranks_per_node: 4
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------- shipped files


@pytest.mark.parametrize("name", ["local", "local-slurm", "example-dgx"])
def test_shipped_clusters_load(name: str) -> None:
    cluster = load_cluster(REPO_ROOT / "clusters" / f"{name}.yaml")
    assert cluster.name == name and cluster.partitions
    assert cluster.source == (REPO_ROOT / "clusters" / f"{name}.yaml").resolve()


def test_shipped_cluster_contents() -> None:
    local = load_cluster(REPO_ROOT / "clusters" / "local.yaml")
    assert local.executor == "local" and list(local.partitions) == ["cpu"]
    assert (local.partitions["cpu"].platform, local.partitions["cpu"].ranks_per_node) == ("cpu", 8)
    slurm = load_cluster(REPO_ROOT / "clusters" / "local-slurm.yaml")
    assert slurm.executor == "slurm" and slurm.max_array_size is None
    platforms = {name: p.platform for name, p in slurm.partitions.items()}
    assert platforms == {"cpu": "cpu", "h100": "dgx_h100", "a100": "dgx_a100"}
    assert all((p.nodes, p.ranks_per_node, p.gpus_per_node) == (2, 8, 0) for p in slurm.partitions.values())
    dgx = load_cluster(REPO_ROOT / "clusters" / "example-dgx.yaml")
    h100 = dgx.partition("h100")
    assert (h100.platform, h100.gpus_per_node, h100.ranks_per_node) == ("dgx_h100", 8, 8)
    assert h100.account and h100.qos and dgx.slurm_partition("h100") == "batch_h100"
    assert dgx.partition("a100").platform == "dgx_a100"


@pytest.mark.parametrize("name", ["demo", "nightly"])
def test_shipped_sweeps_load_with_their_cluster(name: str) -> None:
    sweep = load_sweep(REPO_ROOT / "sweeps" / f"{name}.yaml")
    assert sweep.name == name and sweep.cluster.is_file() and sweep.cluster.is_absolute()
    assert sweep.case_roots == [REPO_ROOT / "cases"] and sweep.results_dir == REPO_ROOT / "results"
    cluster = sweep.load_cluster()
    assert sweep.selected_partitions(cluster)
    assert sweep.environment == "dev" and not sweep.allow_scripts


def test_demo_and_nightly_choices() -> None:
    demo = load_sweep(REPO_ROOT / "sweeps" / "demo.yaml")
    assert demo.load_cluster().executor == "local" and demo.partitions == ["cpu"]
    nightly = load_sweep(REPO_ROOT / "sweeps" / "nightly.yaml")
    assert nightly.scope == "nightly" and nightly.load_cluster().executor == "slurm"


# ---------------------------------------------------------------- defaults and helpers


def test_cluster_defaults(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path / "c.yaml", CLUSTER.replace("name: test\n", "")))
    assert cluster.name == "c"  # file stem
    part = cluster.partition("cpu")
    assert (part.gpus_per_node, part.cpus_per_task, part.nodes, part.time, part.time_minutes) == (
        0, 1, 1, "00:30:00", 30,
    )  # fmt: skip
    assert part.extra_sbatch == {} and part.account is None and part.executor is None
    assert cluster.max_array_size is None and cluster.local_max_ranks >= 8
    assert cluster.executor_for("cpu") == "slurm" and cluster.slurm_partition("cpu") == "cpu"
    with pytest.raises(ConfigError, match="unknown partition 'gpu'"):
        cluster.partition("gpu")


def test_partition_normalisation(tmp_path: Path) -> None:
    text = CLUSTER + "    executor: local\n    exclude: [n1, n2]\n    mem: 0\n    time: 90\n"
    text += (
        "    extra_sbatch: {exclusive: true, gres-flags: enforce-binding, nice: 10, oversubscribe: false}\n"
    )
    part = load_cluster(write(tmp_path / "c.yaml", text)).partition("cpu")
    assert (part.exclude, part.mem, part.time, part.time_minutes) == ("n1,n2", "0", "90", 90)
    assert part.extra_sbatch == {"exclusive": "", "gres-flags": "enforce-binding", "nice": "10"}


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        (30, 30),
        ("30", 30),
        ("00:30:00", 30),
        ("1:30:00", 90),
        ("45:30", 46),
        ("2-00:00:00", 2880),
        ("1-2", 1560),
    ],
)
def test_time_formats(value: str | int, minutes: int) -> None:
    assert time_to_minutes(value) == minutes


@pytest.mark.parametrize("value", ["soon", "1:2:3:4", "-5", "00:00:00", 0, True, "1-x", ""])
def test_bad_times(value: str | int) -> None:
    with pytest.raises(ValueError):
        time_to_minutes(value)


def test_yaml_is_read_as_yaml_1_2(tmp_path: Path) -> None:
    data = load_yaml(write(tmp_path / "x.yaml", "a: 1:30:00\nb: yes\nc: 1e-2\nd: 010\ne: .5\n"))
    assert data == {"a": "1:30:00", "b": "yes", "c": 0.01, "d": 10, "e": 0.5}


# ---------------------------------------------------------------- errors


BAD_CLUSTERS = [
    ("typo in partition", CLUSTER.replace("ranks_per_node: 4", "ranks_per_node: 4\n    rank_per_node: 4"),
     "partitions.cpu.rank_per_node", "did you mean 'ranks_per_node'"),
    ("typo at top", CLUSTER + "max_arrays: 3\n", "max_arrays", "unknown key"),
    ("missing platform", CLUSTER.replace("    platform: cpu\n", ""), "partitions.cpu.platform", "field required"),
    ("wrong type", CLUSTER.replace("ranks_per_node: 4", "ranks_per_node: four"), "partitions.cpu.ranks_per_node",
     "integer"),
    ("zero ranks", CLUSTER.replace("ranks_per_node: 4", "ranks_per_node: 0"), "partitions.cpu.ranks_per_node",
     "greater than or equal to 1"),
    ("bad executor", CLUSTER.replace("executor: slurm", "executor: pbs"), "executor", "'slurm' or 'local'"),
    ("no partitions", "name: x\nexecutor: local\npartitions: {}\n", "partitions", "at least 1"),
    ("partitions list", "executor: local\npartitions: [cpu]\n", "partitions", "dictionary"),
    ("bad time", CLUSTER + "    time: soon\n", "partitions.cpu.time", "HH:MM:SS"),
    ("sbatch list", CLUSTER + "    extra_sbatch: [a]\n", "partitions.cpu.extra_sbatch", "dictionary"),
    ("invalid yaml", "name: [x\n", "line", "invalid YAML"),
    ("not a mapping", "- a\n", "<top>", "expected a mapping"),
    ("duplicate", CLUSTER + "executor: local\n", "executor", "duplicate key"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "text", "key", "fragment"), BAD_CLUSTERS, ids=[b[0] for b in BAD_CLUSTERS])
def test_cluster_errors(tmp_path: Path, label: str, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_cluster(write(tmp_path / "clusters" / "x.yaml", text))
    message = str(info.value)
    assert info.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"{tmp_path / 'clusters' / 'x.yaml'}: ") or "clusters/x.yaml: " in message
    assert info.value.key.startswith(key), message
    assert fragment in message, message


def test_missing_cluster_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: <file>: file not found"):
        load_cluster(tmp_path / "nope.yaml")


def test_several_errors_still_one_line(tmp_path: Path) -> None:
    text = "executor: pbs\npartitions: {cpu: {ranks_per_node: 0}}\n"
    with pytest.raises(ConfigError) as info:
        load_cluster(write(tmp_path / "x.yaml", text))
    assert "\n" not in str(info.value) and "more errors" in str(info.value)


BAD_SWEEPS = [
    ("typo", "cluster: c.yaml\nenviroment: dev\n", "enviroment", "did you mean 'environment'"),
    ("bad env", "cluster: c.yaml\nenvironment: prod\n", "environment", "'dev' or 'lts'"),
    ("repeats", "cluster: c.yaml\nrepeats: 0\n", "repeats", "greater than or equal to 1"),
    ("cases type", "cluster: c.yaml\ncases: gpt/*\n", "cases", "valid list"),
    ("empty pattern", "cluster: c.yaml\ncases: ['']\n", "cases", "non-empty"),
    ("workload", "cluster: c.yaml\nworkload: magic\n", "workload", "synthetic"),
    ("retries", "cluster: c.yaml\ninfra_retries: -1\n", "infra_retries", "greater than or equal to 0"),
    ("time", "cluster: c.yaml\ntime: later\n", "time", "HH:MM:SS"),
    ("allow_scripts", "cluster: c.yaml\nallow_scripts: maybe\n", "allow_scripts", "boolean"),
    ("name", "name: a b\ncluster: c.yaml\n", "name", "pattern"),
]


@pytest.mark.parametrize(("label", "text", "key", "fragment"), BAD_SWEEPS, ids=[b[0] for b in BAD_SWEEPS])
def test_sweep_errors(tmp_path: Path, label: str, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_sweep(write(tmp_path / "sweeps" / "s.yaml", text))
    message = str(info.value)
    assert "sweeps/s.yaml: " in message and "\n" not in message
    assert info.value.key == key, message
    assert fragment in message, message


def test_sweep_paths_and_unknown_partition(tmp_path: Path) -> None:
    write(tmp_path / "clusters" / "c.yaml", CLUSTER)
    sweep_path = write(
        tmp_path / "sweeps" / "s.yaml", "cluster: ../clusters/c.yaml\npartitions: [cpu, gpu]\n"
    )
    sweep = load_sweep(sweep_path, repo_root=tmp_path)
    assert sweep.name == "s" and sweep.cluster == (tmp_path / "clusters" / "c.yaml").resolve()
    assert sweep.case_roots == [tmp_path / "cases"] and sweep.data_dir == tmp_path / "data"
    assert sweep.artifacts_dir == tmp_path / "artifacts" and sweep.megatron_lm is None
    with pytest.raises(ConfigError, match=r"s\.yaml: partitions: unknown partition\(s\) gpu"):
        sweep.selected_partitions(sweep.load_cluster())


# ---------------------------------------------------------------- overrides


def test_overrides(tmp_path: Path) -> None:
    sweep = load_sweep(REPO_ROOT / "sweeps" / "demo.yaml")
    out = sweep.with_overrides(
        base=tmp_path,
        environment="lts",
        repeats=3,
        cases=["gpt/*"],
        tags=["cpu"],
        partitions=["cpu"],
        results_dir="elsewhere",
        allow_scripts=True,
        time="10",
        workload="synthetic",
        scope=None,  # None: not given on the command line
    )
    assert (out.environment, out.repeats, out.cases, out.tags, out.allow_scripts) == (
        "lts", 3, ["gpt/*"], ["cpu"], True,
    )  # fmt: skip
    assert (
        out.results_dir == tmp_path / "elsewhere" and out.time_minutes == 10 and out.workload == "synthetic"
    )
    assert out.cluster == sweep.cluster and out.case_roots == sweep.case_roots  # untouched paths kept
    assert out.source == sweep.source and out.name == "demo"
    assert sweep.environment == "dev"  # the original is unchanged
    assert sweep.with_overrides(scope=None) is sweep


def test_override_errors_name_the_flag() -> None:
    sweep = load_sweep(REPO_ROOT / "sweeps" / "demo.yaml")
    with pytest.raises(ConfigError, match=rf"^{CLI_SOURCE}: environment: "):
        sweep.with_overrides(environment="prod")
    with pytest.raises(ConfigError, match="repeats"):
        sweep.with_overrides(repeats=0)
    with pytest.raises(ConfigError, match="reapeats: unknown key"):
        sweep.with_overrides(reapeats=2)


def test_sweep_from_args(tmp_path: Path) -> None:
    adhoc = sweep_from_args(None, cases=["gpt/x"])
    assert adhoc.cluster == REPO_ROOT / "clusters" / "local.yaml" and adhoc.cases == ["gpt/x"]
    assert adhoc.case_roots == [REPO_ROOT / "cases"]
    write(tmp_path / "clusters" / "c.yaml", CLUSTER)
    other = sweep_from_args(REPO_ROOT / "sweeps" / "nightly.yaml", base=tmp_path, cluster="clusters/c.yaml")
    assert other.scope == "nightly" and other.cluster == tmp_path / "clusters" / "c.yaml"
    assert other.load_cluster().name == "test"


def test_sweep_dump_is_json_ready() -> None:
    data = load_sweep(REPO_ROOT / "sweeps" / "nightly.yaml").to_dict(json=True)
    assert data["cluster"].endswith("clusters/local-slurm.yaml") and data["scope"] == "nightly"
    assert SweepConfig.from_dict(data).scope == "nightly"
    assert isinstance(ClusterConfig.from_dict({"name": "x", "executor": "local",
                                                    "partitions": {"cpu": {"platform": "cpu", "ranks_per_node": 1}}}),
                      ClusterConfig)  # fmt: skip
