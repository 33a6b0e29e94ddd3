"""Case loading, schema errors, flag->argv rendering (Megatron's _run_training.sh rules), discovery, recipes."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from orchestrator.cases import (
    KNOWN_PLACEHOLDERS,
    Case,
    Recipe,
    discover_cases,
    load_case,
    load_recipes,
    load_recipes_for_roots,
    recipe_for,
    render_argv,
    render_env,
    render_flag,
    select_cases,
    shell_quote_argv,
    unknown_recipe_cases,
)
from orchestrator.config import YamlNumber
from orchestrator.errors import ConfigError

SHARED_CASES = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "megatron" / "test_cases"
needs_shared = pytest.mark.skipif(
    not SHARED_CASES.is_dir(), reason=f"Megatron-LM case folders not present at {SHARED_CASES}"
)
SEED_TP1_PP4 = "gpt/gpt3_mcore_te_tp1_pp4_resume_torch_dist_untie_embeddings_and_outputs"

MINIMAL = """\
ENV_VARS:
  NVTE_ALLOW_NONDETERMINISTIC_ALGO: 0
MODEL_ARGS:
  --train-iters: 10
TEST_TYPE: regular
"""


def write_case(root: Path, text: str, model: str = "gpt", name: str = "case_a") -> Path:
    case_dir = root / model / name
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / "model_config.yaml").write_text(textwrap.dedent(text))
    return case_dir


def args_of(text: str, tmp_path: Path, placeholders: dict[str, str] | None = None) -> list[str]:
    case = load_case(
        write_case(
            tmp_path, "TEST_TYPE: regular\nMODEL_ARGS:\n" + textwrap.indent(textwrap.dedent(text), "  ")
        )
    )
    return case.argv(placeholders=placeholders)


# ---------------------------------------------------------------- flag -> argv


def test_true_false_and_plain_values(tmp_path: Path) -> None:
    argv = args_of(
        """\
        --bf16: true
        --async-save: false
        --ckpt-format: torch_dist
        --quoted-true: "true"
        --empty: ""
        --split: 949,50,1
        """,
        tmp_path,
    )
    assert argv == ["--bf16", "--async-save", "false", "--ckpt-format", "torch_dist", "--quoted-true"] + [
        "--split",
        "949,50,1",
    ]


def test_numbers_render_exactly_as_written(tmp_path: Path) -> None:
    argv = args_of(
        """\
        --min-lr: 1.0e-5
        --lr-warmup-fraction: .01
        --weight-decay: 1e-2
        --lr: 0.00015
        --clip-grad: 1.0
        --incoming-requests-per-sec: -1 # a comment
        --hex: 0x1F
        --train-iters: 100
        """,
        tmp_path,
    )
    assert argv == [
        "--min-lr", "1.0e-5", "--lr-warmup-fraction", ".01", "--weight-decay", "1e-2", "--lr", "0.00015",
        "--clip-grad", "1.0", "--incoming-requests-per-sec", "-1", "--hex", "0x1F", "--train-iters", "100",
    ]  # fmt: skip


def test_raw_numbers_keep_their_value() -> None:
    assert YamlNumber("1.0e-5").number == pytest.approx(1e-5)
    assert YamlNumber(".01").number == pytest.approx(0.01)
    assert YamlNumber("100").number == 100 and isinstance(YamlNumber("100").number, int)
    assert YamlNumber("0o17").number == 15


def test_yaml_1_2_scalars(tmp_path: Path) -> None:
    # yq (YAML 1.2) reads `yes` and `1:30` as text, not as a bool or a base-60 integer.
    argv = args_of("--a: yes\n--b: 1:30\n--c: 2024-01-01\n--d: True\n", tmp_path)
    assert argv == ["--a", "yes", "--b", "1:30", "--c", "2024-01-01", "--d"]


def test_lists_and_brackets(tmp_path: Path) -> None:
    argv = args_of(
        """\
        --yaml-list: [a, b, 3]
        --block-list:
          - x y
          - 1.0e-5
        --recompute-modules: "[moe_act]"
        --cuda-graph-modules: "[attn mlp moe_router]"
        --not-a-bracket-list: "[0]*4+[1]"
        """,
        tmp_path,
    )
    assert argv == [
        "--yaml-list", "a", "b", "3",
        "--block-list", "x y", "1.0e-5",
        "--recompute-modules", "moe_act",
        "--cuda-graph-modules", "attn", "mlp", "moe_router",
        "--not-a-bracket-list", "[0]*4+[1]",
    ]  # fmt: skip


def test_parentheses_spaces_and_pipes_stay_one_argument(tmp_path: Path) -> None:
    argv = args_of(
        """\
        --moe-layer-freq: ([0]*4+[1]*9)
        --pipeline-model-parallel-layout: Et|(tt|)*6mL
        --prompts: "Time travel to 2008, and go to a bar"
        --odd: (a)(b)
        """,
        tmp_path,
    )
    assert argv == [
        "--moe-layer-freq", "([0]*4+[1]*9)",
        "--pipeline-model-parallel-layout", "Et|(tt|)*6mL",
        "--prompts", "Time travel to 2008, and go to a bar",
        "--odd", "(a)(b)",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "value",
    [
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "a; rm -rf /",
        "line1\nline2",
        "'quoted' \"both\"",
        "a && b",
    ],
)
def test_shell_metacharacters_stay_literal(value: str) -> None:
    assert render_flag("--x", value) == ["--x", value]
    line = shell_quote_argv(["prog", *render_flag("--x", value)])
    assert shlex.split(line) == ["prog", "--x", value]


def test_shell_metacharacters_from_yaml_file(tmp_path: Path) -> None:
    argv = args_of('--cmd: "$(id); `id` | cat\\nnext"\n', tmp_path)
    assert argv == ["--cmd", "$(id); `id` | cat\nnext"]


def test_placeholders_known_and_unknown(tmp_path: Path) -> None:
    case = load_case(
        write_case(
            tmp_path,
            """\
            ENV_VARS:
              OUT: ${OUTPUT_PATH}/x
              KEEP: ${NOT_GIVEN}
            MODEL_ARGS:
              --data-path: ${DATA_PATH}/text/doc
              --save: $CHECKPOINT_SAVE_PATH
              --load: ${MYSTERY}/ckpt
              --default-syntax: ${DATA_PATH:-/x}
              --list: ["${DATA_PATH}/a", b]
            TEST_TYPE: regular
            """,
        )
    )
    given = {"DATA_PATH": "/data dir", "CHECKPOINT_SAVE_PATH": "/ckpt", "OUTPUT_PATH": "/out"}
    assert case.argv(placeholders=given) == [
        "--data-path", "/data dir/text/doc",
        "--save", "/ckpt",
        "--load", "${MYSTERY}/ckpt",
        "--default-syntax", "${DATA_PATH:-/x}",
        "--list", "/data dir/a", "b",
    ]  # fmt: skip
    assert case.env(given) == {"OUT": "/out/x", "KEEP": "${NOT_GIVEN}"}
    assert case.placeholders_used() == [
        "CHECKPOINT_SAVE_PATH",
        "DATA_PATH",
        "MYSTERY",
        "NOT_GIVEN",
        "OUTPUT_PATH",
    ]
    assert case.unknown_placeholders() == ["MYSTERY", "NOT_GIVEN"]


def test_placeholder_value_is_not_reinterpreted() -> None:
    # A filled-in value with shell syntax or brackets-with-spaces is still one literal argument.
    assert render_argv({"--load": "${X}"}, {"X": "$(id) a b"}) == ["--load", "$(id) a b"]
    assert render_env({"A": "${X}:$Y"}, {"X": "1", "Y": "2"}) == {"A": "1:2"}


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    case = load_case(
        write_case(
            tmp_path,
            """\
            BASE_MODEL_ARGS: &base
              --num-layers: 2
              --lr: 1.0e-4
            MODEL_ARGS:
              <<: *base
              --lr: 3.0e-4
              --seq-length: &len 64
              --max-position-embeddings: *len
            MODEL_ARGS_2:
              <<: *base
              --ckpt-step: 5
            TEST_TYPE: ckpt-resume
            """,
        )
    )
    assert case.argv() == ["--num-layers", "2", "--lr", "3.0e-4", "--seq-length", "64"] + [
        "--max-position-embeddings",
        "64",
    ]
    assert case.argv(run=2) == ["--num-layers", "2", "--lr", "1.0e-4", "--ckpt-step", "5"]
    assert case.model_args_for_run(1) is case.model_args and case.model_args_for_run(3) is case.model_args


# ---------------------------------------------------------------- case fields


def test_defaults_and_properties(tmp_path: Path) -> None:
    case = load_case(write_case(tmp_path, MINIMAL))
    assert case.id == "gpt/case_a" and case.model == "gpt" and case.name == "case_a"
    assert case.path == (tmp_path / "gpt" / "case_a").resolve()
    assert case.mode == "pretraining" and case.launcher == "torchrun" and case.test_evaluation == "pass"
    assert case.metrics == ["lm loss", "num-zeros"] and not case.metrics_declared
    assert case.env_vars == {"NVTE_ALLOW_NONDETERMINISTIC_ALGO": "0"}
    assert case.train_iters == 10 and case.n_phases == 1 and not case.is_resume
    assert (case.tp, case.pp, case.cp, case.ep, case.min_world_size) == (1, 1, 1, 1, 1)
    assert not case.nondeterministic and case.n_repeat is None and case.tags == ()
    assert case.unsupported_reason() is None
    assert hash(case) == hash(load_case(case.path)) and case == load_case(case.path)


def test_all_optional_keys(tmp_path: Path) -> None:
    case = load_case(
        write_case(
            tmp_path,
            """\
            ENV_VARS:
              NON_DETERMINSTIC_RESULTS: 1
              N_REPEAT: 3
              FLAG: true
              CUBLAS_WORKSPACE_CONFIG: :4096:8
            MODEL_ARGS:
              --tensor-model-parallel-size: 2
              --pipeline-model-parallel-size: 2
              --context-parallel-size: 2
              --expert-model-parallel-size: 4
            MODEL_ARGS_2:
              --tensor-model-parallel-size: 1
            TEST_TYPE: frozen-resume
            MODE: pretraining
            METRICS: ["lm loss", "mtp_1 loss"]
            LAUNCHER: ft_launcher
            TEST_EVALUATION: xpass
            BEFORE_SCRIPT: echo before
            AFTER_SCRIPT: echo after
            MODEL_ENV_VARS: {2: {GPUS_PER_NODE: 4}}
            THROUGHPUT_TEST_PARAMS: {x: 1}
            TAGS: [cpu, smoke]
            """,
        )
    )
    assert case.nondeterministic and case.n_repeat == 3 and case.env_vars["FLAG"] == "true"
    assert case.env_vars["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert case.metrics == ["lm loss", "mtp_1 loss"] and case.metrics_declared
    assert (case.launcher, case.test_evaluation, case.before_script, case.after_script) == (
        "ft_launcher", "xpass", "echo before", "echo after",
    )  # fmt: skip
    assert case.is_resume and case.n_phases == 2 and case.tags == ("cpu", "smoke")
    assert (case.tp, case.pp, case.cp, case.ep, case.etp) == (2, 2, 2, 4, 2)
    # run 1: tp*pp*cp = 8, etp*ep*pp = 16; run 2: 4 and 8 -> 16
    assert case.min_world_size == 16
    assert sorted(case.model_args_by_run) == [2]


def test_top_level_n_repeat(tmp_path: Path) -> None:
    assert load_case(write_case(tmp_path, MINIMAL + "N_REPEAT: 5\n")).n_repeat == 5


def test_nondeterministic_algo_flag(tmp_path: Path) -> None:
    text = MINIMAL.replace("NVTE_ALLOW_NONDETERMINISTIC_ALGO: 0", "NVTE_ALLOW_NONDETERMINISTIC_ALGO: 1")
    assert load_case(write_case(tmp_path, text)).nondeterministic


@pytest.mark.parametrize(
    ("test_type", "mode", "fragment"),
    [
        ("checkpoint-consistency", "pretraining", "test_optimizer_grads_match.py"),
        ("regular", "rl", "MODE rl is not supported"),
        ("ckpt-resume", "inference", "frozen-start"),
    ],
)
def test_unsupported_reasons(tmp_path: Path, test_type: str, mode: str, fragment: str) -> None:
    text = f"MODEL_ARGS: {{}}\nTEST_TYPE: {test_type}\nMODE: {mode}\nMETRICS: [lm loss]\n"
    reason = load_case(write_case(tmp_path, text)).unsupported_reason()
    assert reason is not None and fragment in reason and "\n" not in reason


# ---------------------------------------------------------------- schema errors


BAD_CONFIGS = [
    ("unknown top-level", MINIMAL + "METRIC: [lm loss]\n", "METRIC", "did you mean 'METRICS'"),
    ("model args list", "MODEL_ARGS: [--a, --b]\nTEST_TYPE: regular\n", "MODEL_ARGS", "mapping"),
    ("model args missing", "TEST_TYPE: regular\n", "MODEL_ARGS", "missing"),
    ("flag without dashes", "MODEL_ARGS: {lr: 1}\nTEST_TYPE: regular\n", "MODEL_ARGS.lr", "--"),
    ("null flag value", "MODEL_ARGS:\n  --lr:\nTEST_TYPE: regular\n", "MODEL_ARGS.--lr", "no value"),
    ("mapping flag value", "MODEL_ARGS: {--lr: {a: 1}}\nTEST_TYPE: regular\n", "MODEL_ARGS.--lr", "mapping"),
    ("nested list", "MODEL_ARGS: {--x: [[1]]}\nTEST_TYPE: regular\n", "MODEL_ARGS.--x", "scalars"),
    ("train iters text", "MODEL_ARGS: {--train-iters: ten}\nTEST_TYPE: regular\n", "MODEL_ARGS.--train-iters", "integer"),
    ("tp zero", "MODEL_ARGS: {--tensor-model-parallel-size: 0}\nTEST_TYPE: regular\n", "--tensor-model-parallel-size", "positive"),
    ("metrics string", MINIMAL + "METRICS: lm loss\n", "METRICS", "list of non-empty strings"),
    ("metrics number", MINIMAL + "METRICS: [1]\n", "METRICS", "list of non-empty strings"),
    ("test type bad", "MODEL_ARGS: {}\nTEST_TYPE: resume\n", "TEST_TYPE", "ckpt-resume"),
    ("test type missing", "MODEL_ARGS: {}\n", "TEST_TYPE", "missing"),
    ("mode bad", MINIMAL + "MODE: training\n", "MODE", "pretraining"),
    ("launcher bad", MINIMAL + "LAUNCHER: srun\n", "LAUNCHER", "torchrun"),
    ("evaluation bad", MINIMAL + "TEST_EVALUATION: fail\n", "TEST_EVALUATION", "xpass"),
    ("inference metrics", "MODEL_ARGS: {}\nTEST_TYPE: frozen-start\nMODE: inference\n", "METRICS", "inference"),
    ("env list", "ENV_VARS: [A]\nMODEL_ARGS: {}\nTEST_TYPE: regular\n", "ENV_VARS", "mapping"),
    ("env value list", "ENV_VARS: {A: [1]}\nMODEL_ARGS: {}\nTEST_TYPE: regular\n", "ENV_VARS.A", "scalar"),
    ("env bad name", "ENV_VARS: {A-B: 1}\nMODEL_ARGS: {}\nTEST_TYPE: regular\n", "ENV_VARS.A-B", "name"),
    ("n repeat env", "ENV_VARS: {N_REPEAT: x}\nMODEL_ARGS: {}\nTEST_TYPE: regular\n", "ENV_VARS.N_REPEAT", "integer"),
    ("n repeat top", MINIMAL + "N_REPEAT: 0\n", "N_REPEAT", "positive"),
    ("n repeat conflict", "ENV_VARS: {N_REPEAT: 2}\nMODEL_ARGS: {}\nTEST_TYPE: regular\nN_REPEAT: 3\n", "N_REPEAT", "conflicts"),
    ("before script list", MINIMAL + "BEFORE_SCRIPT: [a]\n", "BEFORE_SCRIPT", "string"),
    ("tags string", MINIMAL + "TAGS: cpu\n", "TAGS", "list"),
    ("model env vars", MINIMAL + "MODEL_ENV_VARS: [1]\n", "MODEL_ENV_VARS", "mapping"),
    ("model args 1", MINIMAL + "MODEL_ARGS_1: {}\n", "MODEL_ARGS_1", "n >= 2"),
    ("model args 2 bad", MINIMAL + "MODEL_ARGS_2: {x: 1}\n", "MODEL_ARGS_2.x", "--"),
    ("duplicate flag", "MODEL_ARGS:\n  --lr: 1\n  --lr: 2\nTEST_TYPE: regular\n", "MODEL_ARGS.--lr", "duplicate"),
    ("invalid yaml", "MODEL_ARGS: {--lr: 1\nTEST_TYPE: regular\n", "line", "invalid YAML"),
    ("tab yaml", "MODEL_ARGS:\n\t--lr: 1\n", "line 2", "invalid YAML"),
    ("top-level list", "- a\n- b\n", "<top>", "mapping"),
    ("empty file", "", "<top>", "mapping"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "text", "key", "fragment"), BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_schema_errors_name_file_and_key(
    tmp_path: Path, label: str, text: str, key: str, fragment: str
) -> None:
    case_dir = write_case(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_case(case_dir)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "case_a/model_config.yaml: " in message, message
    assert key in info.value.key, message
    assert fragment in message, message
    assert "\n" not in message


def test_missing_model_config(tmp_path: Path) -> None:
    (tmp_path / "gpt" / "empty").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"empty/model_config\.yaml: <file>: missing model_config\.yaml"):
        load_case(tmp_path / "gpt" / "empty")


def test_unreadable_model_config(tmp_path: Path) -> None:
    case_dir = write_case(tmp_path, MINIMAL)
    (case_dir / "model_config.yaml").write_bytes(b"MODEL_ARGS: {--x: \xff\xfe}\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_case(case_dir)


# ---------------------------------------------------------------- the real Megatron-LM cases


@needs_shared
def test_all_eight_megatron_cases_load() -> None:
    cases = {case.id: case for case in discover_cases([SHARED_CASES])}
    assert len(cases) == 8
    by_type = {case_id: (c.test_type, c.mode, c.launcher) for case_id, c in cases.items()}
    assert by_type[SEED_TP1_PP4] == ("ckpt-resume", "pretraining", "ft_launcher")
    assert by_type["gpt/gpt3_mcore_te_tp2_zp_z3_resume_fsdp_dtensor"][0] == "regular"
    zmq = cases["gpt/gpt_dynamic_inference_tp2_pp2_dp2_583m_logitsmatch_zmq"]
    assert (zmq.test_type, zmq.mode, zmq.metrics, zmq.tp, zmq.pp) == (
        "frozen-start", "inference", ["generated_tokens", "logprobs"], 2, 2,
    )  # fmt: skip
    assert cases["gpt/gpt3_7b_tp1_pp4_memory_speed"].metrics[0] == "iteration-time"
    moe = cases["moe/gpt3_moe_mcore_te_tp4_ep2_etp2_pp2_scoped_cudagraph"]
    assert moe.metrics == ["lm loss", "num-zeros", "mtp_1 loss"] and moe.min_world_size == 8
    for case in cases.values():
        assert case.unsupported_reason() is None
        assert not case.nondeterministic
        assert case.env_vars["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert set(case.placeholders_used()) <= set(KNOWN_PLACEHOLDERS)
        assert case.argv()  # renders


@needs_shared
def test_seed_tp1_pp4_renders_like_run_training_sh() -> None:
    case = load_case(SHARED_CASES / SEED_TP1_PP4)
    assert (case.train_iters, case.n_phases, case.tp, case.pp, case.min_world_size) == (100, 2, 1, 4, 4)
    assert case.env_vars["NVTE_ALLOW_NONDETERMINISTIC_ALGO"] == "0"
    argv = case.argv(placeholders={"DATA_PATH": "/data", "TENSORBOARD_PATH": "/tb"})
    pairs = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert pairs["--lr"] == "0.00015" and pairs["--min-lr"] == "1.0e-5"
    assert pairs["--weight-decay"] == "1e-2" and pairs["--lr-warmup-fraction"] == ".01"
    assert pairs["--split"] == "949,50,1" and pairs["--tensorboard-dir"] == "/tb"
    assert pairs["--data-path"] == "/data/text/common_pile/v01_filtered_data/my-gpt3_00_text_document"
    assert pairs["--data-cache-path"] == "${DATA_CACHE_PATH}"  # not given: left literally (envsubst)
    assert pairs["--dist-ckpt-strictness"] == "log_all"  # the trailing comment is not part of the value
    i = argv.index("--untie-embeddings-and-output-weights")
    assert argv[i + 1] == "--deterministic-mode"  # `true` -> bare flag
    assert argv[:6] == ["--num-layers", "12", "--hidden-size", "512", "--num-attention-heads", "8"]
    assert argv[-2:] == ["--async-save", "--use-persistent-ckpt-worker"]


@needs_shared
def test_moe_case_special_values() -> None:
    case = load_case(SHARED_CASES / "moe" / "gpt3_moe_mcore_te_tp4_ep2_etp2_pp2_scoped_cudagraph")
    argv = case.argv()
    at = argv.index
    assert argv[at("--moe-layer-freq") + 1] == "([0]*4+[1]*9)"
    assert argv[at("--pipeline-model-parallel-layout") + 1] == "Et|(tt|)*6mL"
    assert argv[at("--recompute-modules") + 1 : at("--recompute-modules") + 3] == [
        "moe_act",
        "--cuda-graph-impl",
    ]
    start = at("--cuda-graph-modules") + 1
    assert argv[start : start + 5] == [
        "attn",
        "mlp",
        "moe_router",
        "moe_preprocess",
        "--log-memory-to-tensorboard",
    ]


@needs_shared
def test_inference_prompt_is_one_argument() -> None:
    case = load_case(SHARED_CASES / "gpt" / "gpt_static_inference_tp1_pp1_583m_logitsmatch")
    argv = case.argv(placeholders={"INFERENCE_OUTPUT_PATH": "/out/g.json"})
    assert argv[argv.index("--prompts") + 1].startswith("Time travel to 2008, and go to a bar")
    assert argv[argv.index("--incoming-requests-per-sec") + 1] == "-1"
    assert argv[argv.index("--output-path") + 1] == "/out/g.json"


# ---------------------------------------------------------------- discovery and selection


@pytest.fixture
def case_tree(tmp_path: Path) -> Path:
    root = tmp_path / "cases"
    write_case(root, MINIMAL + "TAGS: [cpu]\n", "gpt", "gpt_tiny_regular")
    write_case(root, MINIMAL.replace("regular", "ckpt-resume"), "gpt", "gpt_tiny_resume")
    write_case(root, MINIMAL + "TAGS: [cpu, slow]\n", "moe", "moe_tiny_regular")
    write_case(root, MINIMAL, ".hidden", "ignored")
    return root


def test_discover_and_select(case_tree: Path) -> None:
    cases = discover_cases([case_tree])
    assert [c.id for c in cases] == ["gpt/gpt_tiny_regular", "gpt/gpt_tiny_resume", "moe/moe_tiny_regular"]
    ids = lambda selected: [c.id for c in selected]  # noqa: E731
    assert ids(select_cases(cases, ["*"])) == ids(cases)
    assert ids(select_cases(cases, None)) == ids(cases)
    assert ids(select_cases(cases, ["gpt_tiny_resume"])) == ["gpt/gpt_tiny_resume"]
    assert ids(select_cases(cases, ["moe/*", "gpt/gpt_tiny_regular"])) == [
        "gpt/gpt_tiny_regular",
        "moe/moe_tiny_regular",
    ]
    assert ids(select_cases(cases, ["*regular"], ["cpu"])) == ["gpt/gpt_tiny_regular", "moe/moe_tiny_regular"]
    assert ids(select_cases(cases, ["*"], ["cpu", "slow"])) == ["moe/moe_tiny_regular"]
    assert ids(select_cases(cases, ["*"], ["ckpt-resume"])) == ["gpt/gpt_tiny_resume"]
    assert ids(select_cases(cases, ["*"], ["moe"])) == ["moe/moe_tiny_regular"]
    assert ids(select_cases(cases, ["*"], ["pretraining"])) == ids(cases)


def test_select_errors(case_tree: Path) -> None:
    cases = discover_cases([case_tree])
    with pytest.raises(ConfigError, match=r"sweeps/x\.yaml: cases: pattern 'gtp/\*' matches no case"):
        select_cases(cases, ["gtp/*"], source="sweeps/x.yaml")
    with pytest.raises(ConfigError, match="tags: tag 'gpu' matches no case"):
        select_cases(cases, ["*"], ["gpu"])


def test_select_by_scope(case_tree: Path) -> None:
    cases = discover_cases([case_tree])
    recipes = {"gpt/gpt_tiny_resume": Recipe(case="gpt/gpt_tiny_resume", scopes=("nightly",))}
    selected = select_cases(cases, ["*"], scope="nightly", recipes=recipes)
    assert [c.id for c in selected] == ["gpt/gpt_tiny_resume"]


def test_discover_collects_errors(case_tree: Path) -> None:
    write_case(case_tree, "MODEL_ARGS: {}\nTEST_TYPE: nope\n", "gpt", "broken")
    with pytest.raises(ConfigError, match="TEST_TYPE"):
        discover_cases([case_tree])
    errors: list[ConfigError] = []
    assert len(discover_cases([case_tree], errors=errors)) == 3
    assert len(errors) == 1 and errors[0].key == "TEST_TYPE"


def test_discover_duplicates_and_missing_root(tmp_path: Path, case_tree: Path) -> None:
    other = tmp_path / "other"
    write_case(other, MINIMAL, "gpt", "gpt_tiny_regular")
    with pytest.raises(ConfigError, match="gpt/gpt_tiny_regular is also defined"):
        discover_cases([case_tree, other])
    with pytest.raises(ConfigError, match="case_roots: not a directory"):
        discover_cases([tmp_path / "nope"])


# ---------------------------------------------------------------- recipes


RECIPES = """\
- case: gpt/gpt_tiny_regular
  nodes: 1
  ranks_per_node: 4
  time: "00:15:00"
  scopes: [mr, nightly]
  platforms: [cpu]
  environments: [dev]
