"""Model weights read one tensor at a time: Hugging Face folders (memory-mapped safetensors,
single file or sharded) or in-process PyTorch modules, plus the tandem extras.

The graph builder and the validation reference never hold a whole model: they ask a
`Checkpoint` for one tensor, use it and drop it. Tensors come back as float32 numpy arrays
in Hugging Face's layout (`[out, in]` for linear weights).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import ExportError, TandemError

TANDEM_CONFIG_FILE = "tandem_config.json"
TANDEM_WEIGHTS_FILE = "tandem.safetensors"
ROUTER_CONFIG_FILE = "router_config.json"
ROUTER_WEIGHTS_FILE = "router.safetensors"
DRAFT_VOCAB_FILE = "draft_vocab.json"  # a plain drafter's draft vocabulary: {"draft_vocab": [ids]}


def parse_draft_vocab(value: Any, vocab_size: int, where: str, error: type[TandemError] = ExportError) -> list[int]:
    """A stored draft vocabulary: at least 2 token ids, ascending without repeats, inside
    ``0..vocab_size-1`` (what `tandem train` writes); ``error`` naming ``where`` otherwise."""
    if (not isinstance(value, list) or len(value) < 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)):
        raise error(f"{where}: `draft_vocab` must be a list of at least 2 token ids; re-save the drafter "
                    f"(`tandem train --draft-vocab N`)")
    if any(not 0 <= i < vocab_size for i in value) or any(b <= a for a, b in itertools.pairwise(value)):
        raise error(f"{where}: `draft_vocab` must hold ascending token ids inside the drafter's vocabulary "
                    f"(0..{vocab_size - 1}); re-save the drafter (`tandem train --draft-vocab N`)")
    return list(value)


def read_draft_vocab(folder: str | Path, vocab_size: int, error: type[TandemError] = ExportError) -> list[int] | None:
    """The draft vocabulary saved in the plain drafter folder ``folder`` (its `draft_vocab.json`),
    or None when it has none (the drafter proposes from the whole vocabulary)."""
    path = Path(folder) / DRAFT_VOCAB_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"cannot read {path} ({exc}); re-save the drafter (`tandem train --draft-vocab N`), or delete "
                    "the file to draft from the whole vocabulary") from exc
    if not isinstance(data, dict) or "draft_vocab" not in data:
        raise error(f"{path} is not a draft vocabulary (a JSON object with a `draft_vocab` list); re-save the "
                    "drafter (`tandem train --draft-vocab N`), or delete the file to draft from the whole vocabulary")
    return parse_draft_vocab(data["draft_vocab"], vocab_size, str(path), error)


class TensorSource:
    """Named tensors; `get` returns a float32 array, `names` every stored name."""

    def names(self) -> set[str]:
        raise NotImplementedError

    def get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def has(self, name: str) -> bool:
        return name in self.names()

    def close(self) -> None:
        """Release open files (a no-op for in-memory sources)."""


class SafetensorsSource(TensorSource):
    """Every `*.safetensors` file named by `files`; `get` reads one tensor's bytes with a
    plain file read (no memory map: mapped file pages would count as this process's memory
    for as long as the map lives)."""

    DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

    def __init__(self, files: list[Path]) -> None:
        self._where: dict[str, tuple[Path, dict[str, Any], int]] = {}
        for path in files:
            try:
                with path.open("rb") as f:
                    size = int.from_bytes(f.read(8), "little")
                    if not 2 <= size <= path.stat().st_size - 8:
                        raise ValueError("bad header length")
                    header = json.loads(f.read(size))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                raise ExportError(f"cannot read {path}: {exc}; is it a complete safetensors file?") from exc
            header.pop("__metadata__", None)
            for name, info in header.items():
                self._where[name] = (path, info, 8 + size)

    def names(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise ExportError(f"tensor {name!r} is missing from the checkpoint")
        path, info, base = self._where[name]
        dtype = self.DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ExportError(f"{path}: tensor {name!r} has dtype {info.get('dtype')}; tandem reads "
                              f"{', '.join(self.DTYPES)}")
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - start != count * np.dtype(dtype).itemsize:
            raise ExportError(f"{path}: tensor {name!r} has {end - start} bytes for shape {shape}")
        with path.open("rb") as f:
            f.seek(base + start)
            data = np.fromfile(f, dtype=dtype, count=count)
        if data.size != count:
            raise ExportError(f"{path} is truncated (tensor {name!r})")
        if info["dtype"] == "BF16":
            import torch  # its bfloat16 widening is vectorized and parallel

            return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16).float().numpy().reshape(shape)
        return data.astype(np.float32, copy=False).reshape(shape)


class DictSource(TensorSource):
    """Tensors held by a PyTorch module's state dict (tests and in-process exports)."""

    def __init__(self, tensors: dict[str, Any]) -> None:
        self._tensors = tensors

    def names(self) -> set[str]:
        return set(self._tensors)

    def get(self, name: str) -> np.ndarray:
        if name not in self._tensors:
            raise ExportError(f"tensor {name!r} is missing from the model")
        return self._tensors[name].detach().float().cpu().numpy()


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ExportError(f"{index} is not a safetensors index ({exc})") from exc
        files = sorted({folder / name for name in weight_map.values()})
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise ExportError(f"{folder}: shards {missing} named by {index.name} are missing")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    if any(folder.glob("*.bin")):
        raise ExportError(f"{folder} holds PyTorch .bin weights; tandem reads safetensors only: "
                          "load the model with transformers and save_pretrained() it again")
    raise ExportError(f"{folder} has no model.safetensors (or sharded index)")



