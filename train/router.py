"""Adaptive block-length routers: predict whether M_L will accept M_S's next draft token.

Verification differs by decoding mode, and so does the event a router must predict
(docs/METHOD.md §2 "adaptive block length"):

- ``greedy`` (``do_sample=False``): the draft is accepted iff M_S's argmax equals M_L's
  argmax. The greedy head is trained with binary cross-entropy on that event, so its score is
  the probability of acceptance.
- ``sampled``: the draft is accepted with probability ``Σ_v min(p_L,T(v), q_S,T(v)) =
  1 - TV(q_S,T, p_L,T)`` where both distributions are at the sampling temperature ``T``
  (``RouterConfig.sampled_temperature``, 1 by default). The sampled head is trained with
  binary cross-entropy against that soft target (its minimum is at the target).

Both heads are 2-layer MLPs over the same features of M_S's next-token distribution (raw
logits, temperature 1): its entropy, its top-k probabilities and the M_S input embeddings of
the top-k tokens, averaged with weights proportional to their probabilities. The graph
builder writes the same ops (log-softmax, TopK, embedding gather, the two MLPs) into the
drafter's step graph, so both scores are outputs of it and the runtime reads the one of the
request's decoding mode.

Layout (``layout`` 2):

- plain M_S: ``router_config.json`` (``RouterConfig`` as JSON) and ``router.safetensors``
  (``greedy.0.weight [H, F]``, ``greedy.0.bias [H]``, ``greedy.2.weight [1, H]``,
  ``greedy.2.bias [1]`` and the same under ``sampled.``) next to the drafter;
- tandem M_S: the same tensors under ``router.`` in ``tandem.safetensors``, the config under
  ``"router"`` in ``tandem_config.json``.

A folder of an older tandem holds one router (``mlp.*`` weights, no ``layout`` key), fitted on
``1 - TV`` at temperature 1 for both modes; loading it raises :class:`OldRouterError`, which
says how to refit the routers in place (``tandem fit-router``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tandem.errors import TrainingError
from tandem.manifest import ROUTER_LAYOUT

ROUTER_CONFIG_FILE = "router_config.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
ROUTER_KINDS = ("greedy", "sampled")  # the heads, in the order of Router.forward's last axis
REFIT_HINT = ("refit its routers in place: `tandem fit-router --drafter FOLDER --large M_L --data FILES` "
              "(or --reps FOLDER), which takes minutes")


class OldRouterError(TrainingError):
    """A drafter folder holds the single router of an older tandem; its routers must be refit."""


def router_kind(do_sample: bool) -> str:
    """The router a decoding mode reads: ``sampled`` when sampling, else ``greedy``."""
    return "sampled" if do_sample else "greedy"


@dataclass
class RouterConfig:
    """Router shape. ``embed_dim`` is M_S's embedding width; ``sampled_temperature`` the
    temperature ``T`` of the sampled head's target (the one it was, or will be, fitted at)."""

    embed_dim: int
    top_k: int = 4  # number of top M_S tokens whose probabilities and embeddings are features
    hidden_size: int = 64  # width of each head's hidden layer
    sampled_temperature: float = 1.0
    layout: int = ROUTER_LAYOUT

    @property
    def num_features(self) -> int:
        return 1 + self.top_k + self.embed_dim  # entropy, top-k probs, weighted embedding

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "the router config") -> RouterConfig:
        """The config written by ``asdict``; :class:`OldRouterError` for an older single router."""
        if values.get("layout", 1) != ROUTER_LAYOUT:
            raise OldRouterError(
                f"{where} is an older single router (layout {values.get('layout', 1)}; this tandem reads "
                f"layout {ROUTER_LAYOUT}: a greedy and a sampled router); {REFIT_HINT}")
        try:
            config = cls(**values)
        except TypeError as exc:
            raise TrainingError(f"{where} is not a router config ({exc}); {REFIT_HINT}") from exc
        check_temperature(config.sampled_temperature)
        return config


