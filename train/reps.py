"""M_L's representations computed once and streamed to disk (`tandem reps`), and read back
by the trainer, which then never runs M_L.

A reps folder holds `reps.json` and shards of consecutive training windows. Shard `i` is a
set of `.npy` files (memory-mapped when read):

- `shard-{i}.tokens.npy`     int32 `[W, N+1]`: a window's N inputs and its N targets;
- `shard-{i}.rep-{l}.npy`    float16 `[W, N, d_L]`: `x^(l)` of the inputs, for each stored
  layer `l` (Hugging Face's `hidden_states` numbering: 0 = embeddings, L = after the final
  norm);
- Tandem-Distil's teacher, by `distil`:
  - `hidden`: layer L is stored, and training recomputes M_L's logits through its LM head;
  - `topk`: `shard-{i}.top-ids.npy` int32 `[W, N, k]` and `shard-{i}.top-logp.npy` float16
    `[W, N, k]`: M_L's k most likely next tokens and their log-probabilities;
  - `none`: no teacher (Tandem-CE only).

Windows are cut from the training split of `--data` in order, so the same data and settings
always give the same windows. A shard is written under a temporary name and renamed when
complete, and `reps.json` records the complete shards: an interrupted run resumes after the
last complete shard. Memory stays near one window's activations plus M_L.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from tandem.errors import ExportError, TrainingError
from tandem.export.quantize import DEFAULT_BLOCK_SIZE, check_block_size

REPS_FILE = "reps.json"
REPS_FORMAT = 1
ENGINES = ("onnxruntime", "torch")
DISTIL_TEACHERS = ("topk", "hidden", "none")
DEFAULT_TOP_K = 64


@dataclass
class RepsSpec:
    """What a reps folder holds (`reps.json`). Two runs with equal specs write equal windows."""

    large_config_sha256: str  # of M_L's config.json
    large_hidden_size: int
    large_num_layers: int
    vocab_size: int
    layers: list[int]  # stored representation layers, ascending
    seq_len: int
    distil: str  # topk | hidden | none
    top_k: int
    windows_per_shard: int
    total_windows: int
    data_sha256: str  # of the training token stream (int32 bytes)
    engine: str
    precision: str
    block_size: int = DEFAULT_BLOCK_SIZE  # int8/int4 under onnxruntime: weights per quantization block
    format_version: int = REPS_FORMAT
    complete_shards: int = 0
    tokens_per_second: float | None = None  # last run's throughput (for the README's cost figures)
    extra: dict = field(default_factory=dict)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.total_windows / self.windows_per_shard)

    def shard_windows(self, shard: int) -> int:
        return min(self.windows_per_shard, self.total_windows - shard * self.windows_per_shard)

    def save(self, folder: Path) -> None:
        tmp = folder / (REPS_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(folder / REPS_FILE)

    @classmethod
    def load(cls, folder: str | Path) -> RepsSpec:
        path = Path(folder) / REPS_FILE
        if not path.is_file():
            raise TrainingError(f"{folder} is not a reps folder (no {REPS_FILE}); write one with `tandem reps`")
        try:
            values = json.loads(path.read_text())
            spec = cls(**values)
        except (ValueError, TypeError) as exc:
            raise TrainingError(f"{path} is damaged ({exc}); delete the folder and run `tandem reps` again") from exc
        if spec.format_version != REPS_FORMAT:
            raise TrainingError(f"{path} has format {spec.format_version}; this tandem reads format {REPS_FORMAT}. "
                                "Run `tandem reps` again")
        return spec

    def same_run(self, other: RepsSpec) -> list[str]:
        """Fields that differ from `other` in what the windows hold (not progress)."""
        skip = {"complete_shards", "tokens_per_second", "extra"}
        mine, theirs = asdict(self), asdict(other)
        return sorted(k for k in mine if k not in skip and mine[k] != theirs[k])


def shard_file(folder: Path, shard: int, kind: str) -> Path:
    return folder / f"shard-{shard:05d}.{kind}.npy"


def stream_sha256(stream: Tensor) -> str:
    return hashlib.sha256(stream.to(torch.int32).numpy().tobytes()).hexdigest()


# --------------------------------------------------------------------------- engines


class TorchEngine:
    """M_L in PyTorch (Hugging Face `output_hidden_states`): float32 weights, under bf16
    autocast on CUDA (precision "bf16"), plain float32 on the CPU ("fp32")."""

    name = "torch"

    def __init__(self, folder: Path, threads: int = 0, device: torch.device | str = "cpu") -> None:
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval().to(self.device)
        self.precision = torch_precision(self.device)

    @torch.no_grad()
    def __call__(self, ids: np.ndarray, layers: list[int], want_logits: bool) -> tuple[list[np.ndarray], Tensor | None]:
        """ids `[1, N]` -> representations `[N, d]` per layer (float32), logits `[N, V]` or None."""
        from tandem.train.model import empty_past, large_step

        cuda = self.device.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            logits, _, reps = large_step(self.model, torch.from_numpy(ids).to(self.device),
                                         empty_past(self.model.config, device=self.device), layers)
        return [r[0].float().cpu().numpy() for r in reps], logits[0].float().cpu() if want_logits else None

    def close(self) -> None:
        del self.model


class OrtEngine:
    """M_L's exported block-mode graph in ONNX Runtime, at any export precision: a graph with
    the wanted representation outputs is built from the Hugging Face folder into `work`."""

    name = "onnxruntime"

    def __init__(self, folder: Path, work: Path, layers: list[int], precision: str, seq_len: int,
                 threads: int = 0, progress: bool = True, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        import onnxruntime as ort

        from tandem.export.builder import BuildOptions, build_graph
        from tandem.export.checkpoint import Checkpoint

        self.precision = precision
        ckpt = Checkpoint.from_folder(folder, "M_L")
        try:
            work.mkdir(parents=True, exist_ok=True)
            bar = tqdm(total=ckpt.config.num_hidden_layers, desc=f"build M_L graph ({precision})", disable=not progress)
            self.spec, _ = build_graph(ckpt, "large", work / "large.onnx",
                                       BuildOptions(precision=precision, context_length=seq_len + 1,
                                                    block_size=block_size),
                                       rep_layers=layers, on_layer=lambda: bar.update(1))
            bar.close()
        finally:
            ckpt.close()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(work / "large.onnx"), options, providers=["CPUExecutionProvider"])

    def __call__(self, ids: np.ndarray, layers: list[int], want_logits: bool) -> tuple[list[np.ndarray], Tensor | None]:
        from tandem.export.feeds import CaseInputs, graph_feeds

        spec = self.spec
        kv = (1, spec.num_kv_heads, 0, spec.head_dim)
        empty = np.zeros(kv, np.float32)
        inputs = CaseInputs(ids.astype(np.int64), [], [(empty, empty)] * spec.num_layers,
                            logits_from=0 if want_logits else ids.shape[1] - 1)
        names = [spec.reps[spec.rep_layers.index(layer)] for layer in layers] + ([spec.logits] if want_logits else [])
        outputs = self.session.run(names, graph_feeds(spec, inputs))
        reps = [o[0] for o in outputs[: len(layers)]]
        return reps, torch.from_numpy(outputs[-1][0]) if want_logits else None

    def close(self) -> None:
        del self.session


def torch_precision(device: torch.device | str) -> str:
    """What the torch engine computes in on `device`: bf16 autocast on CUDA, float32 elsewhere."""
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


# --------------------------------------------------------------------------- precompute


def stored_layers(layers: list[int], num_layers: int, distil: str) -> list[int]:
    """The layers a reps folder stores: the drafter's, plus L (the final hidden) for `hidden`."""
    if any(not 0 <= layer <= num_layers for layer in layers):
        raise TrainingError(f"representation layers {layers} must lie in 0..{num_layers} (0 = embeddings)")
    return sorted(set(layers) | ({num_layers} if distil == "hidden" else set()))


