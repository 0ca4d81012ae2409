"""The two adaptive block-length routers (train/router.py, docs/METHOD.md §2): their targets,
the step graph's two scores, the runtime's choice of router by decoding mode, refitting them
in place (`tandem fit-router`) and folders with an older single router."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import tiny_corpus, tiny_large, tiny_large_folder

from tandem._core import GenerateOptions, Generator, read_manifest
from tandem.errors import ExportError, InvalidArgumentError, TrainingError
from tandem.export.bundle import export_bundle
from tandem.export.feeds import random_inputs
from tandem.export.validate import run_graph
from tandem.runtime import load
from tandem.train.cli import add_fit_router_parser, add_train_parser
from tandem.train.data import Corpus, TextTokenizer
from tandem.train.evaluate import load_drafter
from tandem.train.model import TandemSmall, create_drafter, create_drafter_config, create_tandem
from tandem.train.reference import generate_reference
from tandem.train.router import ROUTER_KINDS, OldRouterError, Router, RouterConfig
from tandem.train.trainer import Teacher, TrainConfig, Trainer, router_targets

# --------------------------------------------------------------------------- targets


def _overlap(p_logits: np.ndarray, q_logits: np.ndarray, temperature: float) -> np.ndarray:
    """1 - TV(softmax(p / T), softmax(q / T)) in float64, written out here (q may hold -inf)."""
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp((x - x.max(-1, keepdims=True)) / temperature)
        return e / e.sum(-1, keepdims=True)

    return 1.0 - 0.5 * np.abs(softmax(p_logits) - softmax(q_logits)).sum(-1)


def _logits(seed: int, vocab: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """M_L's and a correlated drafter's logits (2, 6, V)."""
    g = torch.Generator().manual_seed(seed)
    large = torch.randn(2, 6, vocab, generator=g) * 2
    return large, large + torch.randn(2, 6, vocab, generator=g) * 1.5


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_router_targets_are_the_acceptance_events(temperature):
    """greedy: 1 where the drafter's argmax is M_L's; sampled: 1 - TV of the two distributions
    at T (computed here in float64), over the whole vocabulary and over a draft vocabulary
    (the drafter's distribution is 0 outside it)."""
    large, drafter = _logits(0)
    greedy, sampled = router_targets(drafter, Teacher(logits=large), None, None, temperature)
    agree = (drafter.argmax(-1) == large.argmax(-1)).float()
    assert torch.equal(greedy, agree) and 0 < agree.mean() < 1
    np.testing.assert_allclose(sampled.numpy(), _overlap(large.double().numpy(), drafter.double().numpy(),
                                                         temperature), atol=1e-6)

    columns = torch.tensor([0, 2, 3, 5, 7, 8, 11])  # a draft vocabulary: the drafter's logits are its columns
    to_column = torch.full((12,), -1, dtype=torch.long)
    to_column[columns] = torch.arange(len(columns))
    full = torch.full_like(drafter, float("-inf"))
    full[..., columns] = drafter[..., columns]
    greedy, sampled = router_targets(drafter[..., columns], Teacher(logits=large), columns, to_column, temperature)
    agree = (full.argmax(-1) == large.argmax(-1)).float()
    assert torch.equal(greedy, agree)
    assert (~torch.isin(large.argmax(-1), columns)).any(), "M_L's argmax never falls outside the draft vocabulary"
    np.testing.assert_allclose(sampled.numpy(), _overlap(large.double().numpy(), full.double().numpy(),
                                                         temperature), atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_top_k_teacher_targets(temperature):
    """A top-k teacher (reps shards): the greedy target is exact; the sampled one is exact when k
    covers the vocabulary and a lower bound of 1 - TV otherwise, at any temperature."""
    large, drafter = _logits(1, vocab=10)
    exact = _overlap(large.double().numpy(), drafter.double().numpy(), temperature)
    want_greedy, _ = router_targets(drafter, Teacher(logits=large), None, None, temperature)
    for k in (10, 4):
        top = torch.log_softmax(large, -1).topk(k, dim=-1)
        teacher = Teacher(top_ids=top.indices, top_logp=top.values, vocab_size=10)
        greedy, sampled = router_targets(drafter, teacher, None, None, temperature)
        assert torch.equal(greedy, want_greedy)
        if k == 10:
            np.testing.assert_allclose(sampled.numpy(), exact, atol=1e-5)
        else:
            assert (sampled.numpy() <= exact + 1e-6).all() and (sampled.numpy() >= 0).all()
            assert (sampled.numpy() < exact - 1e-3).any()  # the unseen tail is not counted


def test_trainer_fits_the_sampled_router_at_its_temperature(tmp_path):
    """The trainer's sampled targets follow `router_temperature` (recorded in the router's config);
    the greedy targets do not depend on it."""
    from tiny_models import tiny_tokenizer

    large = tiny_large("llama", num_layers=2)
    corpus = Corpus.build([tiny_corpus(tmp_path / "files")], TextTokenizer.load(tiny_tokenizer(tmp_path / "tok")))
    fits = {}
    for temperature in (0.3, 3.0):
        small = create_drafter(large, create_drafter_config(large.config, 1, 32), seed=1)
        router = Router(RouterConfig(embed_dim=32))
        config = TrainConfig(mode="plain", steps=1, batch_size=2, seq_len=12, router_batches=2, router_steps=5,
                             router_temperature=temperature, checkpoint_every=0, device="cpu")
        fits[temperature] = Trainer(small, large, corpus, config, tmp_path / "out", router).fit_router()
        assert router.config.sampled_temperature == fits[temperature].sampled_temperature == temperature
    assert fits[0.3].greedy_accept_rate == fits[3.0].greedy_accept_rate
    assert abs(fits[0.3].sampled_mean_target - fits[3.0].sampled_mean_target) > 0.05


# --------------------------------------------------------------------------- the graph's two scores


@pytest.mark.parametrize("role", ["tandem_drafter", "plain_drafter"])
def test_graph_scores_are_the_pytorch_routers_on_its_logits(pair, role):
    """Both router outputs of the step graph equal the PyTorch routers applied to the logits the
    graph returns (the same logits), and the two routers differ."""
    spec = read_manifest(str(pair.bundle)).graphs[role]
    assert (spec.router_score_greedy, spec.router_score_sampled) == ("router_score_greedy", "router_score_sampled")
    cases = [random_inputs(spec, tokens=t, past_len=p, memory_rows=m, seed=i, logits_from=0)
             for i, (t, p, m) in enumerate([(1, 0, 3), (4, 5, 2), (3, 7, 0)])]
    router, small = (pair.tandem.router, pair.tandem.small) if role == "tandem_drafter" else (pair.plain.router,
                                                                                             pair.plain)
    embed = small.get_input_embeddings().weight
    for got in run_graph(Path(spec.file), spec, cases):
        with torch.no_grad():
            want = router(torch.from_numpy(got["logits"]), embed).numpy()  # [1, rows, 2]
        for i, kind in enumerate(ROUTER_KINDS):
            np.testing.assert_allclose(got[f"router_score_{kind}"], want[..., i], atol=2e-6)
        assert np.abs(want[..., 0] - want[..., 1]).max() > 1e-3


# --------------------------------------------------------------------------- the router by decoding mode

MAX_BLOCK = 4
PROMPT = [5, 17, 33, 2, 90]
NEW = 20


def _set_heads(router: Router, high: str) -> None:
    """The `high` router always scores ~1 (never stops a draft), the other ~0 (always stops)."""
    with torch.no_grad():
        for kind in ROUTER_KINDS:
            out = router.head(kind)[2]
            out.weight.zero_()
            out.bias.fill_(30.0 if kind == high else -30.0)


@pytest.fixture(scope="module", params=ROUTER_KINDS)
def routed(request, tmp_path_factory):
    """A tiny pair whose routers have hand-set weights giving opposite scores: `high` never stops."""
    high = request.param
    large = tiny_large("llama", num_layers=2)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, seed=2).eval()
    plain = create_drafter(large, cfg, seed=9).eval()
    plain.router = Router(RouterConfig(embed_dim=32))
    _set_heads(tandem.router, high)
    _set_heads(plain.router, high)
    bundle = tmp_path_factory.mktemp(f"routed-{high}") / "bundle"
    export_bundle(large, bundle, tandem=tandem, plain=plain, context_length=64, max_block_length=8, progress=None)
    return high, large, tandem, plain, load(bundle, threads=1)


def _expected_drafts(accepted: list[int], per_round: int) -> list[int]:
    """Drafts per round of a run that drafts `per_round` whenever the room allows (NEW tokens)."""
    emitted, out = 1, []
    for n in accepted:
        out.append(min(per_round, NEW - emitted - 1))
        emitted += n + 1
    return out


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_adaptive_reads_the_router_of_the_decoding_mode(routed, mode):
    """Greedy adaptive drafting follows the greedy router, sampled adaptive drafting the sampled
    one: the never-stopping router drafts as a fixed γ = max_block_length run does, the
    always-stopping one as γ = min_block_length = 1 does (same tokens, same drafts: the stopping
    call samples nothing). Greedy adaptive stays lossless. The PyTorch reference agrees."""
    high, large, tandem, plain, model = routed
    auto = dict(mode=mode, block_length="auto", router_threshold=0.5, min_block_length=1, draft_cost=0.0,
                verify_cost=0.0, max_block_length=MAX_BLOCK, max_new_tokens=NEW, ignore_eos=True)
    fixed = dict(mode=mode, max_new_tokens=NEW, ignore_eos=True)
    for sample in (False, True):
        kind = "sampled" if sample else "greedy"
        draws = dict(do_sample=True, temperature=1.0, seed=11) if sample else {}
        got = model.generate(PROMPT, **auto, **draws)
        want = model.generate(PROMPT, **fixed, **draws, block_length=MAX_BLOCK if kind == high else 1)
        other = model.generate(PROMPT, **fixed, **draws, block_length=1 if kind == high else MAX_BLOCK)
        assert got.ids == want.ids, kind
        assert (got.stats["rounds"], got.stats["drafted"]) == (want.stats["rounds"], want.stats["drafted"]), kind
        assert got.stats["drafted"] != other.stats["drafted"], "the test cannot tell the routers apart"
        if not sample:
            assert got.ids == model.generate(PROMPT, mode="large", max_new_tokens=NEW, ignore_eos=True).ids

        options = GenerateOptions(mode=mode, adaptive=True, router_threshold=0.5, min_block_length=1,
                                  draft_cost=0.0, verify_cost=0.0, max_block_length=MAX_BLOCK, max_new_tokens=NEW, do_sample=sample, seed=11)
        ref = generate_reference(large, PROMPT, options, context_length=64, tandem=tandem, drafter=plain,
                                 generator=torch.Generator().manual_seed(3))
        assert ref.drafted == _expected_drafts(ref.accepted, MAX_BLOCK if kind == high else 1), kind
        if not sample:
            assert ref.ids == got.ids and sum(ref.drafted) == got.stats["drafted"]


# --------------------------------------------------------------------------- the cost-aware stopping rule

SCORE = 0.6


@pytest.fixture(scope="module")
def constant(tmp_path_factory):
    """A tiny pair whose routers (both kinds) score SCORE at every position."""
    large = tiny_large("llama", num_layers=2)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, seed=4).eval()
    plain = create_drafter(large, cfg, seed=5).eval()
    plain.router = Router(RouterConfig(embed_dim=32))
    for router in (tandem.router, plain.router):
        with torch.no_grad():
            for kind in ROUTER_KINDS:
                out = router.head(kind)[2]
                out.weight.zero_()
                out.bias.fill_(float(np.log(SCORE / (1 - SCORE))))
    bundle = tmp_path_factory.mktemp("constant") / "bundle"
    export_bundle(large, bundle, tandem=tandem, plain=plain, context_length=64, max_block_length=8, progress=None)
    return large, tandem, plain, load(bundle, threads=1)


