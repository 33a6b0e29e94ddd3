"""Regenerate the frozen checkpoint that inference (frozen-start) cases load from the artifact store.

    python -m orchestrator.workload.frozen_checkpoint [--artifacts DIR] [--train-iters N] [--keep-workdir]

Steps, all offline and deterministic:
  1. write the tiny TikToken vocabulary (`tokenizer_assets`) and tokenize its synthetic corpus into a
     Megatron indexed dataset (`.bin`/`.idx`) with Megatron's own TikTokenizer;
  2. train the tiny GPT with the project's TRAINING workload (`orchestrator.workload.pretrain_gpt`,
     Megatron's `pretrain()`), 8 ranks at TP2 PP2 DP2, saving a `torch_dist` checkpoint without
     optimizer or RNG state;
  3. copy the last iteration, the vocabulary and `provenance.json` (command, versions, sha256 of every
     file, date) to `artifacts/model/<FAMILY>/<NAME>/v1/`, the layout of Megatron's artifact store.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from orchestrator.fsutil import write_json_atomic, write_text_atomic
from orchestrator.workload import tokenizer_assets

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
FAMILY, NAME, VERSION = "mcore_gpt", "gpt_tiny", "v1"
VOCAB_FILE = "gpt_tiny_bpe512.vocab.json"
TRAINING_MODULE = "orchestrator.workload.pretrain_gpt"
NPROC = 8
TRAIN_ITERS = 100
SENTENCES_PER_DOCUMENT = 12

# The model: what inference cases get back through --use-checkpoint-args.
MODEL_ARGS = [
    "--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "256",
    "--seq-length", "256", "--max-position-embeddings", "256", "--position-embedding-type", "rope",
    "--no-persist-layer-norm", "--hidden-dropout", "0.0", "--attention-dropout", "0.0",
    "--attention-softmax-in-fp32", "--no-rope-fusion",
]
TOKENIZER_ARGS = [
    "--tokenizer-type", "TikTokenizer", "--tiktoken-pattern", "v2",
    "--tiktoken-num-special-tokens", str(tokenizer_assets.NUM_SPECIAL_TOKENS),
    "--vocab-size", str(tokenizer_assets.VOCAB_SIZE),
]


def model_dir(artifacts: Path = ARTIFACTS) -> Path:
    return artifacts / "model" / FAMILY / NAME / VERSION


def training_argv(vocab: Path, data_prefix: Path, save: Path, train_iters: int) -> list[str]:
    """Megatron flags for the training run (TP2 PP2 DP2 on 8 ranks)."""
    return [
        *MODEL_ARGS, *TOKENIZER_ARGS, "--tokenizer-model", str(vocab),
        "--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
        "--micro-batch-size", "2", "--global-batch-size", "16", "--train-iters", str(train_iters),
        "--lr", "3e-3", "--min-lr", "3e-4", "--lr-decay-style", "cosine", "--lr-warmup-iters", "5",
        "--weight-decay", "0.01", "--clip-grad", "1.0", "--seed", "1234",
        "--data-path", str(data_prefix), "--split", "100,0,0",
        "--eval-interval", str(train_iters), "--eval-iters", "0", "--log-interval", "10",
        "--distributed-backend", "gloo", "--transformer-impl", "local", "--deterministic-mode",
        "--no-gradient-accumulation-fusion",
        "--ckpt-format", "torch_dist", "--save", str(save), "--save-interval", str(train_iters),
        "--no-save-optim", "--no-save-rng",
    ]


def build_dataset(vocab: Path, prefix: Path) -> int:
    """Tokenize the synthetic corpus with Megatron's TikTokenizer into `<prefix>.bin/.idx`.

    Returns the number of tokens written.
    """
    from orchestrator.workload import cpu_backend

    cpu_backend.install()  # megatron.core imports need the triton stand-in
    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from megatron.core.tokenizers.text.libraries.tiktoken_tokenizer import TikTokenTokenizer

    tokenizer = TikTokenTokenizer(
        str(vocab), pattern="v2", vocab_size=tokenizer_assets.VOCAB_SIZE,
        num_special_tokens=tokenizer_assets.NUM_SPECIAL_TOKENS,
    )
    sentences = re.findall(r"[^.!?,]*[.!?,]", tokenizer_assets.corpus_text())
    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=numpy.int32)
    total = 0
    for start in range(0, len(sentences), SENTENCES_PER_DOCUMENT):
        text = "".join(sentences[start:start + SENTENCES_PER_DOCUMENT]).strip()
        ids = tokenizer.text_to_ids(text) + [tokenizer.eos_id]
        builder.add_document(ids, [len(ids)])
        total += len(ids)
    builder.finalize(str(prefix) + ".idx")
    return total


def run_training(argv: list[str], workdir: Path, nproc: int = NPROC) -> list[str]:
    """Launch the training workload under torch.distributed.run; returns the command."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", TRAINING_MODULE, *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_DEVICE_MAX_CONNECTIONS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = workdir / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"training failed (exit {proc.returncode}); log tail:\n{tail}")
    return cmd


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _repo_commit() -> str | None:
    """The project's commit (read-only git query); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "megatron-core", "tiktoken", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def _last_loss(log: Path) -> float | None:
    losses = re.findall(r"lm loss: ([0-9.E+-]+)", log.read_text())
    return float(losses[-1]) if losses else None


def freeze(save: Path, vocab: Path, dest: Path, provenance: dict) -> dict:
    """Copy the newest iteration + vocabulary to `dest` and write provenance.json there."""
    iteration = int((save / "latest_checkpointed_iteration.txt").read_text().strip())
    iter_dir = f"iter_{iteration:07d}"
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(save / iter_dir, dest / iter_dir)
    write_text_atomic(dest / "latest_checkpointed_iteration.txt", str(iteration))
    shutil.copyfile(vocab, dest / VOCAB_FILE)
    files = {
        str(p.relative_to(dest)): _sha256(p)
        for p in sorted(dest.rglob("*")) if p.is_file() and p.name != "provenance.json"
    }
    fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    provenance = {**provenance, "iteration": iteration, "files": files, "fingerprint": fingerprint}
    write_json_atomic(dest / "provenance.json", provenance)
    return provenance


def regenerate(artifacts: Path = ARTIFACTS, train_iters: int = TRAIN_ITERS, keep_workdir: bool = False) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="frozen_ckpt_"))
    try:
        vocab = workdir / VOCAB_FILE
        vocab_sha = tokenizer_assets.write_vocab(vocab)
        data_prefix = workdir / "data" / "corpus_text_document"
        data_prefix.parent.mkdir()
        num_tokens = build_dataset(vocab, data_prefix)
        save = workdir / "checkpoints"
        argv = training_argv(vocab, data_prefix, save, train_iters)
        cmd = run_training(argv, workdir)
        provenance = {
            "schema": 1,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "producer": "python -m orchestrator.workload.frozen_checkpoint",
            "training_command": cmd,
            "training_workload": TRAINING_MODULE,
            "layout": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 2,
                       "data_parallel_size": NPROC // 4, "world_size": NPROC},
            "env": {"OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "1"},
            "versions": _versions(),
            "repo_commit": _repo_commit(),
            "tokenizer": {"file": VOCAB_FILE, "sha256": vocab_sha, "type": "TikTokenizer",
                          "vocab_size": tokenizer_assets.VOCAB_SIZE,
                          "num_special_tokens": tokenizer_assets.NUM_SPECIAL_TOKENS},
            "dataset": {"source": "orchestrator.workload.tokenizer_assets.corpus_text",
                        "seed": tokenizer_assets.CORPUS_SEED,
                        "sentences": tokenizer_assets.CORPUS_SENTENCES, "tokens": num_tokens},
            "final_lm_loss": _last_loss(workdir / "train.log"),
        }
        return freeze(save, vocab, model_dir(artifacts), provenance)
    finally:
        if keep_workdir:
            print(f"frozen_checkpoint: work dir kept at {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=ARTIFACTS)
    parser.add_argument("--train-iters", type=int, default=TRAIN_ITERS)
    parser.add_argument("--keep-workdir", action="store_true")
    opts = parser.parse_args(argv)
    provenance = regenerate(opts.artifacts, opts.train_iters, opts.keep_workdir)
    print(f"frozen checkpoint: {model_dir(opts.artifacts)} iteration {provenance['iteration']} "
          f"fingerprint {provenance['fingerprint'][:16]} final lm loss {provenance['final_lm_loss']}")


if __name__ == "__main__":
    main()
