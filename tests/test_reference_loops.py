"""The reference decoding loops (train/reference.py) and sampling rules (train/sampling.py).

Oracles (docs/METHOD.md §3): greedy ``large`` equals ``transformers`` ``generate``; greedy
``speed``/``vanilla`` and ``tandem`` with γ = 1 equal greedy ``large`` token for token except
after a certified near-tie (M_L's top-2 logit gap < 1e-3 at the divergence, computed, never
skipped); sampled ``speed``/``vanilla`` have M_L's exact distribution (chi-square against an
enumeration, over seeded runs). Models are tiny and built in-process.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from scipy.stats import chisquare
from tiny_models import tiny_config, tiny_model

from tandem._core import GenerateOptions
from tandem.errors import InvalidArgumentError
from tandem.train import reference
from tandem.train.model import create_tandem
from tandem.train.reference import ReferenceResult, generate_reference, sampling_params
from tandem.train.router import Router, RouterConfig
from tandem.train.sampling import (
    SamplingParams,
    accept_greedy,
    accept_sampled,
    greedy_choose,
    probs_from_logits,
    residual,
)

TIE_GAP = 1e-3  # docs/METHOD.md §3.4: a divergence is certified when M_L's top-2 gap is below this
PROMPTS = ([5, 17, 42, 9], [250, 3, 3, 77, 120, 8, 61])
GAMMAS = (1, 2, 4, 7)
MAX_NEW = 24


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run ~20x faster on one thread than with threads contending for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nearly_bigram(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Scale every layer's residual branch. Small scales make the next token depend mostly on
    the current one, so a drafter sharing M_L's embeddings and head is often right (drafts get
    accepted), while the context still matters (drafts also get rejected)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
    return model


def make_models(vocab_size: int, scale: float, seed: int = 0) -> tuple:
    """(M_L, tandem M_S, plain drafter). M_S starts as M_L's copy and reads x^(ℓ(j)) through
    identity projections; the plain drafter has M_L's embeddings/head and its own layers."""
    config = tiny_config(vocab_size=vocab_size, max_positions=64, hidden_size=32)
    large = nearly_bigram(tiny_model(config, seed), scale)
    tandem = create_tandem(large, copy.deepcopy(large), "proportional", router=True, seed=seed).eval()
    with torch.no_grad():
        for projection in tandem.projections:
            projection.weight.copy_(torch.eye(config.hidden_size))
    drafter = nearly_bigram(tiny_model(config, seed + 1), scale)
    shared = {k: v for k, v in large.state_dict().items() if ".layers." not in k}
    drafter.load_state_dict(shared, strict=False)
    return large, tandem, drafter


@pytest.fixture(scope="module")
def models() -> tuple:
    return make_models(vocab_size=300, scale=0.03)


@pytest.fixture(scope="module")
def small_vocab_models() -> tuple:
    return make_models(vocab_size=6, scale=0.3, seed=3)


def run(large: torch.nn.Module, prompt: list[int], mode: str, *, tandem: torch.nn.Module | None = None,
        drafter: torch.nn.Module | None = None, generator: torch.Generator | None = None,
        context_length: int | None = None, **options: object) -> ReferenceResult:
    options.setdefault("max_new_tokens", 32)
    if options.get("adaptive"):  # the reference does not time: zero costs leave τ alone to stop a draft
        options.setdefault("draft_cost", 0.0)
        options.setdefault("verify_cost", 0.0)
    return generate_reference(large, prompt, GenerateOptions(mode=mode, **options), context_length=context_length,
                              tandem=tandem, drafter=drafter, generator=generator)