- case: gpt/gpt_tiny_resume
  time: 20
"""


def test_recipes_load(tmp_path: Path) -> None:
    path = tmp_path / "recipes.yaml"
    path.write_text(RECIPES)
    recipes = load_recipes(path)
    tiny = recipes["gpt/gpt_tiny_regular"]
    assert (tiny.nodes, tiny.ranks_per_node, tiny.time, tiny.time_minutes) == (1, 4, "00:15:00", 15)
    assert tiny.scopes == ("mr", "nightly") and tiny.platforms == ("cpu",) and tiny.environments == ("dev",)
    assert tiny.matches(scope="mr", platform="cpu", environment="dev")
    assert not tiny.matches(platform="dgx_h100") and not tiny.matches(scope="weekly")
    assert not tiny.matches(environment="lts")
    resume = recipes["gpt/gpt_tiny_resume"]
    assert (resume.nodes, resume.scopes, resume.platforms, resume.time_minutes) == (None, (), None, 20)
    assert resume.matches(platform="anything") and not resume.matches(scope="mr")
    assert recipe_for(recipes, "x/y") == Recipe(case="x/y")
    path.write_text("recipes:\n" + textwrap.indent(RECIPES, "  "))
    assert load_recipes(path) == recipes


def test_recipes_missing_or_empty_file(tmp_path: Path) -> None:
    assert load_recipes(tmp_path / "recipes.yaml") == {}
    (tmp_path / "recipes.yaml").write_text("# nothing yet\n")
    assert load_recipes(tmp_path / "recipes.yaml") == {}
    assert load_recipes_for_roots([tmp_path, tmp_path / "none"]) == {}


BAD_RECIPES = [
    ("- case: gpt/a\n  node: 2\n", "recipes[0].node", "did you mean 'nodes'"),
    ("- case: gpt/a\n  nodes: 0\n", "recipes[0].nodes", "positive integer"),
    ("- case: gpt/a\n  ranks_per_node: two\n", "recipes[0].ranks_per_node", "positive integer"),
    ("- nodes: 1\n", "recipes[0].case", "required"),
    ("- case: just_a_name\n", "recipes[0].case", "<model>/<case>"),
    ("- case: gpt/a\n  time: soon\n", "recipes[0].time", "HH:MM:SS"),
    ("- case: gpt/a\n  scopes: [1]\n", "recipes[0].scopes", "list of non-empty strings"),
    ("- case: gpt/a\n  environments: [prod]\n", "recipes[0].environments", "'prod'"),
    ("- case: gpt/a\n- case: gpt/a\n", "recipes[1].case", "already has a recipe"),
    ("- gpt/a\n", "recipes[0]", "mapping"),
    ("case: gpt/a\n", "recipes", "list"),
    ("- case: [gpt/a\n", "line", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "key", "fragment"), BAD_RECIPES)
def test_recipe_errors(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    path = tmp_path / "recipes.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipes(path)
    assert "recipes.yaml: " in str(info.value) and key in info.value.key and fragment in str(info.value)


def test_recipes_across_roots_and_unknown_cases(tmp_path: Path, case_tree: Path) -> None:
    (case_tree / "recipes.yaml").write_text(RECIPES + "- case: gpt/gone\n")
    recipes = load_recipes_for_roots([case_tree])
    assert unknown_recipe_cases(recipes, discover_cases([case_tree])) == ["gpt/gone"]
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "recipes.yaml").write_text("- case: gpt/gone\n")
    with pytest.raises(ConfigError, match="gpt/gone: already has a recipe"):
        load_recipes_for_roots([case_tree, twin])


def test_case_is_a_frozen_dataclass(tmp_path: Path) -> None:
    case = load_case(write_case(tmp_path, MINIMAL))
    with pytest.raises(AttributeError):
        case.name = "other"  # type: ignore[misc]
    assert isinstance(case, Case)
