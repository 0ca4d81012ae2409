"""M_L's representations precomputed to shards (`tandem reps`) and training from them; the
shared-head drafter; the reduced draft vocabulary chosen from the training data.

Oracles: the ONNX Runtime engine against the PyTorch engine (which is what training with M_L
in the loop computes); a resumed precompute against an uninterrupted one, byte for byte; the
teacher rebuilt from shards against M_L's own logits; the exported bundle of a drafter
trained from shards against `large` decoding, token for token.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_corpus, tiny_large_folder

from tandem._core import read_manifest
from tandem.errors import TrainingError, UntrainedBlockLengthWarning
from tandem.train.data import Corpus, TextTokenizer
from tandem.train.model import (
    LargeParts,
    create_drafter,
    create_drafter_config,
    create_tandem,
    draft_vocabulary,
    empty_past,
    large_step,
)
from tandem.train.reps import REPS_FILE, RepsReader, RepsSpec, precompute, shard_file
from tandem.train.trainer import Teacher, TrainConfig, Trainer, distil_loss, hard_loss

SEQ = 32


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("reps")
    large = tiny_large_folder(tmp / "large", num_layers=3)
    data = tiny_corpus(tmp / "data", num_files=12)
    corpus = Corpus.build([data], TextTokenizer.load(large), 0.1)
    return {"tmp": tmp, "large": large, "data": data, "corpus": corpus}


def _run(setup: dict, out: Path, **kwargs: object) -> RepsSpec:
    options = dict(seq_len=SEQ, engine="torch", precision="fp32", distil="topk", top_k=8, shard_tokens=4 * SEQ,
                   max_tokens=24 * SEQ, progress=False)
    options.update(kwargs)
    return precompute(setup["large"], setup["corpus"].train, [2], out, **options)


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.load(p) for p in sorted(folder.glob("shard-*.npy"))}


def test_shards_hold_what_large_computes(setup: dict):
    """Stored windows are consecutive training windows; their layer-2 representations and top-k
    log-probabilities are M_L's (float16 rounding), and the ORT engine agrees with PyTorch."""
    from transformers import AutoModelForCausalLM

    spec = _run(setup, setup["tmp"] / "torch")
    assert spec.complete_shards == spec.num_shards == 6 and spec.layers == [2]
    reader = RepsReader(setup["tmp"] / "torch")
    assert reader.num_tokens == 24 * SEQ
    large = AutoModelForCausalLM.from_pretrained(setup["large"], dtype=torch.float32).eval()
    windows = setup["corpus"].train[: 24 * (SEQ + 1)].view(24, SEQ + 1)
    for i in (0, 5, 23):
        shard, row = divmod(i, spec.windows_per_shard)
        arrays = reader.shards[shard]
        assert np.array_equal(arrays["tokens"][row], windows[i].numpy())
        with torch.no_grad():
            logits, _, reps = large_step(large, windows[i : i + 1, :-1], empty_past(large.config), [2])
        torch.testing.assert_close(torch.from_numpy(np.array(arrays["rep-2"][row])).float(), reps[0][0],
                                   atol=2e-3, rtol=2e-3)
        top = torch.log_softmax(logits[0], -1).topk(8, -1)
        assert torch.equal(torch.from_numpy(np.array(arrays["top-ids"][row])).long(), top.indices)
        torch.testing.assert_close(torch.from_numpy(np.array(arrays["top-logp"][row])).float(), top.values,
                                   atol=1e-2, rtol=1e-3)
    _run(setup, setup["tmp"] / "ort", engine="onnxruntime", precision="fp32")
    ours, theirs = _arrays(setup["tmp"] / "torch"), _arrays(setup["tmp"] / "ort")
    assert ours.keys() == theirs.keys()
    for name in ours:
        if "rep-" in name or "logp" in name:
            np.testing.assert_allclose(theirs[name].astype(np.float32), ours[name].astype(np.float32), atol=1e-2)
        elif "tokens" in name:
            assert np.array_equal(theirs[name], ours[name])


