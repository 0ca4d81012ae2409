"""Training loop for the tandem M_S, the plain M_S baseline and from-scratch LMs.

Modes (``TrainConfig.mode``):
- ``tandem``: a :class:`TandemSmall` reads the frozen M_L's representations through the
  training-mode block mask (CONTRACTS.md); loss Tandem-CE, then Tandem-Distil by default.
- ``plain``: an ordinary HF M_S with the same data and steps; Distil by default (a draft
  vocabulary, ``tandem.train.model.set_draft_vocab``, restricts it as the tandem M_S's).
- ``lm``: pretrain a from-scratch HF model with plain next-token CE (no M_L).

Distil = ``0.5 * CE(data) + 0.5 * CE(M_L soft labels)``. Checkpoints hold model, optimizer,
schedule, step and every RNG, so a resumed run continues exactly as an uninterrupted one
(frozen parameters, M_L's shared embedding and head, are not stored: they come from M_L).
After training, the routers (if any) are fitted on (M_S, M_L) pairs logged on training data:
the greedy one on the event "M_S's argmax is M_L's", the sampled one on the acceptance
probability ``1 - TV`` at ``router_temperature`` (train/router.py); :func:`router_targets`.

M_L's side of a batch comes from one of two sources: M_L itself, run in the loop on random
windows of the corpus, or a reps folder (``tandem reps``) whose shards hold its
representations and its next-token teacher (top-k log-probabilities, or the final hidden
state put through M_L's LM head here). A drafter with a reduced draft vocabulary computes
logits over those tokens only; targets outside it are ignored by the CE and the teacher's
mass outside it is dropped (it can never be proposed).

Under torchrun (``WORLD_SIZE > 1``) the run is data-parallel (train/distributed.py): the batch
size stays global, each rank trains on its rows of every batch, rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm
from transformers import PreTrainedModel

from tandem.errors import TrainingError
from tandem.train.data import Corpus, sample_windows
from tandem.train.distributed import Shard, setup
from tandem.train.model import (
    LargeParts,
    TandemSmall,
    block_starts,
    check_pair,
    draft_ids,
    empty_past,
    large_step,
    plain_columns,
    save_plain_drafter,
    variable_block_starts,
)
from tandem.train.reps import RepsReader
from tandem.train.router import Router, RouterFit, check_temperature, fit_router

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
    variable_boundaries: bool = False  # every block's length drawn from 1..block_length
    router_batches: int = 16  # training batches logged to fit the routers
    router_steps: int = 300
    router_temperature: float = 1.0  # T of the sampled router's target: the sampling temperature it serves
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    autocast: str = "auto"  # auto | bf16 | off: bfloat16 autocast (auto: on CUDA, and on a CPU with bf16 matmuls)
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
        check_temperature(self.router_temperature)


@dataclass
class Teacher:
    """M_L's next-token distribution at each position: full logits ``(B, N, V)``, or its top-k
    token ids and log-probabilities ``(B, N, k)`` (the rest of its mass unknown)."""

    logits: Tensor | None = None
    top_ids: Tensor | None = None
    top_logp: Tensor | None = None
    vocab_size: int = 0  # V (a top-k teacher at a temperature below 1 bounds its unseen tail with it)

    def on_columns(self, columns: Tensor | None, to_column: Tensor | None,
                   temperature: float = 1.0) -> tuple[Tensor, Tensor | None]:
        """M_L's probabilities at ``temperature`` over the drafter's logit columns: dense ``(B, N, C)``
        and None, or sparse ``(B, N, k)`` with the column of each (-1: outside the draft vocabulary).
        ``columns``: token id per column (None: all ids); ``to_column``: column per token id."""
        if self.logits is not None:
            p = torch.softmax(self.logits.float() / temperature, dim=-1)
            return (p if columns is None else p[..., columns.to(p.device)]), None
        assert self.top_ids is not None and self.top_logp is not None
        cols = self.top_ids if to_column is None else to_column.to(self.top_ids.device)[self.top_ids]
        return self.top_probs(temperature), cols

    def top_probs(self, temperature: float = 1.0) -> Tensor:
        """A top-k teacher's probabilities ``(B, N, k)`` at ``temperature``: exact at 1; otherwise
        ``p_v^a / Z`` (``a = 1/T``) with ``Z`` an upper bound of the normaliser, so a lower bound of
        each: the unseen tail (mass ``r``, each token at most ``p_k``, ``V - k`` tokens) adds at most
        ``p_k^(a-1)·r`` (``a ≥ 1``) or ``(V-k)^(1-a)·r^a`` (``a < 1``, Hölder) to ``Z``."""
        logp = self.top_logp.float()
        if temperature == 1.0:
            return logp.exp()
        a = 1.0 / temperature
        scaled = torch.exp(a * logp)  # (B, N, k)
        rest = (1.0 - logp.exp().sum(-1, keepdim=True)).clamp(min=0.0)
        if a >= 1.0:
            tail = torch.exp((a - 1.0) * logp[..., -1:]) * rest
        else:
            if self.vocab_size < logp.shape[-1]:
                raise TrainingError("a top-k teacher at a temperature above 1 needs the vocabulary size")
            tail = (self.vocab_size - logp.shape[-1]) ** (1.0 - a) * rest.pow(a)  # 0 when k covers V
        return scaled / (scaled.sum(-1, keepdim=True) + tail)

    def argmax_ids(self) -> Tensor:
        """M_L's argmax token id per position ``(B, N)`` (first maximum; a top-k teacher's first id)."""
        if self.logits is not None:
            return self.logits.argmax(-1)
        assert self.top_ids is not None
        return self.top_ids[..., 0]

    def soft_ce(self, logq: Tensor, columns: Tensor | None, to_column: Tensor | None) -> Tensor:
        """``-Σ_v p_v log q_v`` per position, averaged; ``logq (B, N, C)`` over the drafter's columns."""
        p, cols = self.on_columns(columns, to_column)
        if cols is None:
            return -(p * logq).sum(-1).mean()
        valid = cols >= 0
        return -(p * logq.gather(-1, cols.clamp(min=0)) * valid).sum(-1).mean()

    def overlap(self, q: Tensor, columns: Tensor | None, to_column: Tensor | None,
                temperature: float = 1.0) -> Tensor:
        """``Σ_v min(p_v, q_v) = 1 - TV(p, q)`` per position ``(B, N)``, ``p`` M_L's distribution at
        ``temperature`` and ``q (B, N, C)`` the drafter's over its columns (at the same temperature):
        a sampled draft's acceptance probability (a lower bound with a top-k teacher)."""
        p, cols = self.on_columns(columns, to_column, temperature)
        if cols is None:
            return torch.minimum(p, q).sum(-1)
        return (torch.minimum(p, q.gather(-1, cols.clamp(min=0))) * (cols >= 0)).sum(-1)