def top2_gap(logits: torch.Tensor) -> float:
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def assert_equals_large(got: ReferenceResult, ref: ReferenceResult, label: str) -> None:
    """Token-for-token equality with greedy ``large``; a divergence passes only when M_L's top-2
    logit gap at that token (from the ``large`` run) is < TIE_GAP. Never skipped."""
    for j, (a, b) in enumerate(zip(got.ids, ref.ids, strict=False)):
        if a != b:
            gap = top2_gap(ref.p_logits[j])
            assert gap < TIE_GAP, (
                f"{label}: token {j} is {a}, greedy large chose {b}; M_L's top-2 gap there is "
                f"{gap:.3e} >= {TIE_GAP} (not a near-tie)")
            return
    assert (got.ids, got.finish_reason) == (ref.ids, ref.finish_reason), label


# --------------------------------------------------------------------------- sampling.py tables


def log(*probs: float) -> list[float]:
    return torch.log(torch.tensor(probs)).tolist()


@pytest.mark.parametrize(("logits", "params", "expected"), [
    ([0.0, 0.0, 0.0, 0.0], SamplingParams(), [0.25, 0.25, 0.25, 0.25]),
    ([2.0, 0.0], SamplingParams(temperature=2.0), [0.7310586, 0.2689414]),  # softmax([1, 0])
    ([1.0, 3.0, 2.0, 0.0], SamplingParams(top_k=1), [0.0, 1.0, 0.0, 0.0]),
    ([1.0, 3.0, 3.0, 0.0], SamplingParams(top_k=1), [0.0, 0.5, 0.5, 0.0]),  # ties with k-th kept
    ([0.0, 1.0, 1.0, 1.0], SamplingParams(top_k=2), [0.0, 1 / 3, 1 / 3, 1 / 3]),
    ([0.0, 2.0, 1.0, 3.0], SamplingParams(top_k=2), [0.0, 0.2689414, 0.0, 0.7310586]),
    # top-p ties: stable order, the lower id comes first and alone reaches the mass
    ([1.0, 1.0, 0.0], SamplingParams(top_p=0.3), [1.0, 0.0, 0.0]),
    ([0.0, 0.0, 0.0, 0.0], SamplingParams(top_k=9), [0.25, 0.25, 0.25, 0.25]),  # k >= V: off
    # the smallest probability-ordered prefix with mass >= top_p survives
    (log(0.5, 0.3, 0.2), SamplingParams(top_p=0.4), [1.0, 0.0, 0.0]),
    (log(0.2, 0.5, 0.3), SamplingParams(top_p=0.7), [0.0, 0.625, 0.375]),
    (log(0.5, 0.3, 0.2), SamplingParams(top_p=0.9), [0.5, 0.3, 0.2]),
    # top-k first (renormalised), then top-p: [0.5, 0.3, 0.2] -> [0.625, 0.375] -> [1, 0]
    (log(0.5, 0.3, 0.2), SamplingParams(top_k=2, top_p=0.6), [1.0, 0.0, 0.0]),
    ([5.0, 1.0], SamplingParams(top_p=0.01), [1.0, 0.0]),  # always >= 1 token
])
def test_probs_from_logits(logits, params, expected):
    probs = probs_from_logits(torch.tensor(logits), params)
    torch.testing.assert_close(probs, torch.tensor(expected), atol=1e-6, rtol=0)


def test_probs_from_logits_rows_are_independent():
    logits = torch.tensor([[1.0, 3.0, 2.0], [3.0, 2.0, 1.0]])
    probs = probs_from_logits(logits, SamplingParams(top_k=1))
    torch.testing.assert_close(probs, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": -1.0}, {"top_k": -1},
                                    {"top_p": 0.0}, {"top_p": 1.5}])