def _best_block(c: float, beta: float, most: int, least: int) -> int:
    """The block length k in [least, most] with the most expected tokens per unit of time when every
    draft is accepted with odds SCORE: (1 + s + ... + s^k) / (1 + c·max(k, 1) + β·k), by brute force."""
    def rate(k: int) -> float:
        return sum(SCORE**i for i in range(k + 1)) / (1 + c * max(k, 1) + beta * k)
    rates = sorted((rate(k), k) for k in range(least, most + 1))
    assert len(rates) == 1 or rates[-1][0] - rates[-2][0] > 1e-4, "a near-tie: pick other costs"
    return rates[-1][1]


def _rounds(model, options: GenerateOptions) -> list[tuple[int, int, int]]:
    """Per round of the runtime: (tokens emitted, drafts made, drafter calls)."""
    gen = Generator(model._model, PROMPT, options)
    rounds, before, first = [], gen.stats, True
    while not gen.done:
        emitted = len(gen.step()) - first  # the first call also returns the prefill's token
        first, after = False, gen.stats
        rounds.append((emitted, after["drafted"] - before["drafted"], after["drafter_calls"] - before["drafter_calls"]))
        before = after
    return rounds


@pytest.mark.parametrize(("c", "beta", "least"), [(0.05, 0.1, 0), (0.1, 0.5, 0), (0.02, 0.02, 0), (0.1, 1.5, 0),
                                                   (0.1, 1.5, 1), (0.3, 0.05, 2)])