def distil_loss(logits: Tensor, targets: Tensor, teacher: Teacher | Tensor, weight: float = 0.5,
                columns: Tensor | None = None, to_column: Tensor | None = None,
                denominator: Tensor | None = None) -> Tensor:
    """``(1 - λ) * CE(targets) + λ * CE(M_L's soft labels)``; logits ``(B, N, C)`` over the
    drafter's columns (all V without a draft vocabulary), targets ``(B, N)`` token ids."""
    teacher = teacher if isinstance(teacher, Teacher) else Teacher(logits=teacher)
    hard = hard_loss(logits, targets, to_column, denominator)
    soft = teacher.soft_ce(torch.log_softmax(logits.float(), dim=-1), columns, to_column)
    return (1.0 - weight) * hard + weight * soft


def hard_loss(logits: Tensor, targets: Tensor, to_column: Tensor | None = None,
              denominator: Tensor | None = None) -> Tensor:
    """Next-token CE; targets outside a draft vocabulary (column -1) are ignored. The mean is
    over the counted targets, or the sum over ``denominator`` when given (a distributed run
    normalises by the whole global batch's count, see :meth:`Trainer.compute_loss`)."""
    cols = targets if to_column is None else to_column.to(targets.device)[targets]
    if denominator is None:
        return F.cross_entropy(logits.flatten(0, 1).float(), cols.flatten(), ignore_index=-1)
    return F.cross_entropy(logits.flatten(0, 1).float(), cols.flatten(), ignore_index=-1,
                           reduction="sum") / denominator


def router_targets(logits: Tensor, teacher: Teacher, columns: Tensor | None, to_column: Tensor | None,
                   temperature: float) -> tuple[Tensor, Tensor]:
    """The routers' targets at each position ``(B, N)`` from the drafter's logits ``(B, N, C)`` over
    its columns (token id per column: ``columns``; None: all V): greedy, 1.0 where its argmax is
    M_L's argmax token, else 0.0 (a draft vocabulary without M_L's argmax is never accepted);
    sampled, ``Σ_v min(p_L,T(v), q_S,T(v))`` with both distributions at ``temperature``."""
    best = logits.argmax(-1)  # (B, N) columns
    drafted = best if columns is None else columns.to(best.device)[best]
    greedy = (drafted == teacher.argmax_ids().to(best.device)).float()
    q = torch.softmax(logits.float() / temperature, dim=-1)
    return greedy, teacher.overlap(q, columns, to_column, temperature)