def test_sampling_params_reject(kwargs):
    with pytest.raises(InvalidArgumentError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize(("logits", "token"), [([0.0, 2.0, 1.0], 1), ([3.0, 3.0, 1.0], 0),
                                               ([1.0, 2.0, 2.0], 1)])
def test_greedy_choose_first_maximum(logits, token):
    assert greedy_choose(torch.tensor(logits)) == token


# argmax of the rows of P_LOGITS: 2, 0, 1, 3
P_LOGITS = torch.tensor([[0.0, 1.0, 5.0, 0.0], [4.0, 1.0, 0.0, 0.0], [0.0, 9.0, 1.0, 0.0],
                         [0.0, 0.0, 0.0, 2.0]])


@pytest.mark.parametrize(("drafts", "expected"), [
    ([], (0, 2)),  # no drafts: a plain greedy step
    ([2, 0, 1], (3, 3)),  # all accepted: bonus argmax p_4
    ([2, 0], (2, 1)),
    ([1, 0, 1], (0, 2)),  # first rejected: correction argmax p_1
    ([2, 3, 1], (1, 0)),
])
def test_accept_greedy(drafts, expected):
    assert accept_greedy(drafts, P_LOGITS[: len(drafts) + 1]) == expected


@pytest.mark.parametrize(("p", "q", "expected"), [
    ([0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]),
    ([0.2, 0.3, 0.5], [0.4, 0.4, 0.2], [0.0, 0.0, 1.0]),
    ([0.1, 0.6, 0.3], [0.3, 0.2, 0.5], [0.0, 1.0, 0.0]),
    ([0.25, 0.75], [0.25, 0.75], [0.25, 0.75]),  # p == q: nothing to reject with, p itself
])
def test_residual(p, q, expected):
    torch.testing.assert_close(residual(torch.tensor(p), torch.tensor(q)), torch.tensor(expected))


@pytest.mark.parametrize(("drafts", "q", "p", "expected"), [
    # q == p: min(1, p/q) = 1, every draft stands, bonus from a one-hot p_{g+1}
    ([1, 0], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0, 0, 1.0]], (2, 2)),
    # p(d_1) = 0: always rejected; the residual is one-hot on token 2
    ([0], [[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], (0, 2)),
    # d_1 certain under p, d_2 impossible: correction from norm(max(0, p_2 - q_2)) = token 1
    ([2, 0], [[0.1, 0.1, 0.8], [1.0, 0.0, 0.0]], [[0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]], (1, 1)),
])
def test_accept_sampled_table(drafts, q, p, expected):
    generator = torch.Generator().manual_seed(0)
    assert accept_sampled(drafts, torch.tensor(q), torch.tensor(p), generator) == expected