@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_cost_rule_drafts_the_best_block_for_a_known_score(constant, mode, c, beta, least):
    """With a router whose score is a known constant, the stopping rule of docs/CONTRACTS.md drafts,
    every round, the block length that maximises expected tokens per unit of cost (brute force),
    and calls the drafter for a draft it then drops only in a round's first call. Greedy and sampled
    (the rule reads the mode's router); the PyTorch reference drafts the same blocks."""
    large, tandem, plain, model = constant
    for sample in (False, True):
        options = GenerateOptions(mode=mode, adaptive=True, min_block_length=least, max_block_length=6, draft_cost=c,
                                  verify_cost=beta, router_threshold=0.0, max_new_tokens=NEW, ignore_eos=True,
                                  do_sample=sample, seed=3)
        rounds, emitted = _rounds(model, options), 1
        for tokens, drafts, calls in rounds:
            most = min(6, NEW - emitted - 1)
            want = _best_block(c, beta, most, least) if most >= least else most
            assert (drafts, calls) == (want, max(want, 1 if most >= 1 else 0)), (emitted, rounds)
            emitted += tokens
        assert emitted == NEW
        if not sample:
            ref = generate_reference(large, PROMPT, options, context_length=64, tandem=tandem, drafter=plain)
            assert ref.drafted == [d for _, d, _ in rounds]
            got = model.generate(PROMPT, block_length="auto", mode=mode, min_block_length=least, max_block_length=6,
                                 draft_cost=c, verify_cost=beta, router_threshold=0.0, max_new_tokens=NEW,
                                 ignore_eos=True)
            assert got.ids == ref.ids == model.generate(PROMPT, mode="large", max_new_tokens=NEW, ignore_eos=True).ids
            assert (got.stats["draft_cost"], got.stats["verify_cost"]) == pytest.approx((c, beta))


