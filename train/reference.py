"""PyTorch reference decoding loops for every mode (docs/CONTRACTS.md, "Decoding modes").

The C++ loop is tested token for token against these functions, so they follow the contract
literally and favour clarity over speed. One round of every mode is :func:`decode_round`:

    g  = min(γ_mode, room - 1)              drafts this round (γ_mode: 0 | γ-1 | γ | max block)
    d  = draft(g)                           M_S steps; d_k = choose(q_k)
    p  = verify([t, d_1..d_g])              one M_L block pass: p_1..p_{g+1}
    n, x = accept(d, q, p)                  x: correction, bonus, or M_L's next-block token
    emit(d_1..d_n, x)                       stops at EOS / max_new_tokens / context limit
    rewind(n)                               M_L to covered+1+n; drafter per mode; t = x

Modes: ``large`` (γ_mode = 0), ``tandem`` (standalone Tandem, γ_mode = γ-1, every draft
accepted), ``speed`` (tandem drafter, lossless) and ``vanilla`` (plain HF drafter, lossless).
``adaptive`` (speed/vanilla) drafts up to ``max_block_length`` and stops early on the router of
the decoding mode (greedy or sampled).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tandem._core import BundleDefaults, GenerateOptions
from tandem.errors import InvalidArgumentError
from tandem.manifest import DEFAULT_BLOCK_LENGTH, DEFAULT_MAX_BLOCK_LENGTH, DEFAULT_ROUTER_THRESHOLD
from tandem.train.model import (
    KV,
    TandemSmall,
    empty_past,
    large_step,
    plain_router_score,
    plain_step,
)
from tandem.train.router import ROUTER_KINDS, router_kind
from tandem.train.sampling import (
    SamplingParams,
    accept_greedy,
    accept_sampled,
    greedy_choose,
    probs_from_logits,
    sample,
)

FINISH_REASONS = ("eos", "max_new_tokens", "length")

# The reference decodes without a bundle: options left at "the bundle's default" take the
# values the exporter writes into a bundle by default.
EXPORT_DEFAULTS = BundleDefaults(block_length=DEFAULT_BLOCK_LENGTH, max_block_length=DEFAULT_MAX_BLOCK_LENGTH,
                                 router_threshold=DEFAULT_ROUTER_THRESHOLD)


def drafts_per_round(options: GenerateOptions) -> int:
    """γ_mode: the most drafts in one round before clamping to the room left (resolved options)."""
    if options.mode == "large":
        return 0
    if options.mode == "tandem":
        return options.block_length - 1
    return options.max_block_length if options.adaptive else options.block_length


def sampling_params(options: GenerateOptions) -> SamplingParams:
    return SamplingParams(options.temperature, options.top_k, options.top_p)


@dataclass
class ReferenceResult:
    ids: list[int] = field(default_factory=list)  # generated tokens only, EOS included if hit
    finish_reason: str = ""  # "eos" | "max_new_tokens" | "length"
    accepted: list[int] = field(default_factory=list)  # per round: drafts accepted (n)
    drafted: list[int] = field(default_factory=list)  # per round: drafts made (g after stopping)
    large_calls: int = 0  # M_L passes, prefill included
    drafter_calls: int = 0  # drafter passes (vanilla: prompt prefill included)
    p_logits: list[Tensor] = field(default_factory=list)  # per emitted token: M_L logits [V] at it


@dataclass
class DecodeState:
    """Everything that changes during decoding.

    Invariants between rounds: ``tokens = prompt + result.ids``; ``t = tokens[-1]`` is the
    pending token and ``len(tokens) == covered + 1`` (M_L has processed all but ``t``).
    Tandem drafter: ``drafter_past`` holds memory K/V for positions ``[0, covered - m)`` and
    ``pending_memory`` (``[1, m, d_L]`` per large layer) the M_L reps of ``[covered - m, covered)``.
    Plain drafter: ``drafter_past`` holds own K/V of ``tokens[:len]``.
    """

    tokens: list[int]
    covered: int
    large_past: list[KV]  # [1, h, covered, dh] per M_L layer
    drafter_past: list[KV]  # [1, h, len, dh] per drafter layer ([] without a drafter)
    pending_memory: list[Tensor]  # [1, m, d_L] per tandem.config.large_layers entry
    result: ReferenceResult = field(default_factory=ReferenceResult)

    @property
    def drafter_len(self) -> int:
        return self.drafter_past[0][0].shape[2] if self.drafter_past else 0


@dataclass(frozen=True)
class Models:
    """The models of one decoding run; ``tandem`` xor ``drafter`` is set for speculative modes."""

    large: PreTrainedModel
    tandem: TandemSmall | None
    drafter: PreTrainedModel | None

    @property
    def layers(self) -> list[int]:
        """M_L representation layers the drafter reads (none without a tandem drafter)."""
        return list(self.tandem.config.large_layers) if self.tandem is not None else []

    def has_router(self) -> bool:
        if self.tandem is not None:
            return self.tandem.router is not None
        return getattr(self.drafter, "router", None) is not None


def _ids(tokens: list[int]) -> Tensor:
    return torch.tensor([tokens], dtype=torch.long)  # [1, T]


def rewind_to(past: list[KV], length: int) -> list[KV]:
    """Keep positions ``[0, length)`` of every layer's K/V."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in past]


