"""The C++ loop against the PyTorch reference loops (train/reference.py), mode by mode.

Oracles (docs/METHOD.md §3): every mode's greedy output equals the reference token for token;
speed/vanilla equal large except at certified near-ties; tandem with γ=1 equals large;
sampled speed has M_L's distribution; EOS / max_new_tokens / context stop exactly.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import chisquare

from tandem._core import GenerateOptions
from tandem.runtime import load
from tandem.train.reference import generate_reference
from tandem.train.sampling import SamplingParams, probs_from_logits

PROMPTS = [[1, 2, 3, 4], [17], [5, 80, 81, 82, 83, 84, 85, 86, 87, 88, 120]]
NEAR_TIE = 1e-3


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


def reference(pair, prompt, **kwargs):
    options = GenerateOptions(**{"max_new_tokens": 24, **kwargs})
    return generate_reference(pair.large, prompt, options, context_length=64, tandem=pair.tandem, drafter=pair.plain)


def top2_gap(logits: torch.Tensor) -> float:
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def assert_equal_or_certified(got: list[int], expected: list[int], large, prompt: list[int]) -> None:
    """got == expected, or they part at a position where M_L's top-2 logit gap is < 1e-3."""
    if got == expected:
        return
    i = next((k for k, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    assert i is not None, f"one output is a prefix of the other: {got} vs {expected}"
    with torch.no_grad():
        logits = large(torch.tensor([prompt + expected[:i]])).logits[0, -1]
    gap = top2_gap(logits)
    assert gap < NEAR_TIE, f"outputs differ at token {i} where M_L's top-2 gap is {gap:.2e} (not a near-tie)"


MODE_CASES = [
    ("large", 1, False), ("tandem", 1, False), ("tandem", 2, False), ("tandem", 4, False),
    ("speed", 1, False), ("speed", 2, False), ("speed", 4, False), ("speed", 7, False),
    ("vanilla", 1, False), ("vanilla", 3, False), ("vanilla", 7, False),
    ("speed", 0, True), ("vanilla", 0, True),
]


@pytest.mark.parametrize(("mode", "gamma", "adaptive"), MODE_CASES,
                         ids=[f"{m}-{'auto' if a else g}" for m, g, a in MODE_CASES])
def test_greedy_matches_reference(pair, model, mode, gamma, adaptive):
    for prompt in PROMPTS:
        kwargs = dict(mode=mode, adaptive=adaptive, router_threshold=0.2, max_block_length=6, draft_cost=0.1,
                      verify_cost=0.15)
        if not adaptive:
            kwargs["block_length"] = gamma
        ref = reference(pair, prompt, **kwargs)
        got = model.generate(prompt, mode=mode, block_length="auto" if adaptive else gamma,
                             router_threshold=0.2, max_block_length=6 if adaptive else None, draft_cost=0.1,
                             verify_cost=0.15,
                             max_new_tokens=24, ignore_eos=True)
        assert got.ids == ref.ids
        assert got.finish_reason == ref.finish_reason
        s = got.stats
        assert s["rounds"] == len(ref.accepted)
        assert s["drafted"] == sum(ref.drafted) and s["accepted"] == sum(ref.accepted)
        assert s["large_calls"] == ref.large_calls
        assert s["drafter_calls"] == ref.drafter_calls


@pytest.mark.parametrize("mode", ["speed", "vanilla", "tandem"])
def test_lossless_modes_equal_large(pair, model, mode):
    """speed/vanilla (any γ) and tandem with γ=1 reproduce large greedy decoding."""
    gammas = [1] if mode == "tandem" else [1, 2, 4, 7]
    for prompt in PROMPTS:
        base = model.generate(prompt, mode="large", max_new_tokens=30, ignore_eos=True).ids
        for gamma in gammas:
            got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=30, ignore_eos=True)
            assert_equal_or_certified(got.ids, base, pair.large, prompt)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_draft_equal_target_accepts_everything(self_draft_pair, precision, tmp_path):
    """Vanilla with M_L as its own drafter: every draft accepted, output == large; at int4
    too, where the drafter's one-token steps and M_L's verification blocks run different
    kernels unless the graphs keep them bit-identical."""
    bundle = self_draft_pair.bundle
    if precision != "fp32":
        from tandem.export.bundle import export_bundle

        bundle = tmp_path / "int4"
        export_bundle(self_draft_pair.large, bundle, plain=self_draft_pair.large, context_length=64,
                      precision=precision, progress=None)
    model = load(bundle, threads=1)
    prompt = [3, 9, 27]
    base = model.generate(prompt, mode="large", max_new_tokens=25, ignore_eos=True)
    got = model.generate(prompt, mode="vanilla", block_length=4, max_new_tokens=25, ignore_eos=True)
    assert got.ids == base.ids
    assert got.stats["acceptance_rate"] == 1.0
    # 1 token from the prefill, 4 rounds of γ + 1 = 5, then 4 left: a round of 3 drafts
    assert got.stats["rounds"] == 5
    assert got.stats["accepted_histogram"] == [0, 0, 0, 1, 4]


def test_stops_exactly(pair, model):
    prompt = PROMPTS[0]
    base = model.generate(prompt, mode="large", max_new_tokens=30, ignore_eos=True).ids
    for mode, gamma in [("speed", 4), ("vanilla", 7), ("large", 1), ("tandem", 3)]:
        full = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=30, ignore_eos=True).ids
        if mode != "tandem":
            assert full == base
        # EOS inside a drafted block: declare a token of the output EOS
        eos = full[5]
        first = full.index(eos)
        got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=30, eos_token_id=eos)
        ref = reference(pair, prompt, mode=mode, block_length=gamma, max_new_tokens=30, eos_token_ids=(eos,))
        assert got.ids == ref.ids == full[: first + 1]
        assert got.finish_reason == ref.finish_reason == "eos"
        # max_new_tokens inside a block
        # (tandem's blocks depend on the room left, so only lossless modes give a prefix of `full`)
        got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=6, ignore_eos=True)
        ref = reference(pair, prompt, mode=mode, block_length=gamma, max_new_tokens=6)
        assert got.ids == ref.ids and len(got.ids) == 6 and got.finish_reason == "max_new_tokens"
        if mode != "tandem":
            assert got.ids == full[:6]
        # context limit (64): a prompt of 50 leaves room for exactly 14 tokens
        long_prompt = list(range(10, 60))
        got = model.generate(long_prompt, mode=mode, block_length=gamma, max_new_tokens=100, ignore_eos=True)
        ref = reference(pair, long_prompt, mode=mode, block_length=gamma, max_new_tokens=100)
        assert len(got.ids) == 14 and got.finish_reason == "length"
        assert got.ids == ref.ids and ref.finish_reason == "length"


