"""Training: loss formula, loss decreases, exact resume, router, data split, CLI, evaluation."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_corpus, tiny_large, tiny_large_folder, tiny_tokenizer

from tandem.errors import TrainingError
from tandem.train.cli import add_eval_parser, add_train_parser
from tandem.train.data import Corpus, TextTokenizer, consecutive_windows
from tandem.train.evaluate import evaluate, format_table
from tandem.train.model import (
    DRAFT_VOCAB_FILE,
    TandemSmall,
    create_drafter,
    create_drafter_config,
    create_tandem,
    draft_vocabulary,
    empty_past,
    large_step,
    load_plain_drafter,
    set_draft_vocab,
)
from tandem.train.router import Router, RouterConfig, fit_router, total_variation
from tandem.train.trainer import (
    TrainConfig,
    Trainer,
    distil_loss,
    learning_rate_factor,
    use_autocast,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    root = tmp_path_factory.mktemp("data")
    return Corpus.build([tiny_corpus(root / "files")], TextTokenizer.load(tiny_tokenizer(root / "tok")))


def tiny_config(**overrides) -> TrainConfig:
    values = dict(steps=6, batch_size=4, seq_len=12, lr=3e-3, warmup_steps=1, block_length=2,
                  router_batches=2, router_steps=10, checkpoint_every=0, device="cpu",
                  autocast="off")  # float32: these tests compare numbers (test_autocast_setting covers bf16)
    return TrainConfig(**{**values, **overrides})


def make_tandem(router: bool = False) -> tuple:
    large = tiny_large("llama", num_layers=2)
    return large, create_tandem(large, create_drafter_config(large.config, 1, 32), router=router, seed=3)


def test_distil_loss_formula():
    torch.manual_seed(0)
    logits, large_logits = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    targets = torch.randint(0, 7, (2, 3))
    ce = F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1))
    p = large_logits.softmax(-1)
    soft = -(p * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(distil_loss(logits, targets, large_logits), 0.5 * ce + 0.5 * soft)
    # with M_L's own logits, the soft term is M_L's entropy + KL = entropy: minimum over M_S
    torch.testing.assert_close(distil_loss(large_logits, targets, large_logits, weight=1.0),
                               -(p * p.log()).sum(-1).mean())


def test_schedule_and_loss_kinds():
    cfg = tiny_config(steps=10, warmup_steps=2, ce_fraction=0.3)
    assert learning_rate_factor(0, cfg) == 0.5 and learning_rate_factor(1, cfg) == 1.0
    assert learning_rate_factor(10, cfg) == pytest.approx(cfg.min_lr_ratio)
    large, tandem = make_tandem()
    trainer = Trainer(tandem, large, Corpus(torch.arange(100), torch.arange(10)), cfg, "/tmp/unused")
    assert [trainer.loss_kind(s) for s in range(10)] == ["ce"] * 3 + ["distil"] * 7


@pytest.mark.parametrize("variable", [False, True])
def test_tandem_training_decreases_loss(corpus, tmp_path, variable):
    large, tandem = make_tandem()
    cfg = tiny_config(steps=30, loss="distil", variable_boundaries=variable, grad_accum=2)
    trainer = Trainer(tandem, large, corpus, cfg, tmp_path)
    windows = consecutive_windows(corpus.train, cfg.seq_len + 1, 8)
    large_before = {k: v.clone() for k, v in large.state_dict().items()}
    with torch.no_grad():
        before = trainer.compute_loss(trainer.live_batch(windows, True), "distil").item()
    trainer.train(progress=False)
    with torch.no_grad():
        after = trainer.compute_loss(trainer.live_batch(windows, True), "distil").item()
    assert after < before - 0.1, (before, after)
    # M_L stays frozen: every weight bit for bit as before, and no gradient reached it
    for name, value in large.state_dict().items():
        torch.testing.assert_close(value, large_before[name], atol=0, rtol=0, msg=name)
    assert not any(p.grad is not None for p in large.parameters())


def test_autocast_setting(corpus, tmp_path):
    cpu = torch.device("cpu")
    assert use_autocast("bf16", cpu) and not use_autocast("off", cpu)
    assert use_autocast("auto", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with pytest.raises(TrainingError, match="autocast must be one of auto, bf16, off"):
        use_autocast("fp16", cpu)
    # under bf16 autocast the drafter's matmuls run in bfloat16, its weights and the loss stay float32
    large, tandem = make_tandem()
    trainer = Trainer(tandem, large, corpus, tiny_config(steps=1, autocast="bf16"), tmp_path)
    batch = trainer.live_batch(consecutive_windows(corpus.train, 9, 2), True)
    assert trainer.drafter_logits(batch, torch.Generator().manual_seed(0)).dtype == torch.bfloat16
    assert trainer.compute_loss(batch, "distil").dtype == torch.float32
    off = Trainer(tandem, large, corpus, tiny_config(steps=1, autocast="off"), tmp_path / "off")
    assert off.drafter_logits(batch, torch.Generator().manual_seed(0)).dtype == torch.float32
    trainer.train(progress=False)
    assert all(p.dtype == torch.float32 for p in tandem.parameters())


def test_resume_continues_identically(corpus, tmp_path):
    def run(folder, stop_after=None) -> dict:
        large, tandem = make_tandem()
        trainer = Trainer(tandem, large, corpus, tiny_config(steps=4, loss="ce-then-distil"), folder)
        trainer.train(stop_after=stop_after, progress=False)
        return trainer.model.state_dict()

    straight = run(tmp_path / "a")
    run(tmp_path / "b", stop_after=2)  # interrupted after 2 of 4 steps: checkpoint written
    resumed = run(tmp_path / "b")  # a fresh process state resumes from it
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0, msg=name)
    with pytest.raises(TrainingError, match="other settings"):
        large, tandem = make_tandem()
        Trainer(tandem, large, corpus, tiny_config(steps=4, lr=1.0), tmp_path / "b").train(progress=False)
    large, _ = make_tandem()
    other_layer = create_tandem(large, create_drafter_config(large.config, 1, 32), layer_assignment="1", seed=3)
    with pytest.raises(TrainingError, match="another layer assignment"):
        Trainer(other_layer, large, corpus, tiny_config(steps=4, loss="ce-then-distil"), tmp_path / "b").train(
            progress=False)


def test_plain_and_lm_modes(corpus, tmp_path):
    large = tiny_large("qwen2", num_layers=2, tie=True)
    small = create_tandem(large, create_drafter_config(large.config, 1, 32)).small
    router = Router(RouterConfig(embed_dim=32))
    trainer = Trainer(small, large, corpus, tiny_config(mode="plain"), tmp_path / "plain", router)
    losses = trainer.train(progress=False)
    fit = trainer.fit_router()
    assert fit.pairs == 2 * 4 * 12 and 0.0 <= fit.greedy_accept_rate <= 1.0 and fit.sampled_mean_abs_error < 0.5
    assert len(losses) == 6
    trainer.save()
    assert Router.load(tmp_path / "plain") is not None
    lm = Trainer(tiny_large("llama"), None, corpus, tiny_config(mode="lm"), tmp_path / "lm")
    assert len(lm.train(progress=False)) == 6
    with pytest.raises(TrainingError, match="no M_L to distil"):
        Trainer(tiny_large("llama"), None, corpus, tiny_config(mode="lm", loss="distil"), tmp_path / "x")
    with pytest.raises(TrainingError, match="needs M_L"):
        Trainer(small, None, corpus, tiny_config(mode="plain"), tmp_path / "y")


def test_plain_draft_vocabulary_trains_on_its_columns(corpus, tmp_path):
    """A plain drafter with a draft vocabulary: training computes the head's rows of those tokens
    only (no gradient reaches the others), its Distil loss is the full model's restricted as the
    tandem M_S's is (targets outside not counted, the teacher's mass outside dropped), it learns,
    and the vocabulary is saved with it, loaded back, evaluated with and checked on resume."""
    large = tiny_large("llama", num_layers=2)
    vocab = draft_vocabulary(corpus.train, 16, large.config.vocab_size, always=[0])

    def build(folder, draft_vocab=vocab) -> Trainer:
        small = set_draft_vocab(create_drafter(large, create_drafter_config(large.config, 1, 32), seed=3),
                                draft_vocab)
        cfg = tiny_config(mode="plain", steps=30, loss="distil")
        return Trainer(small, large, corpus, cfg, folder, Router(RouterConfig(embed_dim=32)))

    trainer = build(tmp_path / "plain")
    small, ids = trainer.model, torch.tensor(vocab)
    windows = consecutive_windows(corpus.train, trainer.config.seq_len + 1, 8)
    batch = trainer.live_batch(windows, True)
    logits = trainer.drafter_logits(batch, torch.Generator())
    full = small(input_ids=batch.inputs).logits
    assert logits.shape == (*batch.inputs.shape, len(vocab))
    torch.testing.assert_close(logits, full[..., ids])
    column = torch.full((large.config.vocab_size,), -1)
    column[ids] = torch.arange(len(vocab))
    inside = column[batch.targets] >= 0
    assert 0 < inside.sum() < inside.numel()  # some targets are outside the vocabulary
    hard = F.cross_entropy(full[..., ids][inside], column[batch.targets][inside])
    p = torch.softmax(batch.teacher.logits, -1)[..., ids]
    soft = -(p * torch.log_softmax(full[..., ids], -1)).sum(-1).mean()
    loss = trainer.compute_loss(batch, "distil")
    torch.testing.assert_close(loss, 0.5 * hard + 0.5 * soft)
    loss.backward()
    grad = small.get_output_embeddings().weight.grad
    outside = torch.ones(large.config.vocab_size, dtype=torch.bool)
    outside[ids] = False
    assert grad[outside].abs().max() == 0 and grad[ids].abs().max() > 0
    small.zero_grad(set_to_none=True)
    with torch.no_grad():
        before = trainer.compute_loss(batch, "distil").item()
    trainer.train(progress=False)
    with torch.no_grad():
        after = trainer.compute_loss(trainer.live_batch(windows, True), "distil").item()
    assert after < before - 0.1, (before, after)
    fit = trainer.fit_router()
    assert fit.pairs > 0 and 0 <= fit.greedy_bce < 1.0 and fit.sampled_mean_abs_error < 0.5  # routers fit over the columns
    trainer.save()
    assert json.loads((tmp_path / "plain" / DRAFT_VOCAB_FILE).read_text()) == {"draft_vocab": vocab}
    loaded = load_plain_drafter(tmp_path / "plain")
    assert loaded.draft_ids.tolist() == vocab
    results = evaluate(large, {"plain": loaded}, consecutive_windows(corpus.heldout, 9, 3), block_length=2)
    with torch.no_grad():
        heldout = consecutive_windows(corpus.heldout, 9, 3)
        own = loaded(input_ids=heldout[:, :-1]).logits[..., ids].argmax(-1)
        want = (ids[own] == large(input_ids=heldout[:, :-1]).logits.argmax(-1)).float().mean().item()
    assert results[1]["agreement_with_large"] == pytest.approx(want)
    # the checkpoint holds the vocabulary: resuming with another one (or none) is refused
    for other in (vocab[:-1], None):
        with pytest.raises(TrainingError, match="another draft vocabulary"):
            build(tmp_path / "plain", other).train(progress=False)
    # a plain drafter saved without a vocabulary into the same folder leaves no stale file behind
    plain = Trainer(set_draft_vocab(loaded, None).train(), large, corpus, tiny_config(mode="plain", steps=1),
                    tmp_path / "plain", None)
    plain.train(resume=False, progress=False)
    plain.save()
    assert not (tmp_path / "plain" / DRAFT_VOCAB_FILE).exists()
    assert load_plain_drafter(tmp_path / "plain").draft_ids is None
    for bad, match in (([7], "at least 2"), ([0, large.config.vocab_size], "must lie in")):  # never saved
        with pytest.raises(TrainingError, match=match):
            set_draft_vocab(loaded, bad)


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "cannot read"),
    ('{"ids": [1, 2]}', "not a draft vocabulary"),
    ("[1, 2]", "not a draft vocabulary"),
    ('{"draft_vocab": [5, 3]}', "ascending"),
    ('{"draft_vocab": [4, 4, 9]}', "ascending"),
    ('{"draft_vocab": [1, 300]}', "ascending token ids inside"),
    ('{"draft_vocab": [-1, 3]}', "ascending token ids inside"),
    ('{"draft_vocab": [7]}', "at least 2"),
    ('{"draft_vocab": [0, true]}', "list of at least 2 token ids"),
    ('{"draft_vocab": [0, 2.0]}', "list of at least 2 token ids"),
    ('{"draft_vocab": "0,1"}', "list of at least 2 token ids"),
])
def test_a_damaged_draft_vocabulary_file_is_refused(tmp_path, text, match):
    """Loading (training side) and exporting a plain drafter folder whose draft_vocab.json is
    damaged or out of the vocabulary's range: a typed error naming the file, never a drafter
    that proposes tokens the bundle cannot map."""
    from tandem.errors import ExportError
    from tandem.export.checkpoint import Checkpoint

    large = tiny_large("llama", num_layers=2)
    folder = tmp_path / "plain"
    create_drafter(large, create_drafter_config(large.config, 1, 32), seed=3).save_pretrained(folder)
    (folder / DRAFT_VOCAB_FILE).write_text(text)
    with pytest.raises(TrainingError, match=match):
        load_plain_drafter(folder)
    with pytest.raises(ExportError, match=match):
        Checkpoint.from_folder(folder, "plain M_S")
    (folder / DRAFT_VOCAB_FILE).write_text('{"draft_vocab": [0, 5, 9]}')
    assert load_plain_drafter(folder).draft_ids.tolist() == [0, 5, 9]
    assert Checkpoint.from_folder(folder, "plain M_S").draft_vocab == [0, 5, 9]


def test_router_heads_and_fit():
    """Two heads over one feature vector; each fits its own target (better than a constant)."""
    torch.manual_seed(0)
    router = Router(RouterConfig(embed_dim=8, top_k=3, hidden_size=16))
    logits = torch.randn(2, 5, 20) * 3
    embed = torch.randn(20, 8)
    feats = router.features(logits, embed)
    assert feats.shape == (2, 5, 1 + 3 + 8)
    scores = router(logits, embed)
    assert scores.shape == (2, 5, 2)
    assert torch.allclose(scores[..., 0], router.score(logits, embed, "greedy"))
    assert torch.allclose(scores[..., 1], router.score(logits, embed, "sampled"))
    assert total_variation(logits, logits).abs().max() < 1e-6
    entropy = feats[..., 0].flatten()
    greedy = (entropy < entropy.median()).float()  # a 0/1 event decided by the entropy
    sampled = torch.sigmoid(entropy.mean() - entropy)  # a probability falling with the entropy
    fit = fit_router(router, feats.flatten(0, 1), greedy, sampled, steps=300, lr=1e-2)
    assert fit.pairs == 10 and fit.greedy_accept_rate == pytest.approx(greedy.mean().item())
    assert fit.greedy_bce < 0.5 * fit.greedy_bce_constant
    assert fit.sampled_mean_abs_error < 0.5 * fit.sampled_mean_abs_error_constant


def test_heldout_split_is_deterministic_by_content(tmp_path):
    folder = tiny_corpus(tmp_path / "files", num_files=8)
    tokenizer = TextTokenizer.load(tiny_tokenizer(tmp_path / "tok"))
    a = Corpus.build([folder], tokenizer, heldout_fraction=0.3)
    (folder / "mod0.py").rename(folder / "renamed.py")
    b = Corpus.build([folder], tokenizer, heldout_fraction=0.3)
    assert torch.equal(a.heldout, b.heldout) and a.heldout.numel() > 0
    assert (a.train == tokenizer.eos_id).sum() + (a.heldout == tokenizer.eos_id).sum() == 8
    with pytest.raises(TrainingError, match="does not exist"):
        Corpus.build([tmp_path / "missing"], tokenizer)


def test_cli_train_and_eval(tmp_path, capsys):
    large_dir = tiny_large_folder(tmp_path / "large", "llama", num_layers=2)
    data = tiny_corpus(tmp_path / "data")
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_train_parser(sub)
    add_eval_parser(sub)
    common = ["--large", str(large_dir), "--data", str(data), "--steps", "3", "--batch-size", "2",
              "--seq-len", "8", "--layers", "1", "--hidden", "32", "--router-steps", "5",
              "--router-batches", "1", "--warmup-steps", "1", "--device", "cpu"]
    for mode in ("tandem", "plain"):
        args = parser.parse_args(["train", "--mode", mode, "--out", str(tmp_path / mode), *common])
        assert args.func(args) == 0
    # both drafters take a draft vocabulary: the same 30 most frequent training tokens + EOS
    for mode in ("tandem", "plain"):
        args = parser.parse_args(["train", "--mode", mode, "--draft-vocab", "30", "--out",
                                  str(tmp_path / f"{mode}30"), *common])
        assert args.func(args) == 0
    vocab = json.loads((tmp_path / "plain30" / DRAFT_VOCAB_FILE).read_text())["draft_vocab"]
    assert len(vocab) == 30 and 0 in vocab
    assert json.loads((tmp_path / "tandem30" / "tandem_config.json").read_text())["draft_vocab"] == vocab
    assert not (tmp_path / "plain" / DRAFT_VOCAB_FILE).exists()
    args = parser.parse_args(["train", "--mode", "lm", "--tokenizer", str(large_dir), "--draft-vocab", "30",
                              "--out", str(tmp_path / "lm"), *common[2:]])
    with pytest.raises(TrainingError, match="--draft-vocab is for the drafters"):
        args.func(args)
    # the tiny corpus's held-out split is far too small to report on: train warns, eval refuses
    assert "held-out tokens (< 10000)" in capsys.readouterr().err
    eval_args = ["eval", "--large", str(large_dir), "--model", f"plain={tmp_path / 'plain'}",
                 "--model", f"tandem={tmp_path / 'tandem'}", "--model", f"plain30={tmp_path / 'plain30'}",
                 "--data", str(data),
                 "--seq-len", "8", "--block-length", "3", "--json", str(tmp_path / "r.json")]
    args = parser.parse_args(eval_args)
    with pytest.raises(TrainingError, match="refusing to report: only \\d+ held-out tokens.*--min-heldout-tokens"):
        args.func(args)
    assert TandemSmall.from_pretrained(tmp_path / "tandem").router is not None
    assert (tmp_path / "plain" / "router.safetensors").exists()
    assert (tmp_path / "tandem" / "tokenizer.json").exists()
    args = parser.parse_args([*eval_args, "--min-heldout-tokens", "0"])
    assert args.func(args) == 0
    results = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in results] == ["M_L", "plain", "tandem", "plain30"]
    assert results[0]["tv_to_large"] == 0.0 and results[0]["agreement_with_large"] == 1.0
    assert "tandem" in capsys.readouterr().out


def test_evaluate_tandem_matches_manual_metrics(corpus):
    large, tandem = make_tandem()
    windows = consecutive_windows(corpus.heldout, 9, 3)
    gamma = 3
    results = evaluate(large, {"t": tandem}, windows, block_length=gamma, batch_size=2)
    assert [r["model"] for r in results] == ["M_L", "t"] and "t" in format_table(results)
    # brute force: one window and one position at a time, the block start from the position itself
    correct, agree, tv, per_pos, per_pos_n = 0, 0, 0.0, [0] * gamma, [0] * gamma
    layers = tandem.config.large_layers
    with torch.no_grad():
        for window in windows:
            inputs, targets = window[None, :-1], window[1:]
            large_logits, _, reps = large_step(large, inputs, empty_past(large.config), layers)
            for i in range(inputs.shape[1]):
                starts = torch.tensor([[j - j % gamma for j in range(i + 1)]])
                logits = tandem.forward_train(inputs[:, : i + 1], [r[:, : i + 1] for r in reps], starts)[0, i]
                hit = int(logits.argmax() == targets[i])
                correct += hit
                per_pos[i % gamma] += hit
                per_pos_n[i % gamma] += 1
                agree += int(logits.argmax() == large_logits[0, i].argmax())
                tv += 0.5 * (logits.softmax(-1) - large_logits[0, i].softmax(-1)).abs().sum().item()
    n = windows[:, 1:].numel()
    t = results[1]
    assert t["tokens"] == n
    assert t["accuracy"] == pytest.approx(correct / n)
    assert t["agreement_with_large"] == pytest.approx(agree / n)
    assert t["tv_to_large"] == pytest.approx(tv / n, abs=1e-5)
    assert t["accuracy_by_block_position"] == pytest.approx([c / k for c, k in zip(per_pos, per_pos_n, strict=True)])
    assert results[0]["agreement_with_large"] == 1.0 and results[0]["tv_to_large"] == 0.0


def test_tandem_vs_plain_script_quick(tmp_path):
    """The issue-3 experiment script end to end at smoke size (on this interpreter's stdlib)."""
    import importlib.util
    import sysconfig
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "tandem_vs_plain.py"
    spec = importlib.util.spec_from_file_location("tandem_vs_plain", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = tmp_path / "report"
    assert module.main(["--quick", "--stdlib", sysconfig.get_paths()["stdlib"], "--work", str(tmp_path / "work"),
                        "--report", str(report), "--eval-block-lengths", "2", "3"]) == 0
    record = json.loads(report.with_suffix(".json").read_text())
    assert set(record["eval"]) == {"2", "3"}
    names = [r["model"] for r in record["eval"]["3"]]
    assert names == ["M_L", "plain M_S (CE)", "plain M_S (Distil)", "Tandem-CE", "Tandem-Distil",
                     "Tandem-Distil, ℓ = 1", "Tandem-Distil, trained γ = 3 variable",
                     "plain M_S (Distil), seed 1", "Tandem-Distil, seed 1"]
    assert record["runs"]["Tandem-Distil, seed 1"]["config"]["seed"] == 1
    assert all(len(r["accuracy_by_block_position"]) == 3 for r in record["eval"]["3"])
    for name in ("plain M_S (Distil)", "Tandem-Distil"):  # the same CE-then-Distil schedule
        assert (record["runs"][name]["ce_steps"], record["runs"][name]["distil_steps"]) == (3, 3)
    assert record["layer_map"] == [2] and record["runs"]["Tandem-Distil, ℓ = 1"]["config"]["block_length"] == 2
    assert record["runs"]["Tandem-Distil, trained γ = 3 variable"]["config"]["variable_boundaries"] is True
    text = report.with_suffix(".md").read_text()
    assert "| Tandem-Distil |" in text and "γ = 3" in text and "drafter seeds 0, 1" in text


def test_variable_boundaries_draw_every_block_length():
    """--variable-boundaries: block lengths drawn from 1..γ per block (not one random offset
    per sequence): every length occurs, none exceeds γ, blocks tile the sequence."""
    from tandem.train.model import variable_block_starts

    gamma, n = 4, 200
    starts = variable_block_starts(16, n, gamma, torch.Generator().manual_seed(0))
    assert starts.shape == (16, n) and (starts[:, 0] == 0).all()
    pos = torch.arange(n)
    assert ((starts <= pos) & (pos - starts < gamma)).all()
    lengths = []
    for row in starts.tolist():
        firsts = sorted(set(row))
        assert all(row[i] == i for i in firsts)  # each block starts where its first position is
        lengths += [b - a for a, b in zip(firsts, firsts[1:], strict=False)]
    counts = torch.bincount(torch.tensor(lengths), minlength=gamma + 1)
    assert counts[0] == 0 and (counts[1:] > 0.15 * len(lengths)).all(), counts  # about uniform on 1..γ
    again = variable_block_starts(16, n, gamma, torch.Generator().manual_seed(0))
    assert torch.equal(starts, again)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_a_block_after_a_past_equals_the_full_sequence(arch):
    """The installed transformers takes our KV cache (keyword `cache` or `past_key_values`):
    logits and representations of a block after a past equal those of the full sequence."""
    from tandem.train.model import empty_past, large_step

    large = tiny_large(arch, num_layers=2).eval()
    ids = torch.randint(1, large.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full, _, full_reps = large_step(large, ids, empty_past(large.config), [1, 2])
        _, past, _ = large_step(large, ids[:, :7], empty_past(large.config), [1, 2])
        block, present, reps = large_step(large, ids[:, 7:], past, [1, 2])
    assert present[0][0].shape[2] == 12
    torch.testing.assert_close(block, full[:, 7:], atol=1e-5, rtol=1e-5)
    for got, want in zip(reps, full_reps, strict=True):
        torch.testing.assert_close(got, want[:, 7:], atol=1e-5, rtol=1e-5)