def choose(logits: Tensor, config: GenerateOptions, generator: torch.Generator | None) -> int:
    """choose(logits [V]): argmax of raw logits, or a sample of the processed distribution."""
    if not config.do_sample:
        return greedy_choose(logits)
    return sample(probs_from_logits(logits, sampling_params(config)), generator)


# --------------------------------------------------------------------------- steps


def emit(state: DecodeState, config: GenerateOptions, context_length: int,
         tokens: list[int], p_logits: list[Tensor]) -> None:
    """Append ``tokens`` one by one; stop at the first EOS, at ``max_new_tokens`` or at the
    context limit (checked in that order after each token)."""
    result = state.result
    for token, logits in zip(tokens, p_logits, strict=True):
        state.tokens.append(token)
        result.ids.append(token)
        result.p_logits.append(logits)
        if not config.ignore_eos and token in config.eos_token_ids:
            result.finish_reason = "eos"
        elif len(result.ids) == config.max_new_tokens:
            result.finish_reason = "max_new_tokens"
        elif len(state.tokens) == context_length:
            result.finish_reason = "length"
        if result.finish_reason:
            return


def prefill(models: Models, prompt: list[int], config: GenerateOptions, context_length: int,
            generator: torch.Generator | None) -> DecodeState:
    """M_L runs on the prompt and chooses ``t``; its prompt reps become M_S's pending memory.
    The vanilla drafter runs on the prompt too; the tandem M_S never sees prompt tokens."""
    logits, large_past, reps = large_step(
        models.large, _ids(prompt), empty_past(models.large.config), models.layers)
    state = DecodeState(tokens=list(prompt), covered=len(prompt), large_past=large_past,
                        drafter_past=[], pending_memory=reps)
    state.result.large_calls += 1
    if models.tandem is not None:
        state.drafter_past = empty_past(models.tandem.small.config)
    if models.drafter is not None:
        _, state.drafter_past = plain_step(models.drafter, _ids(prompt), empty_past(models.drafter.config))
        state.result.drafter_calls += 1
    last = logits[0, -1]  # [V]
    emit(state, config, context_length, [choose(last, config, generator)], [last])
    return state


def drafter_step(models: Models, state: DecodeState, tokens: list[int],
                 router: str = "greedy") -> tuple[Tensor, float | None]:
    """One drafter call on ``tokens`` (tandem: after the pending memory rows, which it consumes).
    Returns M_S logits ``[V]`` at the last token and the score of the ``router`` (``greedy`` or
    ``sampled``, ``ROUTER_KINDS``) there (None: no routers)."""
    state.result.drafter_calls += 1
    if models.tandem is not None:
        logits, state.drafter_past, scores = models.tandem.step(
            _ids(tokens), state.pending_memory, state.drafter_past)
        state.pending_memory = [r[:, :0] for r in state.pending_memory]  # now in the cache
    else:
        logits, state.drafter_past = plain_step(models.drafter, _ids(tokens), state.drafter_past)
        routers = getattr(models.drafter, "router", None)
        scores = None if routers is None else plain_router_score(models.drafter, routers, logits)
    return logits[0, -1], None if scores is None else float(scores[0, -1, ROUTER_KINDS.index(router)])