def test_accept_sampled_emits_p():
    """Draft one token from q, verify: the first emitted token is distributed as p."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    bonus = torch.tensor([1.0, 0.0, 0.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    n = 4000
    for _ in range(n):
        d = int(torch.multinomial(q, 1, generator=generator))
        accepted, token = accept_sampled([d], q[None], torch.stack([p, bonus]), generator)
        counts[d if accepted else token] += 1
    assert chisquare(counts.numpy(), (p * n).numpy()).pvalue > 1e-3


# --------------------------------------------------------------------------- greedy oracles


@pytest.fixture(scope="module")
def large_refs(models) -> list[ReferenceResult]:
    large, _, _ = models
    return [run(large, prompt, "large", max_new_tokens=MAX_NEW) for prompt in PROMPTS]


def hf_greedy(large: torch.nn.Module, prompt: list[int], eos: int | None) -> list[int]:
    out = large.generate(torch.tensor([prompt]), max_new_tokens=MAX_NEW, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_large_equals_transformers_generate(models, large_refs):
    large, _, _ = models
    for prompt, ref in zip(PROMPTS, large_refs, strict=True):
        # the reference has no EOS: pick one that greedy never produces
        eos = next(t for t in range(large.config.vocab_size) if t not in ref.ids)
        assert ref.ids == hf_greedy(large, prompt, eos)
        assert (ref.finish_reason, ref.large_calls, ref.drafter_calls) == ("max_new_tokens", MAX_NEW, 0)
        assert len(ref.p_logits) == MAX_NEW


def test_large_with_eos_equals_transformers_generate(models, large_refs):
    large, _, _ = models
    prompt, ref = PROMPTS[0], large_refs[0]
    eos = ref.ids[5]
    got = run(large, prompt, "large", max_new_tokens=MAX_NEW, eos_token_ids=(eos,))
    assert got.ids == hf_greedy(large, prompt, eos) == ref.ids[: ref.ids.index(eos) + 1]
    assert got.finish_reason == "eos"


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_speculative_greedy_equals_large(models, large_refs, mode):
    large, tandem, drafter = models
    accepted = drafted = 0
    for prompt, ref in zip(PROMPTS, large_refs, strict=True):
        for gamma in GAMMAS:
            got = run(large, prompt, mode, tandem=tandem, drafter=drafter, block_length=gamma,
                      max_new_tokens=MAX_NEW)
            assert_equals_large(got, ref, f"{mode} γ={gamma} prompt={prompt}")
            assert all(n <= g <= gamma for n, g in zip(got.accepted, got.drafted, strict=True))
            assert got.large_calls == len(got.accepted) + 1
            accepted, drafted = accepted + sum(got.accepted), drafted + sum(got.drafted)
    # both branches of verification were exercised: drafts were accepted and rejected
    assert 0.1 < accepted / drafted < 0.95, (accepted, drafted)


def test_vanilla_with_target_as_drafter_accepts_everything(models, large_refs):
    large, _, _ = models
    got = run(large, PROMPTS[0], "vanilla", drafter=large, block_length=4, max_new_tokens=MAX_NEW)
    assert got.ids == large_refs[0].ids
    # 1 (prefill) + 4 rounds of 4 drafts + bonus = 21; room 3 -> 2 drafts + bonus = 24
    assert got.accepted == got.drafted == [4, 4, 4, 4, 2]
    # drafter: 1 prefill call + g steps per round
    assert (got.large_calls, got.drafter_calls) == (6, 1 + 18)


def test_tandem_gamma_1_equals_large(models, large_refs):
    large, tandem, _ = models
    for prompt, ref in zip(PROMPTS, large_refs, strict=True):
        got = run(large, prompt, "tandem", tandem=tandem, block_length=1, max_new_tokens=MAX_NEW)
        assert got.ids == ref.ids and got.drafter_calls == 0


def test_tandem_blocks(models):
    """Standalone tandem: each round emits γ-1 M_S tokens plus M_L's; the prompt is memory only."""
    large, tandem, _ = models
    got = run(large, PROMPTS[1], "tandem", tandem=tandem, block_length=4, max_new_tokens=11)
    # 1 (prefill) + 4 + 4; room 2 -> 1 draft + M_L's token = 11
    assert got.drafted == got.accepted == [3, 3, 1]
    assert (len(got.ids), got.large_calls, got.drafter_calls) == (11, 4, 7)


# --------------------------------------------------------------------------- stopping


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_eos_inside_drafted_block(models, large_refs, mode):
    large, tandem, drafter = models
    if mode == "vanilla":
        drafter = large  # every draft accepted, so the block layout is known
    ref = large_refs[1]
    # ids[0] comes from prefill; with γ=4, round r emits drafts ids[5r+1..5r+4], bonus ids[5r+5]
    hits = [j for j in range(1, len(ref.ids)) if ref.ids[j] not in ref.ids[:j] and j % 5 != 0]
    assert len(hits) >= 3, "too few tokens occur first inside a block; change the prompt"
    unused = next(t for t in range(large.config.vocab_size) if t not in ref.ids)
    for j in hits[:3]:
        got = run(large, PROMPTS[1], mode, tandem=tandem, drafter=drafter, block_length=4,
                  max_new_tokens=MAX_NEW, eos_token_ids=(unused, ref.ids[j]))
        assert (got.ids, got.finish_reason) == (ref.ids[: j + 1], "eos"), (mode, j)
        assert len(got.p_logits) == len(got.ids)