def precompute(large_folder: str | Path, stream: Tensor, layers: list[int], out: str | Path, *,
               seq_len: int = 256, max_tokens: int | None = None, engine: str = "onnxruntime",
               precision: str = "int4", distil: str = "topk", top_k: int = DEFAULT_TOP_K,
               block_size: int = DEFAULT_BLOCK_SIZE,
               shard_tokens: int = 16_384, threads: int = 0, device: torch.device | str = "cpu",
               progress: bool = True) -> RepsSpec:
    """Run M_L once over windows of `stream` and write the reps folder `out` (resumable)."""
    from transformers import AutoConfig

    large_folder, out = Path(large_folder), Path(out)
    if engine not in ENGINES:
        raise TrainingError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if distil not in DISTIL_TEACHERS:
        raise TrainingError(f"unknown teacher {distil!r}; use one of {', '.join(DISTIL_TEACHERS)}")
    if engine == "onnxruntime" and precision not in ("fp32", "fp16", "int8", "int4"):
        raise TrainingError(f"--engine onnxruntime builds M_L at fp32, fp16, int8 or int4, not {precision!r}")
    if engine == "torch" and precision != torch_precision(device):
        raise TrainingError(f"--engine torch runs M_L at {torch_precision(device)} on {torch.device(device).type}; "
                            f"pass --precision {torch_precision(device)} or --engine onnxruntime")
    try:  # only ONNX Runtime's int8/int4 graphs have blocks (the torch engine runs fp32 / bf16)
        check_block_size(block_size, precision)
    except ExportError as exc:
        raise TrainingError(str(exc)) from None
    if seq_len < 2 or shard_tokens < seq_len:
        raise TrainingError(f"--seq-len {seq_len} must be ≥ 2 and --shard-tokens {shard_tokens} ≥ --seq-len")
    config_path = large_folder / "config.json"
    if not config_path.is_file():
        raise TrainingError(f"{large_folder} is not a Hugging Face model folder (no config.json)")
    config = AutoConfig.from_pretrained(large_folder)
    available = stream.numel() // (seq_len + 1)
    total = available if max_tokens is None else min(available, math.ceil(max_tokens / seq_len))
    if total < 1:
        raise TrainingError(f"{stream.numel()} training tokens cannot fill one window of {seq_len + 1}; "
                            "add data or lower --seq-len")
    spec = RepsSpec(
        large_config_sha256=hashlib.sha256(config_path.read_bytes()).hexdigest(),
        large_hidden_size=config.hidden_size, large_num_layers=config.num_hidden_layers,
        vocab_size=config.vocab_size, layers=stored_layers(layers, config.num_hidden_layers, distil),
        seq_len=seq_len, distil=distil, top_k=top_k if distil == "topk" else 0,
        windows_per_shard=max(1, shard_tokens // seq_len), total_windows=total,
        data_sha256=stream_sha256(stream[: total * (seq_len + 1)]), engine=engine, precision=precision,
        block_size=block_size,
    )
    if out.exists() and any(out.iterdir()):
        if not (out / REPS_FILE).is_file():
            raise TrainingError(f"{out} exists and is not a reps folder; pass an empty or new --out")
        old = RepsSpec.load(out)
        changed = spec.same_run(old)
        if changed:
            raise TrainingError(f"{out} holds representations of another run ({', '.join(changed)} differ); "
                                "pass another --out, or delete it to start over")
        spec.complete_shards = old.complete_shards
        spec.tokens_per_second, spec.extra = old.tokens_per_second, old.extra  # kept unless this run computes
    out.mkdir(parents=True, exist_ok=True)
    spec.save(out)
    if spec.complete_shards == spec.num_shards:
        return spec

    windows = stream[: total * (seq_len + 1)].view(total, seq_len + 1).to(torch.int32).numpy()
    done = sum(spec.shard_windows(s) for s in range(spec.complete_shards))
    work = Path(tempfile.mkdtemp(prefix=".engine-", dir=out))
    try:
        rss_before = _rss_mb()
        if engine == "torch":
            runner: TorchEngine | OrtEngine = TorchEngine(large_folder, threads, device)
        else:
            runner = OrtEngine(large_folder, work, spec.layers, precision, seq_len, threads, progress, block_size)
        spec.extra = {**spec.extra, "rss_before_model_mb": rss_before, "rss_with_model_mb": _rss_mb()}
        bar = tqdm(total=total * seq_len, initial=done * seq_len, unit="tok", unit_scale=True, desc="M_L reps",
                   disable=not progress)
        computed, started = 0, time.perf_counter()
        for shard in range(spec.complete_shards, spec.num_shards):
            _write_shard(out, spec, shard, windows, runner, bar)
            spec.complete_shards = shard + 1
            computed += spec.shard_windows(shard) * seq_len
            spec.tokens_per_second = computed / max(1e-9, time.perf_counter() - started)
            spec.extra["peak_rss_mb"] = _peak_rss_mb()
            spec.save(out)
        bar.close()
        runner.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return spec


def _rss_mb() -> float:
    """This process's resident memory now, in MB (Linux; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def _write_shard(out: Path, spec: RepsSpec, shard: int, windows: np.ndarray, runner: TorchEngine | OrtEngine,
                 bar: tqdm) -> None:
    """Compute and write shard `shard` under temporary names, then rename its files into place."""
    count, n, d = spec.shard_windows(shard), spec.seq_len, spec.large_hidden_size
    first = shard * spec.windows_per_shard
    shapes: dict[str, tuple[tuple[int, ...], type]] = {"tokens": ((count, n + 1), np.int32)}
    shapes.update({f"rep-{layer}": ((count, n, d), np.float16) for layer in spec.layers})
    if spec.distil == "topk":
        shapes["top-ids"] = ((count, n, spec.top_k), np.int32)
        shapes["top-logp"] = ((count, n, spec.top_k), np.float16)
    partial = {kind: shard_file(out, shard, kind).with_suffix(".partial") for kind in shapes}
    arrays = {kind: np.lib.format.open_memmap(partial[kind], mode="w+", dtype=dt, shape=shape)
              for kind, (shape, dt) in shapes.items()}
    for w in range(count):
        ids = windows[first + w]
        arrays["tokens"][w] = ids
        reps, logits = runner(ids[None, :n].astype(np.int64), spec.layers, spec.distil == "topk")
        for layer, rep in zip(spec.layers, reps, strict=True):
            arrays[f"rep-{layer}"][w] = rep.astype(np.float16)
        if logits is not None:
            top = torch.log_softmax(logits.float(), dim=-1).topk(spec.top_k, dim=-1)
            arrays["top-ids"][w] = top.indices.to(torch.int32).numpy()
            arrays["top-logp"][w] = top.values.to(torch.float16).numpy()
        bar.update(n)
    for kind, array in arrays.items():
        array.flush()
        del array
        os.replace(partial[kind], shard_file(out, shard, kind))
    arrays.clear()


# --------------------------------------------------------------------------- reading


@dataclass
class RepsBatch:
    """Training windows read from shards: tokens `(B, N+1)`, representations `(B, N, d_L)`
    per requested layer (float32), and the teacher's data when stored."""

    windows: Tensor
    reps: list[Tensor]
    hidden: Tensor | None = None  # (B, N, d_L): x^(L), for logits through M_L's head
    top_ids: Tensor | None = None  # (B, N, k)
    top_logp: Tensor | None = None  # (B, N, k)


class RepsReader:
    """The complete shards of a reps folder, memory-mapped; random windows drawn with a torch generator."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.spec = RepsSpec.load(self.folder)
        if self.spec.complete_shards == 0:
            raise TrainingError(f"{self.folder} has no complete shard yet; let `tandem reps` run longer")
        if self.spec.complete_shards < self.spec.num_shards and os.environ.get("RANK", "0") == "0":
            print(f"warning: {self.folder} holds {self.spec.complete_shards} of {self.spec.num_shards} shards; "
                  "training on those (rerun `tandem reps` to finish)")
        self.shards: list[dict[str, np.ndarray]] = []
        for shard in range(self.spec.complete_shards):
            kinds = ["tokens", *(f"rep-{layer}" for layer in self.spec.layers)]
            kinds += ["top-ids", "top-logp"] if self.spec.distil == "topk" else []
            arrays = {}
            for kind in kinds:
                path = shard_file(self.folder, shard, kind)
                try:
                    arrays[kind] = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise TrainingError(f"cannot read {path} ({exc}); rerun `tandem reps` into a new folder") from exc
                if arrays[kind].shape[0] != self.spec.shard_windows(shard):
                    raise TrainingError(f"{path} holds {arrays[kind].shape[0]} windows, reps.json says "
                                        f"{self.spec.shard_windows(shard)}; the folder is damaged")
            self.shards.append(arrays)
        self.num_windows = sum(self.spec.shard_windows(s) for s in range(self.spec.complete_shards))

    @property
    def num_tokens(self) -> int:
        return self.num_windows * self.spec.seq_len

    def check_layers(self, layers: list[int]) -> None:
        missing = sorted(set(layers) - set(self.spec.layers))
        if missing:
            raise TrainingError(f"{self.folder} stores M_L layers {self.spec.layers}, not {missing}; rerun "
                                f"`tandem reps --rep-layers {','.join(map(str, layers))}` or change --layer-assignment")

    def tokens(self) -> Iterator[np.ndarray]:
        """Every window's tokens `[N+1]`, in order."""
        for arrays in self.shards:
            yield from arrays["tokens"]

    def sample(self, batch: int, generator: torch.Generator, layers: list[int], seq_len: int | None = None,
               teacher: bool = False, rows: slice | None = None) -> RepsBatch:
        """`batch` random windows (the first `seq_len + 1` tokens of each; all by default); with
        `rows`, only those rows of the batch drawn are read (one process's share)."""
        n = self.spec.seq_len if seq_len is None else seq_len
        if n > self.spec.seq_len:
            raise TrainingError(f"--seq-len {n} is longer than the stored windows ({self.spec.seq_len}); "
                                "lower it or rerun `tandem reps` with a longer --seq-len")
        picks = torch.randint(self.num_windows, (batch,), generator=generator).tolist()
        rows = [self._locate(i) for i in (picks if rows is None else picks[rows])]

        def stack(kind: str, width: int, dtype: torch.dtype) -> Tensor:
            return torch.stack([torch.from_numpy(np.array(self.shards[s][kind][w, :width])) for s, w in rows]).to(dtype)

        out = RepsBatch(stack("tokens", n + 1, torch.long), [stack(f"rep-{layer}", n, torch.float32) for layer in layers])
        if teacher and self.spec.distil == "hidden":
            out.hidden = stack(f"rep-{self.spec.large_num_layers}", n, torch.float32)
        elif teacher and self.spec.distil == "topk":
            out.top_ids = stack("top-ids", n, torch.long)
            out.top_logp = stack("top-logp", n, torch.float32)
        elif teacher:
            raise TrainingError(f"{self.folder} stores no teacher for Tandem-Distil (written with --distil none); "
                                "train with --loss ce or rerun `tandem reps --distil topk`")
        return out

    def _locate(self, index: int) -> tuple[int, int]:
        per = self.spec.windows_per_shard
        return index // per, index % per