def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

@dataclass
class Checkpoint:
    """One decoder's Hugging Face config, its tensors, and (tandem M_S, plain drafter) extras.

    `extras` holds the tandem projections (`projections.{j}.weight`) and the two routers' weights
    (`router.{greedy,sampled}.{0,2}.{weight,bias}`); `tandem_config` / `router_config` their
    settings (train/router.py: the router layout; an older single router is refused).
    `draft_vocab`: a drafter's reduced draft vocabulary (ascending token ids; empty: all), from
    the tandem config or a plain drafter's `draft_vocab.json`.
    """

    config: Any  # transformers.PretrainedConfig
    tensors: TensorSource
    source: str = ""  # folder, or "" for an in-process module
    extras: TensorSource = field(default_factory=lambda: DictSource({}))
    tandem_config: dict[str, Any] | None = None
    router_config: dict[str, Any] | None = None
    trained_block_length: int = 0  # γ of `tandem train` (training_summary.json); 0: unknown
    draft_vocab: list[int] = field(default_factory=list)

    def close(self) -> None:
        self.tensors.close()
        self.extras.close()

    # ---- construction -----------------------------------------------------------------
    @staticmethod
    def from_folder(folder: str | Path, role: str = "M_L") -> Checkpoint:
        """A Hugging Face model folder; its tandem / router files when present."""
        from tandem.export.config import load_config  # transformers' AutoConfig when installed

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ExportError(f"{folder} is not a Hugging Face model folder (no config.json); "
                              f"pass the folder that holds the {role}'s config.json and weights")
        config = load_config(folder)
        ckpt = Checkpoint(config, SafetensorsSource(_safetensors_files(folder)), str(folder))
        ckpt.trained_block_length = _trained_block_length(folder)
        extra_files = []
        if (folder / TANDEM_CONFIG_FILE).is_file():
            ckpt.tandem_config = json.loads((folder / TANDEM_CONFIG_FILE).read_text())
            if not (folder / TANDEM_WEIGHTS_FILE).is_file():
                raise ExportError(f"{folder} has {TANDEM_CONFIG_FILE} but no {TANDEM_WEIGHTS_FILE}; "
                                  "re-save the tandem M_S")
            extra_files.append(folder / TANDEM_WEIGHTS_FILE)
            ckpt.router_config = _router_config(ckpt.tandem_config.get("router"), folder, role)
            ckpt.draft_vocab = [int(i) for i in ckpt.tandem_config.get("draft_vocab") or []]
        else:
            ckpt.draft_vocab = read_draft_vocab(folder, int(config.vocab_size)) or []
        if ckpt.tandem_config is None and (folder / ROUTER_CONFIG_FILE).is_file():
            if not (folder / ROUTER_WEIGHTS_FILE).is_file():
                raise ExportError(f"{folder} has {ROUTER_CONFIG_FILE} but no {ROUTER_WEIGHTS_FILE}; "
                                  "re-save the drafter or delete the router config")
            ckpt.router_config = _router_config(json.loads((folder / ROUTER_CONFIG_FILE).read_text()), folder, role)
            extra_files.append(folder / ROUTER_WEIGHTS_FILE)
        if extra_files:
            extras = SafetensorsSource(extra_files)
            if ckpt.tandem_config is None:  # router.safetensors stores the MLP without the prefix
                extras = _Prefixed(extras, "router.")
            ckpt.extras = extras
        return ckpt

    @staticmethod
    def from_module(model: Any) -> Checkpoint:
        """An in-process model: a Hugging Face causal LM (optionally with a `.router` and a draft
        vocabulary), or a `tandem.train.model.TandemSmall`."""
        from dataclasses import asdict

        from tandem.train.model import TandemSmall

        if isinstance(model, TandemSmall):
            extras = {f"projections.{j}.weight": p.weight for j, p in enumerate(model.projections)}
            if model.router is not None:
                extras.update({f"router.{k}": v for k, v in model.router.state_dict().items()})
            tandem_config = json.loads(model.config.to_json())
            return Checkpoint(model.small.config, DictSource(dict(model.small.state_dict())),
                              extras=DictSource(extras), tandem_config=tandem_config,
                              router_config=tandem_config.get("router"),
                              draft_vocab=list(tandem_config.get("draft_vocab") or []))
        router = getattr(model, "router", None)
        draft_ids = getattr(model, "draft_ids", None)  # a plain drafter's, see tandem.train.model.set_draft_vocab
        ckpt = Checkpoint(model.config, DictSource(dict(model.state_dict())),
                          draft_vocab=[] if draft_ids is None else [int(i) for i in draft_ids.tolist()])
        if router is not None:
            ckpt.extras = DictSource({f"router.{k}": v for k, v in router.state_dict().items()})
            ckpt.router_config = asdict(router.config)
        return ckpt

    @staticmethod
    def load(source: Any, role: str = "M_L") -> Checkpoint:
        """A folder path or an in-process module."""
        if isinstance(source, str | Path):
            return Checkpoint.from_folder(source, role)
        return Checkpoint.from_module(source)