def draft(models: Models, state: DecodeState, config: GenerateOptions, g: int,
          generator: torch.Generator | None) -> tuple[list[int], list[Tensor]]:
    """M_S proposes ``d_1..d_g`` after ``t``; returns them and their M_S logits ``q_k [V]``.

    Step 1 feeds every token the drafter has not seen (tandem: just ``t``, after the pending
    memory), step k feeds ``d_{k-1}``. Adaptive, past ``min_block_length`` drafts (the rule of
    docs/CONTRACTS.md "Adaptive block length"): with the router's score ``s_k``, ``P`` the odds
    that every kept draft is accepted, ``E = 1 + Σ P_i`` and ``C = calls·c + 1 + β·drafts``,
    call k (k ≥ 2) is made only if ``P·s_{k-1}·C ≥ E·(c + β)``, and ``d_k`` is kept only if
    ``P·s_k·C ≥ E·β`` and ``s_k ≥ τ`` (the call is spent either way). The router is the
    decoding mode's: the sampled one when sampling, else the greedy one.
    """
    drafts: list[int] = []
    q_logits: list[Tensor] = []
    feed = [state.tokens[-1]] if models.tandem is not None else state.tokens[state.drafter_len:]
    router = router_kind(config.do_sample)
    c, beta = float(config.draft_cost), float(config.verify_cost)
    if config.adaptive and (c < 0 or beta < 0):
        raise InvalidArgumentError("the reference loop cannot measure decoding costs: pass draft_cost and verify_cost")
    reach = expected = score = 1.0
    for k in range(1, g + 1):
        optional = config.adaptive and k > config.min_block_length
        if optional and k > 1 and reach * score * ((k - 1) * (c + beta) + 1.0) < expected * (c + beta):
            break
        logits, routed = drafter_step(models, state, feed, router)
        if config.adaptive:
            score = _score(routed)
            if optional and (score < config.router_threshold
                             or reach * score * (k * c + (k - 1) * beta + 1.0) < expected * beta):
                break
            reach *= score
            expected += reach
        drafts.append(choose(logits, config, generator))
        q_logits.append(logits)
        feed = [drafts[-1]]
    return drafts, q_logits


def _score(x: float | None) -> float:
    """The router's score (a float32 value, as in the C++ loop, which then computes in double)."""
    if x is None:
        raise InvalidArgumentError("adaptive decoding needs a drafter with routers")
    return float(x)


def verify(models: Models, state: DecodeState, drafts: list[int]) -> tuple[Tensor, list[Tensor]]:
    """M_L block pass over ``[t, d_1..d_g]`` at positions ``covered..covered+g``.
    Returns ``p_1..p_{g+1}`` as logits ``[g+1, V]`` and the reps ``[1, g+1, d_L]`` per layer."""
    logits, state.large_past, reps = large_step(
        models.large, _ids([state.tokens[-1], *drafts]), state.large_past, models.layers)
    state.result.large_calls += 1
    return logits[0], reps


def accept(drafts: list[int], q_logits: list[Tensor], p_logits: Tensor, config: GenerateOptions,
           generator: torch.Generator | None) -> tuple[int, int]:
    """``(n, x)``: drafts accepted and the token M_L adds after ``d_n``."""
    if config.mode == "tandem":
        # Standalone Tandem trusts M_S: every draft stands, M_L adds the next block's first token.
        return len(drafts), choose(p_logits[len(drafts)], config, generator)
    if not config.do_sample:
        return accept_greedy(drafts, p_logits)
    params = sampling_params(config)
    p = probs_from_logits(p_logits, params)  # [g+1, V]
    q = probs_from_logits(torch.stack(q_logits), params) if q_logits else p[:0]  # [g, V]
    return accept_sampled(drafts, q, p, generator)


def rewind(models: Models, state: DecodeState, n: int, g: int, reps: list[Tensor]) -> None:
    """Drop what the rejected drafts left in the caches; M_L has now covered ``t, d_1..d_n``."""
    covered = state.covered
    state.large_past = rewind_to(state.large_past, covered + 1 + n)
    if models.tandem is not None:
        # M_S back to its memory-only prefix; M_L's reps of t, d_1..d_n become pending memory
        # (appended to any memory not consumed yet, when this round drafted nothing).
        pending = state.pending_memory[0].shape[1]
        state.drafter_past = rewind_to(state.drafter_past, covered - pending)
        state.pending_memory = [torch.cat([old, new[:, : n + 1]], dim=1)
                                for old, new in zip(state.pending_memory, reps, strict=True)]
    elif models.drafter is not None and g > 0:
        # Keep the drafter's own K/V of accepted tokens only: t, d_1..d_{min(n, g-1)} (a round
        # that drafted nothing leaves it as it is).
        state.drafter_past = rewind_to(state.drafter_past, covered + min(n + 1, g))
    state.covered = covered + 1 + n


