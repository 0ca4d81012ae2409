"""A reduced draft vocabulary: a drafter (tandem or plain) proposes only N chosen tokens (its
head has those rows only, its distribution is 0 elsewhere). The graph against Hugging Face, the
C++ loop against the PyTorch reference, and speculative decoding still exact: greedy equals
`large`, sampled output has M_L's distribution. The bundle's two drafters have different
vocabularies, so each graph must honour its own."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from conftest import Pair
from hf_oracle import hf_outputs
from test_runtime_modes import exact_joint

from tandem._core import GenerateOptions, read_manifest
from tandem.export.validate import LARGE_CASES, SMALL_CASES, case_inputs, compare, run_graph
from tandem.runtime import load
from tandem.train.reference import generate_reference
from tandem.train.sampling import SamplingParams

DRAFT_VOCAB = [0, *range(1, 300, 2)]  # tandem drafter: EOS and the odd ids, 151 of 300 tokens
PLAIN_VOCAB = [0, *range(3, 300, 3)]  # plain drafter: EOS and the multiples of 3, 100 of 300 tokens
VOCABS = {"tandem_drafter": DRAFT_VOCAB, "plain_drafter": PLAIN_VOCAB}


@pytest.fixture(scope="module")
def vocab_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from tiny_models import tiny_large, tiny_tokenizer

    from tandem.export.bundle import export_bundle
    from tandem.train.model import (
        create_drafter,
        create_drafter_config,
        create_tandem,
        set_draft_vocab,
    )
    from tandem.train.router import Router, RouterConfig

    large = tiny_large("llama", seed=4, num_layers=3)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, seed=4, draft_vocab=list(DRAFT_VOCAB))
    plain = set_draft_vocab(create_drafter(large, cfg, seed=11), list(PLAIN_VOCAB))
    plain.router = Router(RouterConfig(embed_dim=plain.config.hidden_size))
    tmp = tmp_path_factory.mktemp("vocab")
    bundle = tmp / "bundle"
    export_bundle(large, bundle, tandem=tandem, plain=plain, tokenizer=tiny_tokenizer(tmp / "tok"), context_length=64,
                  max_block_length=8, progress=None)
    return Pair(large, tandem, plain, bundle)


@pytest.mark.parametrize("role", ["tandem_drafter", "plain_drafter"])
def test_graph_has_the_draft_vocabulary_only(vocab_pair: Pair, role: str):
    manifest = read_manifest(str(vocab_pair.bundle))
    spec, vocab = manifest.graphs[role], VOCABS[role]
    assert spec.draft_vocab == vocab and spec.logits_size == len(vocab)
    assert manifest.graphs["large"].draft_vocab == []
    model = onnx.load(str(vocab_pair.bundle / spec.file), load_external_data=False)
    heads = [t for t in model.graph.initializer if t.name.startswith("draft_head")]
    assert heads and list(heads[0].dims) == [spec.hidden_size, len(vocab)]
    assert not [t for t in model.graph.initializer if t.name.startswith("lm_head")]  # no full head
    cases = [case_inputs(spec, c, seed=i) for i, c in enumerate(SMALL_CASES if role == "tandem_drafter"
                                                                else LARGE_CASES)]
    got = run_graph(vocab_pair.bundle / spec.file, spec, cases)
    drafter = vocab_pair.tandem if role == "tandem_drafter" else vocab_pair.plain
    want = [hf_outputs(role, drafter, c, router=getattr(drafter, "router", None)) for c in cases]
    stats = compare(got, want)
    assert {"logits", "router_score_greedy", "router_score_sampled"} <= stats.keys()
    for name, s in stats.items():  # logits and router score over the draft vocabulary
        assert s["max_abs_diff"] <= 1e-4 * max(1.0, s["max_abs_ref"]), (name, s)


PROMPTS = [[1, 2, 3, 4], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]


@pytest.mark.parametrize(("mode", "gamma", "adaptive"), [("tandem", 4, False), ("speed", 2, False),
                                                         ("speed", 5, False), ("speed", 0, True),
                                                         ("vanilla", 2, False), ("vanilla", 5, False),
                                                         ("vanilla", 0, True)])
def test_greedy_matches_reference(vocab_pair: Pair, mode: str, gamma: int, adaptive: bool):
    model = load(vocab_pair.bundle, threads=1)
    for prompt in PROMPTS:
        costs = dict(draft_cost=0.1, verify_cost=0.15)  # the rule's inputs, explicit: the reference does not time
        options = GenerateOptions(mode=mode, block_length=max(gamma, 1), adaptive=adaptive, router_threshold=0.2,
                                  max_block_length=6, max_new_tokens=24, **costs)
        ref = generate_reference(vocab_pair.large, prompt, options, context_length=64, tandem=vocab_pair.tandem,
                                 drafter=vocab_pair.plain)
        got = model.generate(prompt, mode=mode, block_length="auto" if adaptive else gamma, router_threshold=0.2,
                             max_block_length=6 if adaptive else None, max_new_tokens=24, ignore_eos=True, **costs)
        assert got.ids == ref.ids
        assert (got.stats["drafted"], got.stats["accepted"]) == (sum(ref.drafted), sum(ref.accepted))
        base = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True).ids
        if mode in ("speed", "vanilla"):
            assert got.ids == base  # exact: the tiny model has no near-ties at this length


def test_plain_drafter_proposes_only_its_vocabulary(vocab_pair: Pair):
    """The PyTorch plain drafter's distribution is 0 outside its vocabulary (-inf logits), and
    inside it its logits are the full model's: the vocabulary only removes columns."""
    import torch

    from tandem.train.model import empty_past, plain_step

    plain = vocab_pair.plain
    ids = torch.tensor([[5, 80, 81, 82, 83]])
    with torch.no_grad():
        logits, _ = plain_step(plain, ids, empty_past(plain.config))
        full = plain(input_ids=ids).logits
    inside = torch.zeros(logits.shape[-1], dtype=torch.bool)
    inside[PLAIN_VOCAB] = True
    assert torch.isinf(logits[..., ~inside]).all() and torch.isfinite(logits[..., inside]).all()
    torch.testing.assert_close(logits[..., inside], full[..., inside])
    assert set(logits.argmax(-1).flatten().tolist()) <= set(PLAIN_VOCAB)