def _router_config(values: dict[str, Any] | None, folder: Path, role: str) -> dict[str, Any] | None:
    """A drafter folder's router settings; an older single router (one score for both decoding
    modes) is refused with the command that refits the routers in place."""
    from tandem.manifest import ROUTER_LAYOUT

    if not values:
        return None
    if values.get("layout", 1) != ROUTER_LAYOUT:
        raise ExportError(
            f"the {role} in {folder} has an older single router (layout {values.get('layout', 1)}); bundles now "
            "carry a greedy and a sampled router. Refit them in place, then export again: `tandem fit-router "
            f"--drafter {folder} --large M_L --data FILES` (or --reps FOLDER)")
    return values


def _trained_block_length(folder: Path) -> int:
    """The block length γ of the `tandem train` run that wrote `folder` (0: unknown)."""
    try:
        summary = json.loads((folder / "training_summary.json").read_text())
        return max(0, int(summary["config"]["block_length"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 0


class _Prefixed(TensorSource):
    """A source whose names are shown with `prefix` prepended."""

    def __init__(self, inner: TensorSource, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def names(self) -> set[str]:
        return {self.prefix + n for n in self.inner.names()}

    def get(self, name: str) -> np.ndarray:
        return self.inner.get(name.removeprefix(self.prefix))

    def close(self) -> None:
        self.inner.close()