def decode_round(models: Models, state: DecodeState, config: GenerateOptions, context_length: int,
                 generator: torch.Generator | None) -> None:
    """One round of any mode: draft, verify, accept, emit, rewind."""
    room = min(config.max_new_tokens - len(state.result.ids), context_length - len(state.tokens))
    # room >= 1 here (emit() ends decoding when it reaches 0). A round emits n + 1 <= g + 1
    # tokens, so g <= room - 1 keeps every drafted token inside the budget and the context.
    g = min(drafts_per_round(config), room - 1)
    drafts, q_logits = draft(models, state, config, g, generator)
    p_logits, reps = verify(models, state, drafts)  # [len(drafts)+1, V]
    n, token = accept(drafts, q_logits, p_logits, config, generator)
    state.result.drafted.append(len(drafts))
    state.result.accepted.append(n)
    emit(state, config, context_length, [*drafts[:n], token], list(p_logits[: n + 1]))
    rewind(models, state, n, len(drafts), reps)


# --------------------------------------------------------------------------- entry point


def _check_inputs(models: Models, prompt_ids: list[int], config: GenerateOptions,
                  context_length: int | None) -> int:
    """Validate the models and the prompt against ``config``; returns the context length."""
    vocab = models.large.config.vocab_size
    if config.mode in ("tandem", "speed") and models.tandem is None:
        raise InvalidArgumentError(f"mode {config.mode!r} needs a tandem M_S: pass tandem=...")
    if config.mode == "vanilla" and models.drafter is None:
        raise InvalidArgumentError("mode 'vanilla' needs a plain drafter: pass drafter=...")
    for name, drafter_vocab in (("tandem M_S", models.tandem and models.tandem.config.vocab_size),
                                ("drafter", models.drafter and models.drafter.config.vocab_size)):
        if drafter_vocab not in (None, vocab):
            raise InvalidArgumentError(
                f"{name} vocab size {drafter_vocab} differs from M_L's {vocab}; "
                "both must share M_L's tokenizer")
    if config.adaptive and not models.has_router():
        raise InvalidArgumentError(
            "adaptive block length needs routers on the drafter (create_tandem(..., router=True), "
            "or set drafter.router = Router.load(folder) for a plain drafter); or set adaptive=False")
    max_positions = models.large.config.max_position_embeddings
    context_length = max_positions if context_length is None else context_length
    if not 2 <= context_length <= max_positions:
        raise InvalidArgumentError(
            f"context_length must be in [2, {max_positions}] (M_L's max_position_embeddings), "
            f"got {context_length}")
    if not 1 <= len(prompt_ids) < context_length:
        raise InvalidArgumentError(
            f"the prompt has {len(prompt_ids)} tokens; it needs 1 to {context_length - 1} "
            "(context_length - 1) so that at least one token can be generated")
    bad = [i for i in (*prompt_ids, *config.eos_token_ids) if not 0 <= i < vocab]
    if bad:
        raise InvalidArgumentError(f"token ids {bad[:5]} are outside M_L's vocabulary [0, {vocab})")
    return context_length


@torch.no_grad()
def generate_reference(
    large: PreTrainedModel,
    prompt_ids: list[int],
    options: GenerateOptions,
    *,
    context_length: int | None = None,
    tandem: TandemSmall | None = None,
    drafter: PreTrainedModel | None = None,
    generator: torch.Generator | None = None,
) -> ReferenceResult:
    """Decode ``prompt_ids`` in ``options.mode`` and return the generated tokens and statistics.

    ``options``: the runtime's options (:class:`tandem._core.GenerateOptions`), checked and
    resolved against :data:`EXPORT_DEFAULTS`; empty ``eos_token_ids`` means no EOS here (there
    is no bundle to take them from). ``context_length``: the most prompt + generated tokens
    (None: M_L's max positions).

    ``tandem``: the tandem M_S (modes tandem, speed). ``drafter``: a plain HF causal LM (mode
    vanilla; :func:`tandem.train.model.load_plain_drafter` gives it its draft vocabulary, if any);
    for adaptive vanilla it carries a ``router`` attribute (a :class:`tandem.train.router.Router`). ``generator`` drives every random draw when sampling.
    """
    config = options.resolve(EXPORT_DEFAULTS)  # InvalidArgumentError for an option out of range
    models = Models(  # a model the mode does not use is ignored
        large,
        tandem if config.mode in ("tandem", "speed") else None,
        drafter if config.mode == "vanilla" else None,
    )
    context_length = _check_inputs(models, prompt_ids, config, context_length)
    if config.max_new_tokens == 0:
        return ReferenceResult(finish_reason="max_new_tokens")
    state = prefill(models, list(prompt_ids), config, context_length, generator)
    while not state.result.finish_reason:
        decode_round(models, state, config, context_length, generator)
    return state.result


__all__ = [
    "EXPORT_DEFAULTS",
    "FINISH_REASONS",
    "DecodeState",
    "ReferenceResult",
    "decode_round",
    "drafts_per_round",
    "generate_reference",
]
