"""A reduced draft vocabulary: the tandem drafter proposes only N chosen tokens (its head has
those rows only, its distribution is 0 elsewhere). The graph against Hugging Face, the C++
loop against the PyTorch reference, and speculative decoding still exact: greedy equals
`large`, sampled output has M_L's distribution."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from conftest import Pair
from hf_oracle import hf_outputs
from test_runtime_modes import exact_joint

from tandem._core import GenerateOptions, read_manifest
from tandem.export.validate import SMALL_CASES, case_inputs, compare, run_graph
from tandem.runtime import load
from tandem.train.reference import generate_reference
from tandem.train.sampling import SamplingParams

DRAFT_VOCAB = [0, *range(1, 300, 2)]  # EOS and the odd ids: 151 of 300 tokens


@pytest.fixture(scope="module")
def vocab_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    from tiny_models import tiny_large, tiny_tokenizer

    from tandem.export.bundle import export_bundle
    from tandem.train.model import create_drafter, create_drafter_config, create_tandem

    large = tiny_large("llama", seed=4, num_layers=3)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, seed=4, draft_vocab=list(DRAFT_VOCAB))
    plain = create_drafter(large, cfg, seed=11)
    tmp = tmp_path_factory.mktemp("vocab")
    bundle = tmp / "bundle"
    export_bundle(large, bundle, tandem=tandem, plain=plain, tokenizer=tiny_tokenizer(tmp / "tok"), context_length=64,
                  max_block_length=8, progress=None)
    return Pair(large, tandem, plain, bundle)


def test_graph_has_the_draft_vocabulary_only(vocab_pair: Pair):
    manifest = read_manifest(str(vocab_pair.bundle))
    spec = manifest.graphs["tandem_drafter"]
    assert spec.draft_vocab == DRAFT_VOCAB and spec.logits_size == len(DRAFT_VOCAB)
    assert manifest.graphs["large"].draft_vocab == [] and manifest.graphs["plain_drafter"].draft_vocab == []
    model = onnx.load(str(vocab_pair.bundle / spec.file), load_external_data=False)
    heads = [t for t in model.graph.initializer if t.name.startswith("draft_head")]
    assert heads and list(heads[0].dims) == [spec.hidden_size, len(DRAFT_VOCAB)]
    cases = [case_inputs(spec, c, seed=i) for i, c in enumerate(SMALL_CASES)]
    got = run_graph(vocab_pair.bundle / spec.file, spec, cases)
    want = [hf_outputs("tandem_drafter", vocab_pair.tandem, c) for c in cases]
    for name, s in compare(got, want).items():  # logits and router score over the draft vocabulary
        assert s["max_abs_diff"] <= 1e-4 * max(1.0, s["max_abs_ref"]), (name, s)


PROMPTS = [[1, 2, 3, 4], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]


@pytest.mark.parametrize(("mode", "gamma", "adaptive"), [("tandem", 4, False), ("speed", 2, False),
                                                         ("speed", 5, False), ("speed", 0, True)])
def test_greedy_matches_reference(vocab_pair: Pair, mode: str, gamma: int, adaptive: bool):
    model = load(vocab_pair.bundle, threads=1)
    for prompt in PROMPTS:
        options = GenerateOptions(mode=mode, block_length=max(gamma, 1), adaptive=adaptive, router_threshold=0.5,
                                  max_block_length=6, max_new_tokens=24)
        ref = generate_reference(vocab_pair.large, prompt, options, context_length=64, tandem=vocab_pair.tandem)
        got = model.generate(prompt, mode=mode, block_length="auto" if adaptive else gamma, router_threshold=0.5,
                             max_block_length=6 if adaptive else None, max_new_tokens=24, ignore_eos=True)
        assert got.ids == ref.ids
        assert (got.stats["drafted"], got.stats["accepted"]) == (sum(ref.drafted), sum(ref.accepted))
        base = model.generate(prompt, mode="large", max_new_tokens=24, ignore_eos=True).ids
        if mode == "speed":
            assert got.ids == base  # exact: the tiny model has no near-ties at this length


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


def test_sampled_speed_has_large_distribution(vocab_pair: Pair):
    """Chi-square of 3 sampled tokens (two from speculative rounds, where the drafter's q is
    0 outside its vocabulary) against M_L's exact distribution over the full vocabulary."""
    from scipy.stats import chisquare

    model = load(vocab_pair.bundle, threads=1)
    prompt, params, runs = [4, 8, 15], SamplingParams(1.0, 4, 1.0), 2000
    exact = exact_joint(vocab_pair.large, prompt, params, steps=3)
    counts = dict.fromkeys(exact, 0)
    for seed in range(runs):
        got = model.generate(prompt, mode="speed", block_length=2, max_new_tokens=3, do_sample=True, top_k=4,
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
    # tokens outside the draft vocabulary (even ids) are still produced: M_L's corrections
    assert any(t % 2 == 0 and t != 0 for k, n in counts.items() if n for t in k)


def test_manifest_refuses_a_bad_draft_vocabulary(vocab_pair: Pair, tmp_path: Path):
    import json
    import shutil

    from tandem import _core
    from tandem.errors import BundleError

    for bad in ([5, 3], [1, 300], [7]):
        dst = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(vocab_pair.bundle, dst)
        data = json.loads((dst / "tandem.json").read_text())
        data["graphs"]["tandem_drafter"]["draft_vocab"] = bad
        (dst / "tandem.json").write_text(json.dumps(data))
        with pytest.raises(BundleError, match="draft_vocab"):
            _core.Model(str(dst), threads=1)