def check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise TrainingError(f"router temperature {temperature} must be a finite number > 0 (the sampling "
                            "temperature the sampled router is fitted for; 1 by default)")


def total_variation(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """TV distance between the softmaxes of two logit tensors ``(..., V)`` -> ``(...)``."""
    p = torch.softmax(logits_p.float(), dim=-1)
    q = torch.softmax(logits_q.float(), dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


def _head(config: RouterConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(config.num_features, config.hidden_size), nn.GELU(),
                         nn.Linear(config.hidden_size, 1))


class Router(nn.Module):
    """Two heads over shared features: ``score_kind = sigmoid(head_kind(features(M_S logits)))``
    in (0, 1), the predicted acceptance probability of the next draft under ``kind``'s
    verification (``ROUTER_KINDS``)."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        check_temperature(config.sampled_temperature)
        self.config = config
        self.greedy = _head(config)
        self.sampled = _head(config)

    def head(self, kind: str) -> nn.Sequential:
        if kind not in ROUTER_KINDS:
            raise TrainingError(f"unknown router {kind!r}; use one of {', '.join(ROUTER_KINDS)}")
        return self.greedy if kind == "greedy" else self.sampled

    def features(self, logits: Tensor, embed_weight: Tensor) -> Tensor:
        """logits ``(B, t, V)``, embed_weight ``(V, d_S)`` -> features ``(B, t, 1 + k + d_S)``."""
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, t, V)
        entropy = -(logp.exp() * logp).sum(-1, keepdim=True)  # (B, t, 1)
        top_logp, top_ids = torch.topk(logp, self.config.top_k, dim=-1)  # (B, t, k)
        top_p = top_logp.exp()
        weights = top_p / top_p.sum(-1, keepdim=True)  # (B, t, k)
        top_emb = F.embedding(top_ids, embed_weight.float())  # (B, t, k, d_S)
        mean_emb = (weights.unsqueeze(-1) * top_emb).sum(-2)  # (B, t, d_S)
        return torch.cat([entropy, top_p, mean_emb], dim=-1)

    def forward(self, logits: Tensor, embed_weight: Tensor) -> Tensor:
        """logits ``(B, t, V)`` -> scores ``(B, t, 2)``: ``[..., 0]`` greedy, ``[..., 1]`` sampled."""
        features = self.features(logits, embed_weight)
        return torch.sigmoid(torch.cat([self.greedy(features), self.sampled(features)], dim=-1))

    def score(self, logits: Tensor, embed_weight: Tensor, kind: str) -> Tensor:
        """logits ``(B, t, V)`` -> the ``kind`` router's score ``(B, t)``."""
        return torch.sigmoid(self.head(kind)(self.features(logits, embed_weight)).squeeze(-1))

    def save(self, folder: str | Path) -> None:
        """Write ``router_config.json`` and ``router.safetensors`` into ``folder`` (each
        replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / ROUTER_WEIGHTS_FILE
        tmp = weights.with_suffix(".safetensors.tmp")
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, tmp)
        tmp.replace(weights)
        config = folder / ROUTER_CONFIG_FILE
        tmp = config.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self.config), indent=2))
        tmp.replace(config)

    @classmethod
    def load(cls, folder: str | Path) -> Router | None:
        """The routers saved in ``folder``, or None when the folder has none.
        :class:`OldRouterError` for an older single router."""
        folder = Path(folder)
        if not (folder / ROUTER_CONFIG_FILE).exists():
            return None
        if not (folder / ROUTER_WEIGHTS_FILE).exists():
            raise TrainingError(
                f"{folder} has {ROUTER_CONFIG_FILE} but no {ROUTER_WEIGHTS_FILE}; "
                "re-save the drafter or delete the router config"
            )
        values = json.loads((folder / ROUTER_CONFIG_FILE).read_text())
        router = cls(RouterConfig.from_dict(values, str(folder / ROUTER_CONFIG_FILE)))
        router.load_state_dict({k: v.float() for k, v in load_file(folder / ROUTER_WEIGHTS_FILE).items()})
        return router.eval()


@dataclass
class RouterFit:
    """What fitting the routers gave, on the logged pairs they were fitted on."""

    pairs: int  # (M_S, M_L) positions logged
    sampled_temperature: float
    greedy_accept_rate: float  # share of positions where the argmaxes agree
    greedy_bce: float  # the greedy head's binary cross-entropy (nats)
    greedy_bce_constant: float  # ... of the best constant prediction (the accept rate): the baseline
    greedy_bce_sampled_head: float  # ... of the sampled head's scores: a 1 - TV router used for greedy decoding
    sampled_mean_target: float  # mean acceptance probability at T
    sampled_mean_abs_error: float
    sampled_mean_abs_error_constant: float  # ... of predicting the mean target everywhere

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def fit_head(head: nn.Module, features: Tensor, targets: Tensor, steps: int = 300, lr: float = 3e-3,
             batch_size: int = 256, seed: int = 0) -> Tensor:
    """Fit one head on logged pairs: features ``(n, F)``, targets in [0, 1] ``(n,)`` (0/1 events or
    probabilities), by binary cross-entropy on its logit. Returns its scores ``(n,)`` after fitting."""
    if features.shape[0] == 0:
        raise TrainingError("no logged (M_S, M_L) pairs to fit the routers on; give more training text")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps))
    )
    head.train()
    for _ in range(steps):
        idx = torch.randint(features.shape[0], (min(batch_size, features.shape[0]),), generator=generator)
        pred = head(features[idx]).squeeze(-1)  # (b,) logits of the score
        loss = F.binary_cross_entropy_with_logits(pred, targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    head.eval()
    with torch.no_grad():
        return torch.sigmoid(head(features).squeeze(-1))


def _bce(scores: Tensor, targets: Tensor) -> float:
    eps = 1e-6
    return F.binary_cross_entropy(scores.clamp(eps, 1 - eps), targets).item()


def fit_router(router: Router, features: Tensor, greedy_targets: Tensor, sampled_targets: Tensor,
               steps: int = 300, lr: float = 3e-3, batch_size: int = 256, seed: int = 0) -> RouterFit:
    """Fit both heads of ``router`` on logged pairs: features ``(n, F)``, the greedy event
    ``(n,)`` in {0, 1} and the sampled acceptance probability ``(n,)`` in [0, 1]."""
    greedy = fit_head(router.greedy, features, greedy_targets, steps, lr, batch_size, seed)
    sampled = fit_head(router.sampled, features, sampled_targets, steps, lr, batch_size, seed + 1)
    rate, mean = greedy_targets.mean(), sampled_targets.mean()
    return RouterFit(
        pairs=int(features.shape[0]),
        sampled_temperature=router.config.sampled_temperature,
        greedy_accept_rate=rate.item(),
        greedy_bce=_bce(greedy, greedy_targets),
        greedy_bce_constant=_bce(rate.expand_as(greedy_targets), greedy_targets),
        greedy_bce_sampled_head=_bce(sampled, greedy_targets),
        sampled_mean_target=mean.item(),
        sampled_mean_abs_error=(sampled - sampled_targets).abs().mean().item(),
        sampled_mean_abs_error_constant=(mean - sampled_targets).abs().mean().item(),
    )


def describe_fit(fit: RouterFit) -> str:
    """One line: what the routers learned, against the best constant prediction."""
    return (f"routers fitted on {fit.pairs} pairs: greedy BCE {fit.greedy_bce:.3f} (constant "
            f"{fit.greedy_bce_constant:.3f}, the sampled router's {fit.greedy_bce_sampled_head:.3f}; accept rate "
            f"{fit.greedy_accept_rate:.3f}), sampled at "
            f"T={fit.sampled_temperature:g} |error| {fit.sampled_mean_abs_error:.3f} (constant "
            f"{fit.sampled_mean_abs_error_constant:.3f}, mean {fit.sampled_mean_target:.3f})")
