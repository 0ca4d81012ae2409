"""Logits processing, token choice and speculative acceptance (docs/CONTRACTS.md, "Decoding").

Pure functions on torch tensors; the only state is the optional ``torch.Generator``.
Vectors are 1-D over the vocabulary ``[V]``; blocks are ``[g, V]`` (one row per position).

Order of processing (identical for the target ``p`` and the draft ``q``):
temperature, then top-k (tokens tied with the k-th largest logit are kept, as in HF), then
top-p over the probabilities in a stable descending order (ties: lower token id first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tandem.errors import InvalidArgumentError


@dataclass(frozen=True)
class SamplingParams:
    """How logits become a sampling distribution. ``top_k = 0`` and ``top_p = 1`` disable."""

    temperature: float = 1.0  # > 0; logits are divided by it
    top_k: int = 0  # keep the k most probable tokens (0: all)
    top_p: float = 1.0  # keep the smallest prefix (by probability) with mass >= top_p

    def __post_init__(self) -> None:
        if not self.temperature > 0.0:
            raise InvalidArgumentError(
                f"temperature must be > 0 when sampling, got {self.temperature}; "
                "use greedy decoding (do_sample=False) for temperature 0"
            )
        if self.top_k < 0:
            raise InvalidArgumentError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidArgumentError(
                f"top_p must be in (0, 1] (1 disables it), got {self.top_p}"
            )


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Processed sampling distribution ``[..., V]`` (fp32) from raw logits ``[..., V]``.

    p = softmax(logits / T) over the tokens whose logit is >= the k-th largest (ties kept),
    then restricted to the smallest probability-ordered prefix whose mass is >= top_p (always
    >= 1 token) and renormalised.
    """
    scaled = logits.float() / params.temperature
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.top_p >= 1.0:
        return probs
    # Stable descending sort: equal probabilities keep ascending token-id order.
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    # Keep rank r iff the mass strictly before it is < top_p: the smallest prefix whose mass
    # reaches top_p. Rank 0 has mass 0 before it, so at least one token survives.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    sorted_probs = torch.where(mass_before < params.top_p, sorted_probs, 0.0)
    sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
    return torch.empty_like(sorted_probs).scatter_(-1, order, sorted_probs)


def greedy_choose(logits: torch.Tensor) -> int:
    """argmax of raw logits ``[V]``; the first maximum wins a tie."""
    return int(torch.argmax(logits, dim=-1))


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token drawn from the distribution ``probs [V]``."""
    return int(torch.multinomial(probs, 1, generator=generator))


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) ``[V]``: the distribution of the token that replaces a rejected draft.

    When p == q there is nothing to reject with (the rejection had probability 0 and only
    rounding got us here); the residual is then p itself.
    """
    r = torch.clamp(p - q, min=0.0)
    total = r.sum()
    return r / total if total > 0 else p


def accept_greedy(drafts: list[int], p_logits: torch.Tensor) -> tuple[int, int]:
    """Greedy verification of ``drafts d_1..d_g`` against M_L logits ``p_logits [g+1, V]``.

    Accept while d_i == argmax p_i. Returns ``(n, token)``: the number of accepted drafts and
    the token M_L emits after them, argmax p_{n+1} (a correction, or the bonus when n == g).
    """
    n = 0
    while n < len(drafts) and drafts[n] == greedy_choose(p_logits[n]):
        n += 1
    return n, greedy_choose(p_logits[n])


def accept_sampled(
    drafts: list[int],
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative sampling (Leviathan et al. 2023) of ``drafts d_1..d_g``.

    ``q [g, V]``: the processed draft distributions the drafts were sampled from;
    ``p [g+1, V]``: the processed M_L distributions. Accept d_i with probability
    min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit a sample of
    norm(max(0, p_i - q_i)); if all are accepted emit a sample of p_{g+1}. The emitted
    sequence is then distributed exactly as M_L sampling. Returns ``(n, token)``.
    """
    for i, d in enumerate(drafts):
        # u ~ U[0, 1): P(u < p/q) = min(1, p/q). q_i(d) > 0 because d was drawn from q_i.
        u = float(torch.rand((), generator=generator))
        if not u < float(p[i, d]) / float(q[i, d]):
            return i, sample(residual(p[i], q[i]), generator)
    return len(drafts), sample(p[len(drafts)], generator)


__all__ = [
    "SamplingParams",
    "accept_greedy",
    "accept_sampled",
    "greedy_choose",
    "probs_from_logits",
    "residual",
    "sample",
]