def test_tandem_mode_drafts_only_from_the_vocabulary(vocab_pair: Pair):
    """Standalone tandem keeps M_S's drafts unverified: with γ = 8, 7 tokens in 8 are drafts,
    and every draft is in the vocabulary (sampling at a high temperature would find others)."""
    model = load(vocab_pair.bundle, threads=1)
    allowed = set(DRAFT_VOCAB)
    for seed in range(4):
        got = model.generate([7, 9, 11], mode="tandem", block_length=8, max_new_tokens=40, do_sample=True,
                             temperature=2.0, seed=seed, ignore_eos=True)
        ids = got.ids[:33]  # the prefill's token, then 4 full rounds (the last one is cut by the room)
        # positions 8k are M_L's (the prefill's token, then each round's last token)
        drafts = [t for i, t in enumerate(ids) if i % 8 != 0]
        assert drafts and set(drafts) <= allowed


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_sampled_speculative_has_large_distribution(vocab_pair: Pair, mode: str):
    """Chi-square of 3 sampled tokens (two from speculative rounds, where the drafter's q is
    0 outside its vocabulary) against M_L's exact distribution over the full vocabulary."""
    from scipy.stats import chisquare

    model = load(vocab_pair.bundle, threads=1)
    prompt, params, runs = [4, 8, 15], SamplingParams(1.0, 4, 1.0), 2000
    exact = exact_joint(vocab_pair.large, prompt, params, steps=3)
    counts = dict.fromkeys(exact, 0)
    for seed in range(runs):
        got = model.generate(prompt, mode=mode, block_length=2, max_new_tokens=3, do_sample=True, top_k=4,
                             seed=seed, ignore_eos=True)
        counts[tuple(got.ids)] += 1
    keys = sorted(exact, key=exact.get, reverse=True)
    observed = [counts[k] for k in keys if exact[k] * runs >= 5]
    expected = [exact[k] * runs for k in keys if exact[k] * runs >= 5]
    rest_o = runs - sum(observed)
    rest_e = runs - sum(expected)
    if rest_e > 0:
        observed.append(rest_o)
        expected.append(rest_e)
    assert chisquare(observed, expected).pvalue > 1e-3
    # tokens outside the draft vocabulary are still produced: M_L's corrections
    outside = set(range(300)) - set(DRAFT_VOCAB if mode == "speed" else PLAIN_VOCAB)
    assert any(t in outside for k, n in counts.items() if n for t in k)


@pytest.mark.parametrize("role", ["tandem_drafter", "plain_drafter"])
def test_manifest_refuses_a_bad_draft_vocabulary(vocab_pair: Pair, tmp_path: Path, role: str):
    import json
    import shutil

    from tandem import _core
    from tandem.errors import BundleError

    for bad in ([5, 3], [1, 300], [7]):
        dst = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(vocab_pair.bundle, dst)
        data = json.loads((dst / "tandem.json").read_text())
        data["graphs"][role]["draft_vocab"] = bad
        (dst / "tandem.json").write_text(json.dumps(data))
        with pytest.raises(BundleError, match="draft_vocab"):
            _core.Model(str(dst), threads=1)
