"""Adaptive block-length router: predicts whether M_L will accept M_S's next draft token.

The router is a 2-layer MLP over features of M_S's next-token distribution (docs/METHOD.md §2):
its entropy, its top-k probabilities and the M_S input embeddings of the top-k tokens,
averaged with weights proportional to their probabilities. Its target is the acceptance
probability of a sampled draft, ``1 - TV(q_S, p_L)``. The graph builder writes the same ops
(log-softmax, TopK, embedding gather, the MLP) into the drafter's step graph, so the score is
an extra output of it.

Saved next to a drafter as ``router.safetensors`` + ``router_config.json`` (plain M_S); the
tandem M_S stores the same weights under ``router.`` in ``tandem.safetensors`` and the
settings in ``tandem_config.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from tandem.errors import TrainingError

ROUTER_CONFIG_FILE = "router_config.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"


@dataclass
class RouterConfig:
    """Router shape. ``embed_dim`` is M_S's embedding width."""

    embed_dim: int
    top_k: int = 4  # number of top M_S tokens whose probabilities and embeddings are features
    hidden_size: int = 64  # width of the MLP's hidden layer

    @property
    def num_features(self) -> int:
        return 1 + self.top_k + self.embed_dim  # entropy, top-k probs, weighted embedding


def total_variation(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """TV distance between the softmaxes of two logit tensors ``(..., V)`` -> ``(...)``."""
    p = torch.softmax(logits_p.float(), dim=-1)
    q = torch.softmax(logits_q.float(), dim=-1)
    return 0.5 * (p - q).abs().sum(-1)


class Router(nn.Module):
    """``score = sigmoid(MLP(features(M_S logits)))`` in (0, 1): the predicted acceptance probability."""

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.mlp = nn.Sequential(
            nn.Linear(config.num_features, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, 1),
        )

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
        """logits ``(B, t, V)`` -> score ``(B, t)``."""
        return torch.sigmoid(self.mlp(self.features(logits, embed_weight)).squeeze(-1))

    def save(self, folder: str | Path) -> None:
        """Write ``router_config.json`` and ``router.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ROUTER_CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / ROUTER_WEIGHTS_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> Router | None:
        """The router saved in ``folder``, or None when the folder has none."""
        folder = Path(folder)
        if not (folder / ROUTER_CONFIG_FILE).exists():
            return None
        if not (folder / ROUTER_WEIGHTS_FILE).exists():
            raise TrainingError(
                f"{folder} has {ROUTER_CONFIG_FILE} but no {ROUTER_WEIGHTS_FILE}; "
                "re-save the drafter or delete the router config"
            )
        router = cls(RouterConfig(**json.loads((folder / ROUTER_CONFIG_FILE).read_text())))
        router.load_state_dict(load_file(folder / ROUTER_WEIGHTS_FILE))
        return router


def fit_router(
    router: Router,
    features: Tensor,
    targets: Tensor,
    steps: int = 300,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Fit ``router`` on logged pairs: features ``(n, F)``, targets ``1 - TV`` ``(n,)`` in [0, 1].

    Minimises binary cross-entropy against the soft target (its minimum is at the target).
    Returns the final mean absolute error over all pairs.
    """
    if features.shape[0] == 0:
        raise TrainingError("no logged (M_S, M_L) pairs to fit the router on; give more training text")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps))
    )
    router.train()
    for _ in range(steps):
        idx = torch.randint(features.shape[0], (min(batch_size, features.shape[0]),), generator=generator)
        pred = router.mlp(features[idx]).squeeze(-1)  # (b,) logits of the score
        loss = F.binary_cross_entropy_with_logits(pred, targets[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    router.eval()
    with torch.no_grad():
        return (torch.sigmoid(router.mlp(features).squeeze(-1)) - targets).abs().mean().item()