def test_zero_new_tokens(models):
    large, tandem, _ = models
    got = run(large, PROMPTS[0], "speed", tandem=tandem, max_new_tokens=0)
    assert (got.ids, got.finish_reason, got.large_calls, got.drafter_calls) == ([], "max_new_tokens", 0, 0)


def test_eos_at_prefill(models, large_refs):
    large, tandem, _ = models
    eos = large_refs[0].ids[0]
    got = run(large, PROMPTS[0], "speed", tandem=tandem, eos_token_ids=(eos,))
    assert (got.ids, got.finish_reason, got.large_calls, got.drafter_calls) == ([eos], "eos", 1, 0)


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 5, 6, 7, 10])
def test_max_new_tokens_clamps_the_block(models, large_refs, max_new_tokens):
    large, _, _ = models
    got = run(large, PROMPTS[0], "vanilla", drafter=large, block_length=4, max_new_tokens=max_new_tokens)
    assert got.ids == large_refs[0].ids[:max_new_tokens] and got.finish_reason == "max_new_tokens"
    assert len(got.p_logits) == max_new_tokens
    # g = min(γ, room - 1) never drafts past the budget, so every round is fully accepted
    assert got.accepted == got.drafted
    assert 1 + sum(got.drafted) + len(got.drafted) == max_new_tokens


@pytest.mark.parametrize("mode", ["large", "tandem", "speed", "vanilla"])
@pytest.mark.parametrize("new", [1, 4, 9])
def test_context_limit(models, large_refs, mode, new):
    large, tandem, drafter = models
    prompt, ref = PROMPTS[1], large_refs[1]
    kw = dict(tandem=tandem, drafter=drafter, block_length=3, context_length=len(prompt) + new)
    got = run(large, prompt, mode, max_new_tokens=MAX_NEW, **kw)
    assert len(got.ids) == new and got.finish_reason == "length"
    if mode != "tandem":  # tandem is lossy
        assert got.ids == ref.ids[:new]
    # both limits reached at the same token: max_new_tokens is reported
    both = run(large, prompt, mode, max_new_tokens=new, **kw)
    assert (both.ids, both.finish_reason) == (got.ids, "max_new_tokens")


# --------------------------------------------------------------------------- adaptive


@pytest.fixture(scope="module")
def routed_drafter(models) -> torch.nn.Module:
    """The plain drafter carrying a (random) router, as adaptive vanilla expects."""
    routed = copy.deepcopy(models[2])
    torch.manual_seed(0)
    routed.router = Router(RouterConfig(embed_dim=routed.config.hidden_size))
    return routed


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_adaptive_extremes(models, routed_drafter, mode):
    """τ = 0 never stops (fixed max block); τ = 1.01 stops right after min_block_length drafts
    (fixed min block, plus the spent router step of every round that allowed more drafts)."""
    large, tandem, _ = models
    kw = dict(tandem=tandem, drafter=routed_drafter, max_new_tokens=20, min_block_length=2,
              max_block_length=5)
    for prompt in PROMPTS:
        never = run(large, prompt, mode, adaptive=True, router_threshold=0.0, **kw)
        fixed_max = run(large, prompt, mode, block_length=5, **kw)
        assert (never.ids, never.accepted, never.drafted, never.drafter_calls) == (
            fixed_max.ids, fixed_max.accepted, fixed_max.drafted, fixed_max.drafter_calls)
        always = run(large, prompt, mode, adaptive=True, router_threshold=1.01, **kw)
        fixed_min = run(large, prompt, mode, block_length=2, **kw)
        assert (always.ids, always.accepted, always.drafted) == (
            fixed_min.ids, fixed_min.accepted, fixed_min.drafted)
        rooms = [20 - 1 - sum(always.accepted[:r]) - r for r in range(len(always.accepted))]
        spent = sum(min(5, room - 1) > 2 for room in rooms)
        assert spent > 0 and always.drafter_calls == fixed_min.drafter_calls + spent