def test_measured_costs(constant):
    """Left < 0, the costs are measured once per drafter on this machine and the request reports
    the ones it used; an adaptive request still decodes losslessly with them."""
    *_, model = constant
    for mode in ("speed", "vanilla"):
        c, beta = model._model.decode_costs(mode)
        assert 0.0 <= c < 100 and 0.0 <= beta < 100
        assert model._model.decode_costs(mode) == (c, beta)  # kept, not measured again
        got = model.generate(PROMPT, mode=mode, block_length="auto", max_new_tokens=NEW, ignore_eos=True)
        assert (got.stats["draft_cost"], got.stats["verify_cost"]) == pytest.approx((c, beta))
        assert got.ids == model.generate(PROMPT, mode="large", max_new_tokens=NEW, ignore_eos=True).ids
    with pytest.raises(InvalidArgumentError, match="large"):
        model._model.decode_costs("large")


# --------------------------------------------------------------------------- refit in place; older folders


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_old_layout(folder: Path, tandem: bool) -> None:
    """Rewrite a drafter folder's routers as an older tandem saved them: one router (`mlp.*`),
    no `layout` key."""
    old = {"embed_dim": 32, "top_k": 4, "hidden_size": 64}
    mlp = {"mlp.0.weight": torch.zeros(64, 37), "mlp.0.bias": torch.zeros(64), "mlp.2.weight": torch.zeros(1, 64),
           "mlp.2.bias": torch.zeros(1)}
    if tandem:
        config = json.loads((folder / "tandem_config.json").read_text())
        config["router"] = old
        (folder / "tandem_config.json").write_text(json.dumps(config))
        tensors = {k: v for k, v in load_file(folder / "tandem.safetensors").items() if not k.startswith("router.")}
        save_file(tensors | {f"router.{k}": v for k, v in mlp.items()}, folder / "tandem.safetensors")
    else:
        (folder / "router_config.json").write_text(json.dumps(old))
        save_file(mlp, folder / "router.safetensors")