def test_an_interrupted_precompute_resumes_to_the_same_files(setup: dict, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]):
    from tandem.train import reps as reps_module

    straight = _arrays(setup["tmp"] / "torch") if (setup["tmp"] / "torch").exists() else None
    if straight is None:
        _run(setup, setup["tmp"] / "torch")
        straight = _arrays(setup["tmp"] / "torch")
    out = setup["tmp"] / "interrupted"
    calls = {"n": 0}
    original = reps_module.TorchEngine.__call__

    def flaky(self, *args, **kwargs):  # Ctrl-C in the middle of shard 3 (windows 12..15)
        calls["n"] += 1
        if calls["n"] == 14:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(reps_module.TorchEngine, "__call__", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(setup, out)
    monkeypatch.undo()
    assert RepsSpec.load(out).complete_shards == 3
    assert not shard_file(out, 3, "tokens").exists()  # the interrupted shard is not complete
    reader = RepsReader(out)  # a partial folder can be read (3 shards), with a warning
    assert reader.num_windows == 12 and "3 of 6 shards" in capsys.readouterr().out
    _run(setup, out)
    resumed = _arrays(out)
    assert resumed.keys() == straight.keys()
    for name, array in straight.items():
        assert np.array_equal(resumed[name], array), name
    assert not list(out.glob("*.partial")) and not list(out.glob(".engine-*"))
    recorded = RepsSpec.load(out)
    assert recorded.tokens_per_second and recorded.extra.get("peak_rss_mb")
    again = _run(setup, out)  # a rerun of a complete folder computes nothing and keeps its figures
    assert (again.tokens_per_second, again.extra) == (recorded.tokens_per_second, recorded.extra)
    assert RepsSpec.load(out).tokens_per_second == recorded.tokens_per_second


def test_a_folder_of_another_run_is_refused(setup: dict):
    out = setup["tmp"] / "other"
    _run(setup, out, max_tokens=4 * SEQ)
    with pytest.raises(TrainingError, match="another run.*layers"):
        precompute(setup["large"], setup["corpus"].train, [1], out, seq_len=SEQ, engine="torch", precision="fp32",
                   distil="topk", top_k=8, shard_tokens=4 * SEQ, max_tokens=4 * SEQ, progress=False)
    (out / REPS_FILE).write_text("{not json")
    with pytest.raises(TrainingError, match="damaged"):
        RepsReader(out)
    with pytest.raises(TrainingError, match="not a reps folder"):
        RepsReader(setup["tmp"])


def test_teachers_from_shards_match_large(setup: dict):
    """A `hidden` teacher put through M_L's head gives M_L's logits; a top-k teacher with k = V
    gives the full soft cross-entropy; with a draft vocabulary, CE ignores targets outside it."""
    from transformers import AutoModelForCausalLM

    out = setup["tmp"] / "hidden"
    spec = _run(setup, out, distil="hidden", max_tokens=4 * SEQ)
    assert spec.layers == [2, 3]  # the drafter's layer + the final hidden state (L = 3)
    reader = RepsReader(out)
    batch = reader.sample(2, torch.Generator().manual_seed(0), [2], teacher=True)
    parts = LargeParts.from_folder(setup["large"])
    large = AutoModelForCausalLM.from_pretrained(setup["large"], dtype=torch.float32).eval()
    with torch.no_grad():
        logits, _, _ = large_step(large, batch.windows[:, :-1], empty_past(large.config, 2), [])
    torch.testing.assert_close(torch.nn.functional.linear(batch.hidden, parts.head), logits, atol=2e-2, rtol=1e-2)

    torch.manual_seed(0)
    student = torch.randn(2, SEQ, parts.config.vocab_size)
    full = Teacher(logits=logits)
    v = parts.config.vocab_size
    top = torch.log_softmax(logits, -1).topk(v, -1)
    sparse = Teacher(top_ids=top.indices, top_logp=top.values)
    targets = batch.windows[:, 1:]
    torch.testing.assert_close(distil_loss(student, targets, sparse), distil_loss(student, targets, full))
    q = torch.softmax(student, -1)
    torch.testing.assert_close(sparse.overlap(q, None, None), full.overlap(q, None, None))

    columns = torch.tensor([0, 3, 7, 9])
    to_column = torch.full((v,), -1)
    to_column[columns] = torch.arange(4)
    sub = student[..., columns]
    ids = torch.tensor([[3, 5, 9, 0]])
    expected = torch.nn.functional.cross_entropy(sub[0, :4][[0, 2, 3]], torch.tensor([1, 3, 0]))
    torch.testing.assert_close(hard_loss(sub[:1, :4], ids, to_column), expected)


def test_draft_vocabulary_is_the_most_frequent_tokens():
    stream = torch.tensor([5, 5, 5, 7, 7, 2, 9, 9, 9, 9, 1])
    assert draft_vocabulary(stream, 3, 12) == [5, 7, 9]
    assert draft_vocabulary(stream, 3, 12, always=[0]) == [0, 5, 9]
    assert draft_vocabulary(stream, 4, 12) == [1, 5, 7, 9]  # ties: the smaller id
    with pytest.raises(TrainingError, match="not below"):
        draft_vocabulary(stream, 12, 12)


def test_shared_head_stays_frozen_and_is_not_checkpointed(setup: dict):
    """A shared-head drafter trained from shards: M_L's embedding and head are unchanged after
    training (compared weight for weight), absent from the checkpoint, and a resumed run
    restores them from M_L."""
    reps = RepsReader(setup["tmp"] / "torch") if (setup["tmp"] / "torch").exists() else None
    if reps is None:
        _run(setup, setup["tmp"] / "torch")
        reps = RepsReader(setup["tmp"] / "torch")
    parts = LargeParts.from_folder(setup["large"])

    def build() -> Trainer:
        config = create_drafter_config(parts.config, 1, parts.config.hidden_size)
        small = create_drafter(parts, config, seed=0, freeze_shared=True)
        vocab = draft_vocabulary(torch.from_numpy(np.stack(list(reps.tokens()))).long(), 64,
                                 parts.config.vocab_size, always=[0])
        tandem = create_tandem(parts, small, "2", router=True, seed=0, draft_vocab=vocab)
        cfg = TrainConfig(steps=6, batch_size=4, seq_len=SEQ, warmup_steps=1, router_batches=2, router_steps=20,
                          checkpoint_every=0, device="cpu")
        return Trainer(tandem, parts, None, cfg, setup["tmp"] / "shared", reps=reps)

    trainer = build()
    first = trainer.compute_loss(trainer.next_batch(torch.Generator().manual_seed(1), True), "distil").item()
    losses = trainer.train(progress=False)
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    small = trainer.model.small
    assert torch.equal(small.get_input_embeddings().weight, parts.embedding)
    assert torch.equal(small.get_output_embeddings().weight, parts.head)
    state = torch.load(trainer.checkpoint_path, weights_only=False)["model"]
    assert not any("embed_tokens" in k or "lm_head" in k for k in state)
    assert "small.model.norm.weight" in state and "projections.0.weight" in state
    resumed = build()
    resumed.load_checkpoint()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert trainer.fit_router() is not None  # router targets from the top-k teacher, on draft columns
    assert math.isfinite(first)


def test_shards_too_short_or_missing_layers_are_refused(setup: dict):
    reps = RepsReader(setup["tmp"] / "torch") if (setup["tmp"] / "torch").exists() else None
    if reps is None:
        _run(setup, setup["tmp"] / "torch")
        reps = RepsReader(setup["tmp"] / "torch")
    parts = LargeParts.from_folder(setup["large"])
    tandem = create_tandem(parts, create_drafter_config(parts.config, 1, 32), "1")
    with pytest.raises(TrainingError, match="not \\[1\\]"):
        Trainer(tandem, parts, None, TrainConfig(seq_len=SEQ, device="cpu"), setup["tmp"] / "x", reps=reps)
    tandem = create_tandem(parts, create_drafter_config(parts.config, 1, 32), "2")
    with pytest.raises(TrainingError, match="longer than the stored windows"):
        Trainer(tandem, parts, None, TrainConfig(seq_len=2 * SEQ, device="cpu"), setup["tmp"] / "x", reps=reps)


def test_cli_reps_train_export_speed_equals_large(setup: dict, tmp_path: Path):
    """The README's pipeline on a tiny M_L: `tandem reps` (ONNX Runtime, int4) → `tandem train
    --reps --shared-head --draft-vocab` → `tandem export --precision int4` → `speed` decodes
    exactly what `large` decodes."""
    from tandem.cli import main
    from tandem.runtime import load

    reps = tmp_path / "reps"
    assert main(["reps", "--large", str(setup["large"]), "--data", str(setup["data"]), "--rep-layers", "2",
                 "--out", str(reps), "--seq-len", str(SEQ), "--max-tokens", str(16 * SEQ),
                 "--shard-tokens", str(8 * SEQ), "--heldout-fraction", "0.1"]) == 0
    assert json.loads((reps / REPS_FILE).read_text())["complete_shards"] == 2
    drafter = tmp_path / "tandem"
    assert main(["train", "--mode", "tandem", "--large", str(setup["large"]), "--reps", str(reps),
                 "--layers", "1", "--shared-head", "--draft-vocab", "60", "--layer-assignment", "2",
                 "--steps", "8", "--batch-size", "4", "--seq-len", str(SEQ), "--out", str(drafter),
                 "--router-batches", "2", "--router-steps", "10"]) == 0
    # the routers refit from the same shards (top-k teacher, draft vocabulary), for another temperature
    assert main(["fit-router", "--drafter", str(drafter), "--large", str(setup["large"]), "--reps", str(reps),
                 "--router-temperature", "0.8", "--router-batches", "2", "--router-steps", "10"]) == 0
    config = json.loads((drafter / "tandem_config.json").read_text())
    assert len(config["draft_vocab"]) == 60 and 0 in config["draft_vocab"]
    assert config["router"]["sampled_temperature"] == 0.8
    bundle = tmp_path / "bundle"
    assert main(["export", "--large", str(setup["large"]), "--tandem", str(drafter), "--out", str(bundle),
                 "--precision", "int4", "--context-length", "128"]) == 0
    manifest = read_manifest(str(bundle))  # the bundle knows the γ its drafter was trained at (train's default, 2)
    assert manifest.graphs["tandem_drafter"].trained_block_length == 2 and manifest.default_block_length == 2
    model = load(bundle, threads=1)
    prompt = TextTokenizer.load(setup["large"]).tokenizer.encode("def f0_3(x):\n    return").ids
    want = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True).ids
    for block in (1, 2, None):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning up to the trained γ
            got = model.generate(prompt, mode="speed", block_length=block, max_new_tokens=24, ignore_eos=True)
        assert got.ids == want, block
    assert model.generate(prompt, mode="speed", block_length="auto", max_block_length=2, max_new_tokens=24,
                          ignore_eos=True).ids == want
    # adaptive speed drafts no further than the trained γ unless asked (and then warns); vanilla up to the maximum
    resolve = model._model.resolve
    assert resolve(model.options(mode="speed", block_length="auto")).max_block_length == 2
    assert resolve(model.options(mode="speed", block_length="auto", min_block_length=3)).max_block_length == 3
    assert resolve(model.options(mode="speed", block_length="auto", max_block_length=5)).max_block_length == 5
    assert resolve(model.options(mode="speed", block_length=1)).max_block_length == manifest.max_block_length
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.generate(prompt, mode="speed", block_length="auto", max_new_tokens=24, ignore_eos=True).ids == want
    with pytest.warns(UntrainedBlockLengthWarning, match="trained at"):
        model.generate(prompt, mode="speed", block_length="auto", max_block_length=3, max_new_tokens=4)
    with pytest.warns(UntrainedBlockLengthWarning, match="trained at"):
        got = model.generate(prompt, mode="speed", block_length=3, max_new_tokens=24, ignore_eos=True)
    assert got.ids == want


