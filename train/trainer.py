"""Training loop for the tandem M_S, the plain M_S baseline and from-scratch LMs.

Modes (``TrainConfig.mode``):
- ``tandem``: a :class:`TandemSmall` reads the frozen M_L's representations through the
  training-mode block mask (CONTRACTS.md); loss Tandem-CE, then Tandem-Distil by default.
- ``plain``: an ordinary HF M_S with the same data and steps; Distil by default.
- ``lm``: pretrain a from-scratch HF model with plain next-token CE (no M_L).

Distil = ``0.5 * CE(data) + 0.5 * CE(M_L soft labels)``. Checkpoints hold model, optimizer,
schedule, step and every RNG, so a resumed run continues exactly as an uninterrupted one.
After training, a router (if any) is fitted on (M_S, M_L) pairs logged on training data.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm
from transformers import PreTrainedModel

from tandem.errors import TrainingError
from tandem.train.data import Corpus, sample_windows
from tandem.train.model import (
    TandemSmall,
    block_starts,
    check_pair,
    drafter_logits,
    empty_past,
    large_step,
)
from tandem.train.router import Router, fit_router, total_variation

MODES = ("tandem", "plain", "lm")
LOSSES = ("ce", "distil", "ce-then-distil")
DEFAULT_LOSS = {"tandem": "ce-then-distil", "plain": "distil", "lm": "ce"}
CHECKPOINT_FILE = "checkpoint.pt"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class TrainConfig:
    """Settings of one training run (every field has a CLI flag of the same name)."""

    mode: str = "tandem"
    loss: str | None = None  # ce | distil | ce-then-distil; None: DEFAULT_LOSS[mode]
    ce_fraction: float = 0.5  # ce-then-distil: share of the steps trained with CE
    distil_weight: float = 0.5  # λ: weight of the soft-label CE in the Distil loss
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 128
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    block_length: int = 2  # γ of the training-mode mask
    variable_boundaries: bool = False  # random block offset per sequence
    router_batches: int = 16  # training batches logged to fit the router
    router_steps: int = 300
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 200  # steps; a checkpoint is also written when a run stops

    def resolved_loss(self) -> str:
        return self.loss or DEFAULT_LOSS[self.mode]

    def validate(self) -> None:
        if self.mode not in MODES:
            raise TrainingError(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.resolved_loss() not in LOSSES:
            raise TrainingError(f"unknown loss {self.loss!r}; use one of {', '.join(LOSSES)}")
        if self.mode == "lm" and self.resolved_loss() != "ce":
            raise TrainingError("mode 'lm' has no M_L to distil from; use --loss ce")
        if min(self.steps, self.batch_size, self.seq_len, self.grad_accum, self.block_length) < 1:
            raise TrainingError("steps, batch size, sequence length, grad accumulation and block length must be ≥ 1")
        if not 0.0 <= self.ce_fraction <= 1.0:
            raise TrainingError(f"ce fraction {self.ce_fraction} must lie in [0, 1]")


def distil_loss(logits: Tensor, targets: Tensor, large_logits: Tensor, weight: float = 0.5) -> Tensor:
    """``(1 - λ) * CE(targets) + λ * CE(softmax(M_L logits))``; logits ``(B, N, V)``, targets ``(B, N)``."""
    hard = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
    soft_labels = torch.softmax(large_logits.float(), dim=-1)  # (B, N, V)
    soft = -(soft_labels * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()
    return (1.0 - weight) * hard + weight * soft


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``config.steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """One run: ``model`` (TandemSmall or HF model) trained on ``corpus.train`` into ``out_dir``."""

    def __init__(self, model: TandemSmall | PreTrainedModel, large: PreTrainedModel | None, corpus: Corpus,
                 config: TrainConfig, out_dir: str | Path, router: Router | None = None) -> None:
        config.validate()
        if (config.mode == "tandem") != isinstance(model, TandemSmall):
            raise TrainingError(f"mode {config.mode!r} got a {type(model).__name__}; "
                                "tandem mode trains a TandemSmall, plain and lm modes an HF model")
        if config.mode != "lm" and large is None:
            raise TrainingError(f"mode {config.mode!r} needs M_L (--large)")
        if config.mode != "lm":
            small = model.small if isinstance(model, TandemSmall) else model
            check_pair(large.config, small.config)
        if isinstance(model, TandemSmall):
            built = (model.config.large_hidden_size, model.config.large_num_layers)
            if built != (large.config.hidden_size, large.config.num_hidden_layers):
                raise TrainingError(
                    f"this tandem M_S was built for an M_L of width {built[0]} and {built[1]} layers, but M_L "
                    f"has width {large.config.hidden_size} and {large.config.num_hidden_layers} layers; "
                    "create it with create_tandem(large, ...) for this M_L")
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device)
        self.large = None if large is None else large.to(self.device).eval().requires_grad_(False)
        self.router = model.router if isinstance(model, TandemSmall) else router
        self.corpus = corpus
        self.out_dir = Path(out_dir)
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        router_ids = {id(p) for p in self.router.parameters()} if self.router is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) not in router_ids]
        self.optimizer = torch.optim.AdamW(
            [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
            lr=config.lr, betas=(0.9, 0.95),
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: learning_rate_factor(step, config))
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # ------------------------------------------------------------------ losses

    def loss_kind(self, step: int) -> str:
        loss = self.config.resolved_loss()
        if loss == "ce-then-distil":
            return "ce" if step < round(self.config.ce_fraction * self.config.steps) else "distil"
        return loss

    def _block_starts(self, batch: int, length: int, generator: torch.Generator) -> Tensor:
        gamma = self.config.block_length
        offsets = (torch.randint(gamma, (batch,), generator=generator)
                   if self.config.variable_boundaries else None)
        return block_starts(batch, length, gamma, offsets).to(self.device)

    def forward(self, inputs: Tensor, generator: torch.Generator,
                need_large_logits: bool) -> tuple[Tensor, Tensor | None]:
        """M_S logits ``(B, N, V)`` and, when needed or available, M_L's logits ``(B, N, V)``."""
        large_logits, reps = None, []
        if self.large is not None and (need_large_logits or self.config.mode == "tandem"):
            layers = self.model.config.large_layers if self.config.mode == "tandem" else []
            with torch.no_grad(), self.autocast:
                past = empty_past(self.large.config, inputs.shape[0], device=self.device)
                large_logits, _, reps = large_step(self.large, inputs, past, layers)
        starts = self._block_starts(*inputs.shape, generator)
        with self.autocast:
            logits = drafter_logits(self.model, inputs, reps, starts)
        return logits, large_logits

    def compute_loss(self, windows: Tensor, kind: str) -> Tensor:
        """Loss of one micro-batch of windows ``(B, N+1)``."""
        inputs, targets = windows[:, :-1].to(self.device), windows[:, 1:].to(self.device)
        logits, large_logits = self.forward(inputs, self.generator, need_large_logits=kind == "distil")
        if kind == "distil":
            return distil_loss(logits, targets, large_logits, self.config.distil_weight)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    def _tandem_config_json(self) -> str | None:
        return self.model.config.to_json() if isinstance(self.model, TandemSmall) else None

    def save_checkpoint(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "config": asdict(self.config),
            "tandem_config": self._tandem_config_json(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def load_checkpoint(self) -> None:
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        saved = {k: v for k, v in state["config"].items() if k not in ("device", "checkpoint_every")}
        current = {k: v for k, v in asdict(self.config).items() if k in saved}
        if saved != current:
            changed = sorted(k for k in saved if saved[k] != current[k])
            raise TrainingError(f"{self.checkpoint_path} was written with other settings ({', '.join(changed)}); "
                                "use the same settings, another --out, or --no-resume")
        tandem_config = self._tandem_config_json()
        if state.get("tandem_config", tandem_config) != tandem_config:  # absent in older checkpoints
            raise TrainingError(f"{self.checkpoint_path} holds a tandem M_S of another layer assignment, M_L or "
                                "router; use the same --layer-assignment and M_L, another --out, or --no-resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])
        self.step = state["step"]

    # ------------------------------------------------------------------ loop

    def train(self, resume: bool = True, stop_after: int | None = None, progress: bool = True) -> list[float]:
        """Run optimizer steps up to ``config.steps`` (or ``stop_after``); returns the step losses.

        Resumes from ``out_dir/checkpoint.pt`` when it exists and ``resume`` is set.
        """
        cfg = self.config
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        self.model.train()
        losses: list[float] = []
        tokens, start = 0, time.perf_counter()
        bar = tqdm(total=last, initial=self.step, disable=not progress, desc=f"train {cfg.mode}")
        while self.step < last:
            kind = self.loss_kind(self.step)
            total = 0.0
            for _ in range(cfg.grad_accum):
                windows = sample_windows(self.corpus.train, cfg.batch_size, cfg.seq_len + 1, self.generator)
                loss = self.compute_loss(windows, kind) / cfg.grad_accum
                loss.backward()
                total += loss.item()
                tokens += cfg.batch_size * cfg.seq_len
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            losses.append(total)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.4f}", kind=kind, tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < last:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        self.model.eval()
        return losses

    # ------------------------------------------------------------------ router and output

    def fit_router(self) -> float | None:
        """Fit the router on (M_S, M_L) pairs from training batches; returns its mean abs error."""
        if self.router is None or self.large is None:
            return None
        cfg = self.config
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        embed = self.model_small.get_input_embeddings().weight.detach()
        features, targets = [], []
        with torch.no_grad():
            for _ in range(cfg.router_batches):
                inputs = sample_windows(self.corpus.train, cfg.batch_size, cfg.seq_len, generator).to(self.device)
                logits, large_logits = self.forward(inputs, generator, need_large_logits=True)
                features.append(self.router.features(logits, embed).flatten(0, 1).float().cpu())
                targets.append(1.0 - total_variation(logits, large_logits).flatten().cpu())
        self.router.cpu()
        error = fit_router(self.router, torch.cat(features), torch.cat(targets), steps=cfg.router_steps,
                           seed=cfg.seed)
        self.router.to(self.device)
        return error

    @property
    def model_small(self) -> PreTrainedModel:
        """The HF model of M_S (inside the TandemSmall in tandem mode)."""
        return self.model.small if isinstance(self.model, TandemSmall) else self.model

    def save(self, tokenizer_folder: str | Path | None = None, summary: dict | None = None) -> Path:
        """Write the trained model (+ router, tokenizer files, ``training_summary.json``) to ``out_dir``."""
        self.model.save_pretrained(self.out_dir)
        if self.router is not None and not isinstance(self.model, TandemSmall):
            self.router.save(self.out_dir)
        if tokenizer_folder is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_folder) / name).exists():
                    shutil.copy(Path(tokenizer_folder) / name, self.out_dir / name)
        record = {"config": asdict(self.config), "steps_done": self.step, **(summary or {})}
        (self.out_dir / "training_summary.json").write_text(json.dumps(record, indent=2))
        return self.out_dir