def _cli(tmp_path: Path) -> tuple[argparse.ArgumentParser, Path, Path]:
    """`tandem train` / `tandem fit-router` parsers, a tiny M_L folder and a tiny corpus."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_train_parser(sub)
    add_fit_router_parser(sub)
    return parser, tiny_large_folder(tmp_path / "large", "llama", num_layers=2), tiny_corpus(tmp_path / "data")


def _train_without_router(parser: argparse.ArgumentParser, mode: str, out: Path, large_dir: Path, data: Path,
                          *extra: str) -> None:
    """A 2-step drafter of `mode` trained without routers into `out` (γ = 3)."""
    args = parser.parse_args(["train", "--mode", mode, "--out", str(out), "--large", str(large_dir),
                              "--data", str(data), "--steps", "2", "--batch-size", "2", "--seq-len", "8",
                              "--layers", "1", "--hidden", "32", "--warmup-steps", "1", "--block-length", "3",
                              "--device", "cpu", "--no-router", "--min-heldout-tokens", "0", *extra])
    assert args.func(args) == 0


def test_fit_router_refits_a_trained_drafter_in_place(tmp_path):
    """`tandem fit-router` on drafters trained without routers and on folders with an older
    single router: only the router files change, the temperature is recorded, the folders then
    load, export (both scores) and decode adaptively, losslessly."""
    parser, large_dir, data = _cli(tmp_path)
    for mode in ("tandem", "plain"):
        _train_without_router(parser, mode, tmp_path / mode, large_dir, data)
    tandem_dir, plain_dir = tmp_path / "tandem", tmp_path / "plain"
    assert TandemSmall.from_pretrained(tandem_dir).router is None and Router.load(plain_dir) is None

    _make_old_layout(tandem_dir, tandem=True)
    _make_old_layout(plain_dir, tandem=False)
    with pytest.raises(OldRouterError, match="older single router.*tandem fit-router"):
        TandemSmall.from_pretrained(tandem_dir)
    with pytest.raises(OldRouterError, match="tandem fit-router"):
        Router.load(plain_dir)
    assert isinstance(OldRouterError("x"), TrainingError)
    assert load_drafter(tandem_dir).router is None  # evaluation does not need the routers
    with pytest.raises(ExportError, match="older single router.*tandem fit-router"):
        export_bundle(large_dir, tmp_path / "refused", tandem=tandem_dir, progress=None)

    kept = {d: _sha(d / "model.safetensors") for d in (tandem_dir, plain_dir)}
    projection = load_file(tandem_dir / "tandem.safetensors")["projections.0.weight"]
    for folder in (tandem_dir, plain_dir):
        args = parser.parse_args(["fit-router", "--drafter", str(folder), "--large", str(large_dir), "--data",
                                  str(data), "--router-temperature", "0.7", "--router-batches", "2",
                                  "--router-steps", "20"])
        assert args.func(args) == 0
        assert _sha(folder / "model.safetensors") == kept[folder]
        summary = json.loads((folder / "training_summary.json").read_text())
        record = summary["router"]
        assert record["sampled_temperature"] == 0.7 and record["pairs"] == 2 * 2 * 8
        assert record["refit"]["block_length"] == 3 and summary["config"]["block_length"] == 3  # the drafter's γ
    tandem = TandemSmall.from_pretrained(tandem_dir)
    assert tandem.router is not None and tandem.config.router.sampled_temperature == 0.7
    assert torch.equal(load_file(tandem_dir / "tandem.safetensors")["projections.0.weight"], projection)
    assert Router.load(plain_dir).config.sampled_temperature == 0.7

    bundle = tmp_path / "bundle"
    manifest = export_bundle(large_dir, bundle, tandem=tandem_dir, plain=plain_dir, context_length=64, progress=None)
    for role in ("tandem_drafter", "plain_drafter"):
        assert manifest.graphs[role].router_score_sampled == "router_score_sampled"
        assert manifest.provenance[role]["router_sampled_temperature"] == 0.7
    model = load(bundle, threads=1)
    base = model.generate(PROMPT, mode="large", max_new_tokens=16, ignore_eos=True).ids
    for mode in ("speed", "vanilla"):
        assert model.generate(PROMPT, mode=mode, block_length="auto", max_block_length=3, max_new_tokens=16,
                              ignore_eos=True).ids == base
        sampled = model.generate(PROMPT, mode=mode, block_length="auto", max_block_length=3, max_new_tokens=16,
                                 ignore_eos=True,
                                 do_sample=True, temperature=0.7, seed=1)
        assert len(sampled.ids) == 16

    with pytest.raises(TrainingError, match="--data FILES .* or --reps FOLDER, not both"):
        args = parser.parse_args(["fit-router", "--drafter", str(plain_dir), "--large", str(large_dir)])
        args.func(args)
    with pytest.raises(TrainingError, match="temperature"):
        args = parser.parse_args(["fit-router", "--drafter", str(plain_dir), "--large", str(large_dir), "--data",
                                  str(data), "--router-temperature", "0"])
        args.func(args)


def test_checkpoints_resume_whatever_the_routers(tmp_path):
    """The routers are fitted after training and are not in a checkpoint: a checkpoint written
    with an older single router (its weights and config in it) resumes into a model with the two
    routers."""
    from tiny_models import tiny_tokenizer

    large = tiny_large("llama", num_layers=2)
    corpus = Corpus.build([tiny_corpus(tmp_path / "files")], TextTokenizer.load(tiny_tokenizer(tmp_path / "tok")))
    config = TrainConfig(steps=3, batch_size=2, seq_len=8, warmup_steps=1, checkpoint_every=0, device="cpu")

    def build() -> Trainer:
        tandem = create_tandem(large, create_drafter_config(large.config, 1, 32), router=True, seed=3)
        return Trainer(tandem, large, corpus, config, tmp_path / "run")

    trainer = build()
    trainer.train(stop_after=2, progress=False)
    state = torch.load(trainer.checkpoint_path, weights_only=False)
    assert not any(k.startswith("router.") for k in state["model"])
    tandem_config = json.loads(state["tandem_config"])
    tandem_config["router"] = {"embed_dim": 32, "top_k": 4, "hidden_size": 64}  # as an older tandem wrote it
    state["tandem_config"] = json.dumps(tandem_config)
    state["model"]["router.mlp.0.weight"] = torch.zeros(64, 37)
    torch.save(state, trainer.checkpoint_path)
    resumed = build()
    assert len(resumed.train(progress=False)) == 1 and resumed.step == 3


def test_fit_router_scores_a_plain_drafters_draft_vocabulary(tmp_path, monkeypatch):
    """A plain drafter with a draft vocabulary: `tandem fit-router` fits its routers on features of
    the vocabulary's columns, the ones its exported graph scores (not the whole vocabulary)."""
    parser, large_dir, data = _cli(tmp_path)
    folder = tmp_path / "plain"
    _train_without_router(parser, "plain", folder, large_dir, data, "--draft-vocab", "40")
    vocab = json.loads((folder / "draft_vocab.json").read_text())["draft_vocab"]
    widths = []
    features = Router.features

    def spy(self, logits, embed_weight):
        widths.append((logits.shape[-1], embed_weight.shape[0]))
        return features(self, logits, embed_weight)

    monkeypatch.setattr(Router, "features", spy)
    args = parser.parse_args(["fit-router", "--drafter", str(folder), "--large", str(large_dir), "--data", str(data),
                              "--router-batches", "2", "--router-steps", "5"])
    assert args.func(args) == 0
    assert widths and set(widths) == {(len(vocab), len(vocab))}
