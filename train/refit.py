"""Refit the routers of a trained drafter in place (``tandem fit-router``).

Training a drafter can take long; its routers are fitted after it, on (M_S, M_L) pairs logged
on training data, in minutes. This module redoes only that step for a drafter folder written by
``tandem train`` (tandem or plain; with routers of the current layout, an older single router,
or none) and rewrites only the router files:

- tandem M_S: ``tandem_config.json`` (its ``"router"``) and ``tandem.safetensors`` (``W_T``,
  written back unchanged, and the routers);
- plain M_S: ``router_config.json`` and ``router.safetensors``.

The M_S weights are not touched. The block structure the pairs are logged under (block length,
variable boundaries), the window length and the batch size default to the drafter's training
run (its ``training_summary.json``); what the fit gave is added there under ``"router"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from tandem.errors import TrainingError
from tandem.train.data import Corpus, TextTokenizer
from tandem.train.model import (
    TANDEM_CONFIG_FILE,
    TANDEM_WEIGHTS_FILE,
    LargeParts,
    TandemSmall,
    load_plain_drafter,
)
from tandem.train.reps import RepsReader
from tandem.train.router import (
    ROUTER_CONFIG_FILE,
    ROUTER_WEIGHTS_FILE,
    Router,
    RouterConfig,
    RouterFit,
    check_temperature,
)
from tandem.train.trainer import TrainConfig, Trainer

SUMMARY_FILE = "training_summary.json"
# the settings of the drafter's training run that decide which pairs are logged
INHERITED = ("block_length", "variable_boundaries", "seq_len", "batch_size", "seed")


@dataclass
class RefitSettings:
    """How to log and fit. None: the drafter's training run's value (else TrainConfig's default)."""

    router_temperature: float = 1.0
    router_batches: int | None = None
    router_steps: int | None = None
    block_length: int | None = None
    variable_boundaries: bool | None = None
    seq_len: int | None = None
    batch_size: int | None = None
    seed: int | None = None
    top_k: int | None = None  # router shape; None: the old router's, else RouterConfig's default
    hidden_size: int | None = None
    device: str = "auto"


def _summary(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _old_router_shape(folder: Path, tandem: bool) -> dict[str, Any]:
    """top_k / hidden_size of the router the folder holds (any layout), or {}."""
    try:
        if tandem:
            values = json.loads((folder / TANDEM_CONFIG_FILE).read_text()).get("router") or {}
        else:
            values = json.loads((folder / ROUTER_CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: values[k] for k in ("top_k", "hidden_size") if isinstance(values.get(k), int)}


def _stored_dtype(*files: Path) -> torch.dtype:
    """The dtype of the first tensor of the first of ``files`` that exists (float32 if none): the
    refit files keep the precision the folder was saved in."""
    names = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
    for path in files:
        if path.is_file():
            with path.open("rb") as f:
                header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
            header.pop("__metadata__", None)
            for info in header.values():
                return names.get(info.get("dtype"), torch.float32)
    return torch.float32


def refit_routers(drafter: str | Path, large: str | Path, *, data: list[str] | None = None,
                  reps: str | Path | None = None, heldout_fraction: float = 0.05,
                  settings: RefitSettings | None = None, progress: bool = True,
                  say: Callable[[str], None] = print) -> RouterFit:
    """Fit new greedy and sampled routers for the drafter in ``drafter`` (M_L: the Hugging Face
    folder ``large``) on pairs logged from ``reps`` (a ``tandem reps`` folder: M_L is not run) or
    from the training split of ``data`` (M_L in the loop), and rewrite its router files."""
    folder = Path(drafter)
    settings = settings or RefitSettings()
    check_temperature(settings.router_temperature)
    if not (folder / "config.json").is_file():
        raise TrainingError(f"{folder} is not a drafter folder (no config.json); pass the --out of `tandem train`")
    if (data is None) == (reps is None):
        raise TrainingError("give the pairs' source: --data FILES (M_L in the loop) or --reps FOLDER, not both")
    tandem = (folder / TANDEM_CONFIG_FILE).is_file()
    trained = _summary(folder).get("config") or {}
    if trained.get("mode") not in (None, "tandem", "plain"):
        raise TrainingError(f"{folder} holds an M_L (--mode {trained['mode']}), not a drafter; routers belong "
                            "to tandem and plain drafters")
    defaults = TrainConfig()
    chosen = {name: getattr(settings, name) if getattr(settings, name) is not None
              else trained.get(name, getattr(defaults, name)) for name in INHERITED}
    if not trained:
        say(f"{folder} has no {SUMMARY_FILE}: logging pairs at block length {chosen['block_length']}"
            f"{' (variable)' if chosen['variable_boundaries'] else ''}; pass --block-length to match its training")

    reader = RepsReader(reps) if reps is not None else None
    model_large: PreTrainedModel | LargeParts
    if reader is not None:
        model_large = LargeParts.from_folder(large)
    else:
        if not (Path(large) / "config.json").is_file():
            raise TrainingError(f"{large} is not a Hugging Face model folder (no config.json); pass M_L's folder")
        model_large = AutoModelForCausalLM.from_pretrained(large, dtype=torch.float32).eval()

    model: TandemSmall | PreTrainedModel
    if tandem:
        model = TandemSmall.from_pretrained(folder, drop_router=True)
        small = model.small
    else:
        model = small = load_plain_drafter(folder)  # with its draft vocabulary: the routers score its columns
    shape = _old_router_shape(folder, tandem)
    for name in ("top_k", "hidden_size"):
        if getattr(settings, name) is not None:
            shape[name] = getattr(settings, name)
    torch.manual_seed(chosen["seed"])
    router = Router(RouterConfig(embed_dim=small.config.hidden_size, sampled_temperature=settings.router_temperature,
                                 **shape))
    if isinstance(model, TandemSmall):
        model.router = router
        model.config.router = router.config

    corpus = None
    if data is not None:
        tokenizer_folder = folder if (folder / "tokenizer.json").is_file() else Path(large)
        corpus = Corpus.build(data, TextTokenizer.load(tokenizer_folder), heldout_fraction)
        say(f"data: {corpus.train.numel()} training tokens (the routers are fitted on the training split)")
    config = TrainConfig(mode="tandem" if tandem else "plain", steps=1, checkpoint_every=0, device=settings.device,
                         router_temperature=settings.router_temperature,
                         router_batches=settings.router_batches or defaults.router_batches,
                         router_steps=settings.router_steps or defaults.router_steps, **chosen)
    trainer = Trainer(model, model_large, corpus, config, folder, None if tandem else router, reps=reader)
    fit = trainer.fit_router(progress=progress)
    assert fit is not None  # the trainer has M_L's side and routers

    if isinstance(model, TandemSmall):
        dtype = _stored_dtype(folder / TANDEM_WEIGHTS_FILE, folder / "model.safetensors")
        model.cpu().to(dtype).save_tandem_files(folder)
    else:
        dtype = _stored_dtype(folder / ROUTER_WEIGHTS_FILE, folder / "model.safetensors")
        router.cpu().to(dtype).save(folder)
    summary = _summary(folder)
    summary.pop("router_mean_abs_error", None)  # an older single router's figure
    summary["router"] = {**fit.as_dict(), "refit": {
        "source": f"reps {reps}" if reps is not None else "data (training split)",
        **{f.name: getattr(config, f.name) for f in fields(TrainConfig) if f.name.startswith("router_")},
        **chosen, "router_shape": {k: v for k, v in asdict(router.config).items() if k in ("top_k", "hidden_size")}}}
    (folder / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
    return fit