@dataclass
class Batch:
    """One micro-batch: inputs and targets ``(B, N)``, M_L's representations of the inputs
    (per ``large_layers``; empty for plain and lm), and M_L's teacher when the loss needs it."""

    inputs: Tensor
    targets: Tensor
    reps: list[Tensor]
    teacher: Teacher | None
    shard: Shard | None = None  # this rank's rows of the global batch drawn (None: the whole batch)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but CUDA is not available; use --device cpu")
    return torch.device(name)


AUTOCAST = ("auto", "bf16", "off")


def use_autocast(setting: str, device: torch.device) -> bool:
    """Whether training runs under bfloat16 autocast: ``bf16`` always, ``off`` never, ``auto`` on
    CUDA and on a CPU whose oneDNN has bfloat16 matmuls (AVX512-BF16 / AMX: about 2x faster than
    float32 there). Weights, optimizer state and the losses stay float32."""
    if setting not in AUTOCAST:
        raise TrainingError(f"autocast must be one of {', '.join(AUTOCAST)}, not {setting!r}")
    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.backends.mkldnn.is_available()
                                          and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``config.steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """One run: ``model`` (TandemSmall or HF model) trained into ``out_dir`` on random windows of
    ``corpus.train`` with M_L (a model) in the loop, or on windows of a reps folder (``reps``;
    ``large`` is then M_L's :class:`LargeParts`, whose head turns a stored final hidden state
    into the teacher's logits)."""

    def __init__(self, model: TandemSmall | PreTrainedModel, large: PreTrainedModel | LargeParts | None,
                 corpus: Corpus | None, config: TrainConfig, out_dir: str | Path, router: Router | None = None,
                 reps: RepsReader | None = None) -> None:
        config.validate()
        if (config.mode == "tandem") != isinstance(model, TandemSmall):
            raise TrainingError(f"mode {config.mode!r} got a {type(model).__name__}; "
                                "tandem mode trains a TandemSmall, plain and lm modes an HF model")
        if config.mode != "lm" and large is None:
            raise TrainingError(f"mode {config.mode!r} needs M_L (--large)")
        if reps is None and (corpus is None or isinstance(large, LargeParts)):
            raise TrainingError("training without a reps folder needs the corpus and M_L itself")
        if reps is not None:
            if config.mode == "lm":
                raise TrainingError("--mode lm trains without M_L; it does not read a reps folder")
            if isinstance(model, TandemSmall):
                reps.check_layers(model.config.large_layers)
            if (reps.spec.large_hidden_size, reps.spec.large_num_layers, reps.spec.vocab_size) != (
                    large.config.hidden_size, large.config.num_hidden_layers, large.config.vocab_size):
                raise TrainingError(f"{reps.folder} was computed by another M_L (width {reps.spec.large_hidden_size}, "
                                    f"{reps.spec.large_num_layers} layers); pass the same --large")
            if config.seq_len > reps.spec.seq_len:
                raise TrainingError(f"--seq-len {config.seq_len} is longer than the stored windows "
                                    f"({reps.spec.seq_len}); lower it")
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
        # under torchrun (WORLD_SIZE > 1): join the process group; a CUDA rank runs on cuda:LOCAL_RANK
        self.dist, self.device = setup(resolve_device(config.device))
        self.dist.shard(config.batch_size)  # a TrainingError unless the global batch splits evenly
        self.model = model.to(self.device)
        self.reps = reps
        self.large: PreTrainedModel | None = None
        self.teacher_head: Tensor | None = None
        if isinstance(large, LargeParts):
            self.teacher_head = large.head.to(self.device)
        elif large is not None:
            self.large = large.to(self.device).eval().requires_grad_(False)
            self.teacher_head = self.large.get_output_embeddings().weight
        self.router = model.router if isinstance(model, TandemSmall) else router
        self.corpus = corpus
        # a draft vocabulary's columns (token id per logit column, column per token id); None: all V.
        # The tandem M_S and a plain drafter (tandem.train.model.set_draft_vocab) hold them alike.
        self.columns: Tensor | None = draft_ids(self.model)
        self.to_column: Tensor | None = getattr(self.model, "column_of_token", None)
        self.out_dir = Path(out_dir)
        self.step = 0
        self.tokens_per_second: float | None = None  # of the last train() call
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
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16,
                                       enabled=use_autocast(config.autocast, self.device))
        # several processes: DDP averages the gradients of exactly the parameters stepped above
        self.ddp = self.dist.wrap(params, self._forward_logits)

    # ------------------------------------------------------------------ losses

    def loss_kind(self, step: int) -> str:
        loss = self.config.resolved_loss()
        if loss == "ce-then-distil":
            return "ce" if step < round(self.config.ce_fraction * self.config.steps) else "distil"
        return loss

    def _block_starts(self, batch: int, length: int, generator: torch.Generator,
                      shard: Shard | None = None) -> Tensor:
        """Block starts of ``batch`` rows; of the shard's rows when the batch is one rank's share
        (the offsets are drawn for the whole global batch, on every rank alike)."""
        gamma = self.config.block_length
        drawn = batch if shard is None else shard.total
        if self.config.variable_boundaries:
            starts = variable_block_starts(drawn, length, gamma, generator)
        else:
            starts = block_starts(drawn, length, gamma)
        return (starts if shard is None else shard.take(starts)).to(self.device)

    @property
    def _layers(self) -> list[int]:
        return self.model.config.large_layers if isinstance(self.model, TandemSmall) else []

    def next_batch(self, generator: torch.Generator, need_teacher: bool, seq_len: int | None = None,
                   shard: bool = False) -> Batch:
        """A micro-batch of random windows, with M_L's side from the reps folder or from M_L.
        ``shard``: in a distributed run, only this rank's rows of the (global) batch drawn."""
        cfg = self.config
        n = cfg.seq_len if seq_len is None else seq_len
        rows = self.dist.shard(cfg.batch_size) if shard else None
        if self.reps is not None:
            got = self.reps.sample(cfg.batch_size, generator, self._layers, n, teacher=need_teacher,
                                   rows=None if rows is None else slice(rows.start, rows.stop))  # only this rank's
            windows = got.windows.to(self.device)
            teacher = None
            if got.hidden is not None:
                with torch.no_grad():
                    teacher = Teacher(logits=F.linear(got.hidden.to(self.device), self.teacher_head))
            elif got.top_ids is not None:
                teacher = Teacher(top_ids=got.top_ids.to(self.device), top_logp=got.top_logp.to(self.device),
                                  vocab_size=self.reps.spec.vocab_size)
            return Batch(windows[:, :-1], windows[:, 1:], [r.to(self.device) for r in got.reps], teacher, rows)
        return self.live_batch(sample_windows(self.corpus.train, cfg.batch_size, n + 1, generator), need_teacher,
                               rows)

    def live_batch(self, windows: Tensor, need_teacher: bool, shard: Shard | None = None) -> Batch:
        """The batch of ``windows (B, N+1)`` (the shard's rows of them) with M_L run on them (when it is loaded)."""
        windows = (windows if shard is None else shard.take(windows)).to(self.device)
        inputs, targets = windows[:, :-1], windows[:, 1:]
        teacher, reps = None, []
        if self.large is not None and (need_teacher or self._layers):
            with torch.no_grad(), self.autocast:
                past = empty_past(self.large.config, inputs.shape[0], device=self.device)
                large_logits, _, reps = large_step(self.large, inputs, past, self._layers)
            teacher = Teacher(logits=large_logits) if need_teacher else None
        return Batch(inputs, targets, reps, teacher, shard)

    def _forward_logits(self, inputs: Tensor, reps: list[Tensor], starts: Tensor) -> Tensor:
        if isinstance(self.model, TandemSmall):
            return self.model.forward_columns(inputs, reps, starts)
        return plain_columns(self.model, inputs)

    def drafter_logits(self, batch: Batch, generator: torch.Generator, synced: bool = False) -> Tensor:
        """M_S logits ``(B, N, C)`` over its columns (the draft vocabulary, or all V). ``synced``: through
        DistributedDataParallel (a training step on every rank) when the run has several processes."""
        starts = self._block_starts(*batch.inputs.shape, generator, batch.shard)
        forward = self.ddp if synced and self.ddp is not None else self._forward_logits
        with self.autocast:
            return forward(batch.inputs, batch.reps, starts)

    def compute_loss(self, batch: Batch, kind: str, synced: bool = False) -> Tensor:
        """Loss of one micro-batch (of this rank's share of it, through DDP, when ``synced``)."""
        logits = self.drafter_logits(batch, self.generator, synced)
        denominator = None
        if synced and self.ddp is not None and self.to_column is not None:
            # targets outside the draft vocabulary are not counted, so the ranks' counts differ: normalise
            # by the global count (times 1/world: DDP averages the gradients), as one process would
            counted = (self.to_column[batch.targets] >= 0).sum()
            denominator = self.dist.total(counted).to(torch.float32) / self.dist.world
        if kind == "distil":
            return distil_loss(logits, batch.targets, batch.teacher, self.config.distil_weight, self.columns,
                               self.to_column, denominator)
        return hard_loss(logits, batch.targets, self.to_column, denominator)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_FILE

    def _tandem_config_json(self) -> str | None:
        return self.model.config.to_json() if isinstance(self.model, TandemSmall) else None

    def _plain_draft_vocab(self) -> list[int] | None:
        """A plain drafter's draft vocabulary (the tandem M_S's is in its config)."""
        if isinstance(self.model, TandemSmall) or self.columns is None:
            return None
        return self.columns.tolist()

    @staticmethod
    def _without_router(tandem_config: str | None) -> dict | None:
        """A tandem config's settings but its router's: the routers are fitted after training, so
        a checkpoint resumes whatever routers (or router layout) the model now carries."""
        if tandem_config is None:
            return None
        values = json.loads(tandem_config)
        values.pop("router", None)
        return values

    def save_checkpoint(self) -> None:
        """Write the checkpoint (rank 0; the other ranks wait for it)."""
        if self.dist.is_main:
            self._write_checkpoint()
        self.dist.barrier()

    def _write_checkpoint(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "config": asdict(self.config),
            "tandem_config": self._tandem_config_json(),
            "draft_vocab": self._plain_draft_vocab(),
            "model": self._trained_state(),
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

    def _trained_state(self) -> dict[str, Tensor]:
        """The model's state without frozen parameters (M_L's shared embedding and head) and
        without the routers (fitted after training, not trained by the steps)."""
        frozen = {p.data_ptr() for p in self.model.parameters() if not p.requires_grad}
        return {k: v for k, v in self.model.state_dict().items()
                if v.data_ptr() not in frozen and not k.startswith("router.")}

    def _load_trained_state(self, state: dict[str, Tensor]) -> None:
        state = {k: v for k, v in state.items() if not k.startswith("router.")}  # older checkpoints held them
        result = self.model.load_state_dict(state, strict=False)
        frozen = {p.data_ptr() for p in self.model.parameters() if not p.requires_grad}
        own = self.model.state_dict()
        missing = [k for k in result.missing_keys if own[k].data_ptr() not in frozen and not k.startswith("router.")]
        if missing or result.unexpected_keys:
            raise TrainingError(f"{self.checkpoint_path} does not match this model (missing {missing[:3]}, "
                                f"unexpected {result.unexpected_keys[:3]}); use another --out or --no-resume")

    def load_checkpoint(self) -> None:
        # on the CPU: RNG states must stay CPU tensors; load_state_dict copies onto the model's device
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        saved = {k: v for k, v in state["config"].items()
                 if k not in ("device", "checkpoint_every") and not k.startswith("router_")}  # not training
        current = {k: v for k, v in asdict(self.config).items() if k in saved}
        if saved != current:
            changed = sorted(k for k in saved if saved[k] != current[k])
            raise TrainingError(f"{self.checkpoint_path} was written with other settings ({', '.join(changed)}); "
                                "use the same settings, another --out, or --no-resume")
        tandem_config = self._without_router(self._tandem_config_json())
        if self._without_router(state.get("tandem_config", self._tandem_config_json())) != tandem_config:
            raise TrainingError(f"{self.checkpoint_path} holds a tandem M_S of another layer assignment, M_L or "
                                "router; use the same --layer-assignment and M_L, another --out, or --no-resume")
        if state.get("draft_vocab") != self._plain_draft_vocab():  # absent in older checkpoints: none
            raise TrainingError(f"{self.checkpoint_path} holds a plain drafter of another draft vocabulary; use the "
                                "same --draft-vocab and training data, another --out, or --no-resume")
        self._load_trained_state(state["model"])
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
        if resume and self.dist.same(self.checkpoint_path.exists(), f"{self.checkpoint_path} exists"):
            self.load_checkpoint()  # on every rank
        last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        self.model.train()
        losses: list[float] = []
        tokens, start = 0, time.perf_counter()
        bar = tqdm(total=last, initial=self.step, disable=not progress or not self.dist.is_main,
                   desc=f"train {cfg.mode}")
        while self.step < last:
            kind = self.loss_kind(self.step)
            total = 0.0
            for micro in range(cfg.grad_accum):
                batch = self.next_batch(self.generator, need_teacher=kind == "distil", shard=True)
                # several processes: gradients are averaged once, after the last micro-batch
                last_micro = micro == cfg.grad_accum - 1
                with nullcontext() if self.ddp is None or last_micro else self.ddp.no_sync():
                    loss = self.compute_loss(batch, kind, synced=True) / cfg.grad_accum
                    loss.backward()
                total += loss.item()
                tokens += cfg.batch_size * cfg.seq_len  # the global batch: tok_s is the whole run's
            total = self.dist.mean(total)  # the global batch's loss
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
        if tokens:
            self.tokens_per_second = tokens / (time.perf_counter() - start)
        self.save_checkpoint()
        self.model.eval()
        return losses

    # ------------------------------------------------------------------ router and output

    def fit_router(self, progress: bool = False) -> RouterFit | None:
        """Fit both routers on (M_S, M_L) pairs from ``router_batches`` training batches (the
        sampled one at ``router_temperature``, recorded in the router's config); returns what the
        fit gave, or None without routers (or without M_L)."""
        if self.router is None or (self.large is None and self.reps is None):
            return None
        self.router.config.sampled_temperature = self.config.router_temperature  # on every rank
        if self.dist.enabled:  # rank 0 fits it on whole batches; every rank gets its weights
            fit = self._fit_router(progress) if self.dist.is_main else None
            self.dist.broadcast_module(self.router)
            return self.dist.broadcast_object(fit)
        return self._fit_router(progress)

    def _fit_router(self, progress: bool) -> RouterFit:
        cfg = self.config
        if self.reps is not None and self.reps.spec.distil == "none":
            raise TrainingError(f"{self.reps.folder} stores no M_L distribution (written with --distil none), which "
                                "the routers' targets need; fit them with --data (M_L in the loop) or rerun "
                                "`tandem reps --distil topk`")
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        embed = self.model_small.get_input_embeddings().weight.detach()
        if self.columns is not None:
            embed = embed[self.columns]
        features, greedy, sampled = [], [], []
        with torch.no_grad():
            for _ in tqdm(range(cfg.router_batches), desc="router pairs", disable=not progress):
                batch = self.next_batch(generator, need_teacher=True)
                logits = self.drafter_logits(batch, generator).float()
                features.append(self.router.features(logits, embed).flatten(0, 1).float().cpu())
                g, p = router_targets(logits, batch.teacher, self.columns, self.to_column, cfg.router_temperature)
                greedy.append(g.flatten().cpu())
                sampled.append(p.flatten().cpu())
        self.router.cpu()
        fit = fit_router(self.router, torch.cat(features), torch.cat(greedy), torch.cat(sampled),
                         steps=cfg.router_steps, seed=cfg.seed)
        self.router.to(self.device)
        return fit

    @property
    def model_small(self) -> PreTrainedModel:
        """The HF model of M_S (inside the TandemSmall in tandem mode)."""
        return self.model.small if isinstance(self.model, TandemSmall) else self.model

    def save(self, tokenizer_folder: str | Path | None = None, summary: dict | None = None) -> Path:
        """Write the trained model (+ router, tokenizer files, ``training_summary.json``) to ``out_dir``
        (rank 0; the other ranks wait for it)."""
        if self.dist.is_main:
            self._write_model(tokenizer_folder, summary)
        self.dist.barrier()
        return self.out_dir

    def _write_model(self, tokenizer_folder: str | Path | None, summary: dict | None) -> None:
        if isinstance(self.model, TandemSmall):
            self.model.save_pretrained(self.out_dir)
        else:  # + draft_vocab.json when it has a draft vocabulary
            save_plain_drafter(self.model, self.out_dir)
        if self.router is not None and not isinstance(self.model, TandemSmall):
            self.router.save(self.out_dir)
        if tokenizer_folder is not None:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_folder) / name).exists():
                    shutil.copy(Path(tokenizer_folder) / name, self.out_dir / name)
        record = {"config": asdict(self.config), "steps_done": self.step, **(summary or {})}
        (self.out_dir / "training_summary.json").write_text(json.dumps(record, indent=2))
