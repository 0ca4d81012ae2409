"""`tandem train` under torchrun: 2 CPU processes (gloo) train the same model as 1 process.

The 2-process side is this file run by torchrun (``python -m torch.distributed.run --standalone
--nproc_per_node 2 tests/test_distributed.py ROOT``): every case below runs in one launch,
so the test pays the process start-up once.

Tolerance: both runs see the same windows, block offsets and initial weights; only the order
of float32 reductions differs (each rank's loss and gradients are sums over its half, then
all-reduced, against one sum over the whole batch; matmuls over 2 rows instead of 4 may block
differently). Measured here: losses agree to 5e-8 relative and weights to 3e-7 after 8 AdamW
steps. The test allows 1e-5 (relative, losses; absolute, weights), while another seed moves
the losses by 3e-2, ranks without gradient averaging by 3e-2, and per-rank draft-vocabulary
CE normalisation (instead of the global count) by 3e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_corpus, tiny_large_folder
from torch import Tensor

from tandem.errors import TrainingError
from tandem.train.data import Corpus, TextTokenizer
from tandem.train.distributed import shard_of
from tandem.train.model import (
    LargeParts,
    TandemSmall,
    create_drafter,
    create_drafter_config,
    create_tandem,
    draft_vocabulary,
)
from tandem.train.reps import RepsReader, precompute
from tandem.train.trainer import TrainConfig, Trainer

LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5
BATCH = 4

# name -> (TrainConfig overrides, M_L's side: "live" = M_L in the loop, "reps" = a reps folder with a
# top-k teacher and a shared-head drafter, whose embedding and head are frozen). Every case trains a
# tandem M_S with a draft vocabulary (targets outside it are not counted) and a router, with variable
# block boundaries (offsets from the shared generator), CE then Distil, 2 micro-batches per step.
CASES = {
    "main": (dict(seed=0), "live"),
    "other-seed": (dict(seed=1), "live"),
    "resume": (dict(seed=0), "live"),  # resumes the 1-process checkpoint written at step 4
    "odd-batch": (dict(seed=0, batch_size=3), "live"),
    "reps": (dict(seed=0), "reps"),
}


def _config(**overrides: object) -> TrainConfig:
    values = dict(steps=8, batch_size=BATCH, seq_len=12, lr=3e-3, warmup_steps=1, block_length=3,
                  variable_boundaries=True, loss="ce-then-distil", grad_accum=2, router_batches=2,
                  router_steps=10, checkpoint_every=3, device="cpu",
                  autocast="off")  # float32: bf16 rounding would hide a real 1-vs-2-process difference
    return TrainConfig(**{**values, **overrides})


def _setup(root: Path) -> None:
    tiny_large_folder(root / "large", "llama", num_layers=2)
    tiny_corpus(root / "data")
    corpus = Corpus.build([root / "data"], TextTokenizer.load(root / "large"))
    precompute(root / "large", corpus.train, [2], root / "reps", seq_len=12, engine="torch", precision="fp32",
               top_k=8, progress=False)


def _trainer(root: Path, out: Path, kind: str, **overrides: object) -> tuple[Trainer, list[Tensor]]:
    from transformers import AutoModelForCausalLM

    if kind == "live":
        large = AutoModelForCausalLM.from_pretrained(root / "large", dtype=torch.float32).eval()
        corpus = Corpus.build([root / "data"], TextTokenizer.load(root / "large"))
        vocab = draft_vocabulary(corpus.train, 40, large.config.vocab_size)  # many targets outside it
        tandem = create_tandem(large, create_drafter_config(large.config, 1, 32), router=True, seed=3,
                               draft_vocab=vocab)
        trainer = Trainer(tandem, large, corpus, _config(**overrides), out)
    else:
        parts, reps = LargeParts.from_folder(root / "large"), RepsReader(root / "reps")
        small = create_drafter(parts, create_drafter_config(parts.config, 1, parts.config.hidden_size),
                               freeze_shared=True)
        vocab = draft_vocabulary(torch.from_numpy(np.stack(list(reps.tokens()))).long(), 40, parts.config.vocab_size)
        tandem = create_tandem(parts, small, "2", router=True, seed=3, draft_vocab=vocab)
        trainer = Trainer(tandem, parts, None, _config(**overrides), out, reps=reps)
    seen: list[Tensor] = []
    draw = trainer.next_batch

    def recording(*args: object, **kwargs: object) -> object:
        batch = draw(*args, **kwargs)
        seen.append(batch.inputs.clone())
        return batch

    trainer.next_batch = recording
    return trainer, seen


def run_case(root: Path, name: str, out: Path, stop_after: int | None = None) -> dict:
    """Train case ``name`` into ``out``; the step losses, the inputs each micro-batch held, and
    the router fit's error."""
    overrides, kind = CASES[name]
    trainer, seen = _trainer(root, out, kind, **overrides)
    losses = trainer.train(progress=False, stop_after=stop_after)
    seen_train = list(seen)
    error = trainer.fit_router() if stop_after is None else None
    if stop_after is None:
        trainer.save()
    return {"losses": losses, "seen": seen_train, "router_error": error}