@pytest.mark.parametrize("mode", ["speed", "vanilla"])
def test_adaptive_greedy_equals_large(models, routed_drafter, large_refs, mode):
    large, tandem, _ = models
    for prompt, ref in zip(PROMPTS, large_refs, strict=True):
        got = run(large, prompt, mode, tandem=tandem, drafter=routed_drafter, adaptive=True,
                  router_threshold=0.5, min_block_length=1, max_block_length=6, max_new_tokens=MAX_NEW)
        assert_equals_large(got, ref, f"adaptive {mode}")
        assert all(1 <= g <= 6 for g in got.drafted[:-1])


# --------------------------------------------------------------------------- sampled oracle

NEW = 4  # tokens per sampled run: prefill, one round of up to 3 drafts, maybe a tail round
SAMPLED_PROMPT = [1, 3, 2]
RUNS = 300


def exact_joint(large: torch.nn.Module, prompt: list[int], params: SamplingParams) -> torch.Tensor:
    """M_L's exact distribution of the next NEW tokens, ``[V] * NEW``, by enumeration:
    P(x_1..x_N) = Π_k p(x_k | prompt, x_1..x_{k-1}), every p processed like the sampler's."""
    vocab = large.config.vocab_size
    prefixes = torch.tensor(list(itertools.product(range(vocab), repeat=NEW - 1)))  # [V^(N-1), N-1]
    ids = torch.cat([torch.tensor(prompt).expand(len(prefixes), -1), prefixes], dim=1)
    with torch.no_grad():
        logits = large(input_ids=ids).logits[:, len(prompt) - 1:]  # [V^(N-1), N, V]
    probs = probs_from_logits(logits, params).double()  # row b, step k: p(. | prompt, prefix_b[:k])
    seqs = torch.tensor(list(itertools.product(range(vocab), repeat=NEW)))  # [V^N, N]
    row = seqs[:, :-1] @ (vocab ** torch.arange(NEW - 2, -1, -1))  # prefix index of each sequence
    step_probs = probs[row].gather(-1, seqs[:, :, None])[..., 0]  # [V^N, N]
    return step_probs.prod(-1).reshape([vocab] * NEW)