def test_cli_reps_train_plain_export_vanilla_equals_large(setup: dict, tmp_path: Path):
    """The same pipeline for the plain drafter: `tandem train --mode plain --reps --shared-head
    --draft-vocab` (top-k teacher on the vocabulary's columns) → `tandem export --precision int4`
    → `vanilla` decodes exactly what `large` decodes, with the drafter's graph over its 60 tokens."""
    from safetensors.torch import load_file

    from tandem.cli import main
    from tandem.runtime import load
    from tandem.train.model import DRAFT_VOCAB_FILE

    reps = setup["tmp"] / "torch"
    if not reps.exists():
        _run(setup, reps)
    drafter = tmp_path / "plain"
    assert main(["train", "--mode", "plain", "--large", str(setup["large"]), "--reps", str(reps),
                 "--layers", "1", "--shared-head", "--draft-vocab", "60", "--steps", "8", "--batch-size", "4",
                 "--seq-len", str(SEQ), "--out", str(drafter), "--router-batches", "2", "--router-steps", "10"]) == 0
    vocab = json.loads((drafter / DRAFT_VOCAB_FILE).read_text())["draft_vocab"]
    assert len(vocab) == 60 and 0 in vocab
    parts = LargeParts.from_folder(setup["large"])  # the shared head stayed M_L's
    assert torch.equal(load_file(drafter / "model.safetensors")["model.embed_tokens.weight"], parts.embedding)
    bundle = tmp_path / "bundle"
    assert main(["export", "--large", str(setup["large"]), "--plain", str(drafter), "--out", str(bundle),
                 "--precision", "int4", "--context-length", "128"]) == 0
    spec = read_manifest(str(bundle)).graphs["plain_drafter"]
    assert spec.draft_vocab == vocab and spec.logits_size == 60 and spec.router_score_greedy and spec.router_score_sampled
    model = load(bundle, threads=1)
    prompt = TextTokenizer.load(setup["large"]).tokenizer.encode("def f0_3(x):\n    return").ids
    want = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True).ids
    for block in (1, 3, "auto"):
        got = model.generate(prompt, mode="vanilla", block_length=block, max_new_tokens=24, ignore_eos=True)
        assert got.ids == want, block
        # adaptive: this drafter's router expects ~0.4 % of drafts accepted, so the cost rule may keep
        # none, but it still asks the drafter every round
        assert got.stats["drafted" if block != "auto" else "drafter_calls"] > 0


def test_block_size_is_part_of_the_run(setup: dict):
    """ONNX Runtime int4 reps record their block size: a resume at another one is refused, as
    is a block size where M_L's weights have no blocks; reps.json without the key (written
    before it existed) reads as the default 32."""
    out = setup["tmp"] / "blocks"
    spec = _run(setup, out, engine="onnxruntime", precision="int4", block_size=64, max_tokens=4 * SEQ)
    assert spec.block_size == 64 and RepsSpec.load(out).block_size == 64
    with pytest.raises(TrainingError, match="another run.*block_size"):
        _run(setup, out, engine="onnxruntime", precision="int4", block_size=32, max_tokens=4 * SEQ)
    with pytest.raises(TrainingError, match="block_size 64 applies to int8/int4 .* not fp32"):
        _run(setup, setup["tmp"] / "never", engine="torch", precision="fp32", block_size=64)
    data = json.loads((out / REPS_FILE).read_text())
    del data["block_size"]
    (out / REPS_FILE).write_text(json.dumps(data))
    assert RepsSpec.load(out).block_size == 32