CLI_ARGS = ["train", "--mode", "plain", "--steps", "5", "--batch-size", "4", "--seq-len", "8", "--layers", "1",
            "--hidden", "32", "--router-steps", "5", "--router-batches", "2", "--warmup-steps", "1",
            "--device", "cpu", "--checkpoint-every", "2", "--autocast", "off"]


def run_cli(root: Path, out: Path) -> int:
    from tandem.cli import main

    return main([*CLI_ARGS, "--large", str(root / "large"), "--data", str(root / "data"), "--out", str(out)])


def worker(root: Path) -> None:
    """One torchrun process: every case, results of rank r under ``root/dist/rank{r}``."""
    rank = int(os.environ["RANK"])
    mine = root / "dist" / f"rank{rank}"
    mine.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in CASES:
        out = root / ("single-resume" if name == "resume" else f"dist-{name}")
        try:
            results[name] = run_case(root, name, out)
        except TrainingError as exc:
            results[name] = {"error": str(exc)}
    results["cli"] = {"rc": run_cli(root, root / "dist-cli")}
    torch.save(results, mine / "results.pt")


def _launch(root: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(root)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return [torch.load(root / "dist" / f"rank{r}" / "results.pt", weights_only=False) for r in range(2)]


def _weights(folder: Path) -> dict[str, Tensor]:
    files = sorted(folder.glob("*.safetensors"))
    assert files, folder
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def _assert_close_weights(a: Path, b: Path) -> float:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= WEIGHT_ATOL, (a, b, worst)
    return worst


def _max_rel(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker (OMP_NUM_THREADS=1); tiny ops run far faster so
    try:
        _setup(root)
        single = run_case(root, "main", root / "single-main")
        single_reps = run_case(root, "reps", root / "single-reps")
        run_case(root, "resume", root / "single-resume", stop_after=4)  # the checkpoint the 2 processes resume
        assert run_cli(root, root / "single-cli") == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "single": single, "single-reps": single_reps, "ranks": _launch(root)}


def test_two_processes_train_what_one_does(runs):
    root, single, (r0, r1) = runs["root"], runs["single"], runs["ranks"]
    two = r0["main"]
    # each rank held its half of every global micro-batch: 8 steps x 2 micro-batches
    assert len(single["seen"]) == len(r0["main"]["seen"]) == len(r1["main"]["seen"]) == 16
    for whole, a, b in zip(single["seen"], r0["main"]["seen"], r1["main"]["seen"], strict=True):
        assert a.shape[0] == b.shape[0] == BATCH // 2
        assert torch.equal(torch.cat([a, b]), whole)
    # the step losses are the global batch's, on every rank
    rel = _max_rel(two["losses"], single["losses"])
    print(f"\nmax relative loss difference, 1 vs 2 processes: {rel:.2e}")
    assert rel <= LOSS_RTOL
    assert r1["main"]["losses"] == two["losses"]
    assert r0["main"]["router_error"] == r1["main"]["router_error"]  # fitted on rank 0, broadcast
    worst = _assert_close_weights(root / "dist-main", root / "single-main")
    print(f"max weight difference, 1 vs 2 processes: {worst:.2e}")
    # same formats: the checkpoint's keys (no "module." prefix) and the saved files
    ck1 = torch.load(root / "single-main" / "checkpoint.pt", weights_only=False)
    ck2 = torch.load(root / "dist-main" / "checkpoint.pt", weights_only=False)
    assert ck1.keys() == ck2.keys() and ck1["model"].keys() == ck2["model"].keys()
    assert not any(k.startswith("module.") for k in ck2["model"]) and ck2["step"] == 8
    assert sorted(p.name for p in (root / "dist-main").iterdir()) == sorted(
        p.name for p in (root / "single-main").iterdir())
    assert TandemSmall.from_pretrained(root / "dist-main").router is not None


def test_two_processes_train_from_reps(runs):
    """From a reps folder (top-k teacher) with a frozen shared embedding and head, outside DDP."""
    root, single, (r0, r1) = runs["root"], runs["single-reps"], runs["ranks"]
    for whole, a, b in zip(single["seen"], r0["reps"]["seen"], r1["reps"]["seen"], strict=True):
        assert torch.equal(torch.cat([a, b]), whole)
    rel = _max_rel(r0["reps"]["losses"], single["losses"])
    print(f"\nmax relative loss difference from reps, 1 vs 2 processes: {rel:.2e}")
    assert rel <= LOSS_RTOL and r1["reps"]["losses"] == r0["reps"]["losses"]
    _assert_close_weights(root / "dist-reps", root / "single-reps")
    ck1 = torch.load(root / "single-reps" / "checkpoint.pt", weights_only=False)["model"]
    ck2 = torch.load(root / "dist-reps" / "checkpoint.pt", weights_only=False)["model"]
    assert ck1.keys() == ck2.keys() and not any("embed_tokens" in k or "lm_head" in k for k in ck2)


def test_a_different_seed_differs(runs):
    """The comparison above can fail: another seed moves the losses and weights far beyond it."""
    root, single, (r0, _) = runs["root"], runs["single"], runs["ranks"]
    rel = _max_rel(r0["other-seed"]["losses"], single["losses"])
    print(f"\nmax relative loss difference, seed 1 vs seed 0: {rel:.2e}")
    assert rel > 100 * LOSS_RTOL
    with pytest.raises(AssertionError):
        _assert_close_weights(root / "dist-other-seed", root / "single-main")


def test_two_processes_resume_a_one_process_checkpoint(runs):
    root, single, (r0, r1) = runs["root"], runs["single"], runs["ranks"]
    assert len(r0["resume"]["losses"]) == 4 and r0["resume"]["losses"] == r1["resume"]["losses"]
    assert _max_rel(r0["resume"]["losses"], single["losses"][4:]) <= LOSS_RTOL
    _assert_close_weights(root / "single-resume", root / "single-main")


def test_cli_under_torchrun(runs):
    root, (r0, r1) = runs["root"], runs["ranks"]
    assert r0["cli"]["rc"] == r1["cli"]["rc"] == 0
    _assert_close_weights(root / "dist-cli", root / "single-cli")  # plain M_S + its router
    one = json.loads((root / "single-cli" / "training_summary.json").read_text())
    two = json.loads((root / "dist-cli" / "training_summary.json").read_text())
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=LOSS_RTOL)


def test_global_batch_must_split_evenly(runs):
    for rank in runs["ranks"]:
        message = rank["odd-batch"]["error"]
        assert "--batch-size 3 is the global batch" in message and "not divisible by 2" in message
    assert shard_of(6, 1, 3) == shard_of(6, 1, 3) and shard_of(6, 2, 3).take(torch.arange(6)).tolist() == [4, 5]
    with pytest.raises(TrainingError, match="use a multiple of 4 \\(e.g. 4 or 8\\)"):
        shard_of(6, 0, 4)
    with pytest.raises(TrainingError, match="use a multiple of 4 \\(e.g. 4\\)"):
        shard_of(1, 0, 4)


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