def pooled_chisquare(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Chi-square p-value; cells with expected count < 5 are pooled into one. A token sequence
    M_L cannot produce (expected 0, e.g. cut by top-k) that was observed gives p = 0."""
    if bool((observed[expected == 0] > 0).any()):
        return 0.0
    small = expected < 5
    obs, exp = observed[~small], expected[~small]
    if float(expected[small].sum()) > 0:
        obs = torch.cat([obs, observed[small].sum()[None]])
        exp = torch.cat([exp, expected[small].sum()[None]])
    return float(chisquare(obs.numpy(), (exp * obs.sum() / exp.sum()).numpy()).pvalue)


def sampled_pvalue(models: tuple, mode: str, **sampling: object) -> tuple[float, float]:
    """Smallest chi-square p-value over adjacent pairs (x_k, x_{k+1}) of RUNS seeded runs, and
    the acceptance rate of the drafts."""
    large, tandem, drafter = models
    generator = torch.Generator().manual_seed(1234)
    counts = torch.zeros([large.config.vocab_size] * NEW, dtype=torch.float64)
    accepted = drafted = 0
    for _ in range(RUNS):
        got = run(large, SAMPLED_PROMPT, mode, tandem=tandem, drafter=drafter, generator=generator,
                  block_length=3, max_new_tokens=NEW, do_sample=True, **sampling)
        counts[tuple(got.ids)] += 1
        accepted, drafted = accepted + sum(got.accepted), drafted + sum(got.drafted)
    params = sampling_params(GenerateOptions(mode=mode, do_sample=True, **sampling))
    expected = RUNS * exact_joint(large, SAMPLED_PROMPT, params)
    pvalues = []
    for k in range(NEW - 1):
        others = [a for a in range(NEW) if a not in (k, k + 1)]
        pvalues.append(pooled_chisquare(counts.sum(others).flatten(), expected.sum(others).flatten()))
    return min(pvalues), accepted / drafted


@pytest.mark.parametrize(("mode", "sampling"), [
    ("speed", {}),
    ("speed", {"temperature": 0.7, "top_k": 3, "top_p": 0.9}),
    ("vanilla", {"temperature": 1.5, "top_p": 0.8}),
])
def test_sampled_speculative_has_large_distribution(small_vocab_models, mode, sampling):
    pvalue, acceptance = sampled_pvalue(small_vocab_models, mode, **sampling)
    assert pvalue > 1e-3
    assert 0.1 < acceptance < 0.9  # both acceptance and rejection were exercised


@pytest.mark.parametrize("mode", ["large", "tandem", "speed", "vanilla"])
def test_sampled_runs_are_reproducible(small_vocab_models, mode):
    large, tandem, drafter = small_vocab_models
    runs = [run(large, SAMPLED_PROMPT, mode, tandem=tandem, drafter=drafter, do_sample=True,
                generator=torch.Generator().manual_seed(seed), block_length=3, max_new_tokens=12,
                temperature=1.3)
            for seed in (7, 7, 8)]
    assert runs[0].ids == runs[1].ids and len(runs[0].ids) == 12
    assert runs[0].ids != runs[2].ids


def test_sampled_oracle_catches_a_broken_acceptance_rule(small_vocab_models, monkeypatch):
    """The oracle has power: accepting every draft (so the output follows q) must fail it."""
    def accept_all(drafts, q, p, generator=None):
        return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=generator))

    monkeypatch.setattr(reference, "accept_sampled", accept_all)
    assert sampled_pvalue(small_vocab_models, "speed")[0] < 1e-6


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kwargs", [
    {"mode": "beam"},
    {"mode": "speed", "block_length": -1},
    {"mode": "speed", "block_length": 17},  # past the exporter's default max_block_length
    {"mode": "large", "max_new_tokens": -1},
    {"mode": "vanilla", "adaptive": True, "min_block_length": -1},
    {"mode": "speed", "adaptive": True, "draft_cost": float("nan")},
    {"mode": "speed", "adaptive": True, "verify_cost": float("inf")},
    {"mode": "tandem", "adaptive": True},
    {"mode": "speed", "adaptive": True, "min_block_length": 5, "max_block_length": 4},
    {"mode": "speed", "do_sample": True, "temperature": 0.0},
    {"mode": "speed", "do_sample": True, "top_p": 2.0},
])
def test_invalid_config(models, kwargs):
    """The reference checks its options as the runtime does (GenerateOptions.resolve)."""
    large, tandem, drafter = models
    with pytest.raises(InvalidArgumentError):
        generate_reference(large, PROMPTS[0], GenerateOptions(**kwargs), tandem=tandem, drafter=drafter)


def test_invalid_inputs(models):
    large, tandem, drafter = models
    cases = [
        (PROMPTS[0], dict(mode="speed"), {}),  # no tandem M_S
        (PROMPTS[0], dict(mode="vanilla"), {"tandem": tandem}),  # no plain drafter
        (PROMPTS[0], dict(mode="vanilla", adaptive=True), {"drafter": drafter}),  # no router
        (PROMPTS[0], dict(mode="large"), {"context_length": 65}),  # > max positions (64)
        (PROMPTS[0], dict(mode="large"), {"context_length": 4}),  # the prompt fills it
        ([], dict(mode="large"), {}),
        ([300], dict(mode="large"), {}),  # outside the vocabulary
    ]
    for prompt, options, kw in cases:
        with pytest.raises(InvalidArgumentError):
            generate_reference(large, prompt, GenerateOptions(**options), **kw)