def exact_joint(large, prompt: list[int], params: SamplingParams, steps: int) -> dict[tuple[int, ...], float]:
    """M_L's exact distribution of the next `steps` tokens under the sampling processing."""
    dist = {(): 1.0}
    for _ in range(steps):
        nxt = {}
        for seq, mass in dist.items():
            with torch.no_grad():
                logits = large(torch.tensor([prompt + list(seq)])).logits[0, -1]
            probs = probs_from_logits(logits, params)
            for tok in torch.nonzero(probs > 0).flatten().tolist():
                nxt[seq + (tok,)] = mass * float(probs[tok])
        dist = nxt
    return dist


@pytest.mark.parametrize(("mode", "temperature", "top_k", "top_p"),
                         [("speed", 1.0, 3, 1.0), ("speed", 0.7, 0, 0.6), ("vanilla", 1.3, 3, 0.9)])
def test_sampled_speculative_has_large_distribution(pair, model, mode, temperature, top_k, top_p):
    """Chi-square of the joint distribution of 3 tokens (two of them from speculative rounds)
    over seeded runs against M_L's exact distribution."""
    prompt = [4, 8, 15]
    params = SamplingParams(temperature, top_k, top_p)
    exact = exact_joint(pair.large, prompt, params, steps=3)
    runs = 3000
    counts = dict.fromkeys(exact, 0)
    for seed in range(runs):
        got = model.generate(prompt, mode=mode, block_length=2, max_new_tokens=3, do_sample=True,
                             temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, ignore_eos=True)
        key = tuple(got.ids)
        assert key in counts, f"sampled {key}, which M_L's processed distribution never produces"
        counts[key] += 1
    # merge rare outcomes so that every expected count is >= 5
    keys = sorted(exact, key=exact.get, reverse=True)
    observed, expected, tail_o, tail_e = [], [], 0, 0.0
    for k in keys:
        if exact[k] * runs >= 5:
            observed.append(counts[k])
            expected.append(exact[k] * runs)
        else:
            tail_o += counts[k]
            tail_e += exact[k] * runs
    if tail_e > 0:
        observed.append(tail_o)
        expected.append(tail_e)
    scale = sum(observed) / sum(expected)
    p_value = chisquare(observed, [e * scale for e in expected]).pvalue
    assert p_value > 1e-3, (p_value, list(itertools.islice(zip(observed, expected, strict=True), 8)))
