"""Hugging Face model folders with real configurations and random weights.

Decoding speed does not depend on what the weights are, so a folder with Qwen2-0.5B's
configuration and random bfloat16 weights costs what Qwen2-0.5B costs. Each folder has:

    config.json                        transformers' Qwen2Config / LlamaConfig (architectures set)
    generation_config.json             bos / eos of the real model, greedy
    model.safetensors                  bfloat16, the exact Hugging Face tensor names, or, above
    model-0000i-of-0000n.safetensors   SHARD_BYTES, shards + model.safetensors.index.json
    tokenizer.json, tokenizer_config.json
                                       a BPE tokenizer with one token per id (`<t17>`), no merges:
                                       ONNX Runtime GenAI's model builder saves the folder's
                                       tokenizer and fails without one; nothing here uses text

Weights are written tensor by tensor (a streaming safetensors writer), never a whole model
in memory: normal(0, 0.02) for matrices and biases, 1.0 for norms. Each tensor's values
depend only on the seed and its name. A `.stamp` file records what was built; a folder whose
stamp matches is reused.

    python -m tandem.bench.random_models qwen2-tiny build/realsize/qwen2-tiny/hf
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SHARD_BYTES = 2 * 1024**3  # above this total, HF-style shards of at most this size
STAMP_VERSION = 2
_CHUNK = 1 << 24  # random values drawn per call (fp32 scratch: 64 MiB)


@dataclass(frozen=True)
class Shape:
    """A model configuration: the fields of a Hugging Face config that set the cost."""

    name: str
    model_type: str  # "qwen2" | "llama"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_id: int
    tie_word_embeddings: bool = True
    rope_scaling: dict[str, Any] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def attention_bias(self) -> bool:
        return self.model_type == "qwen2"  # Qwen2 has q/k/v biases, Llama none

    def parameters(self) -> int:
        return sum(_numel(s) for _, s, _ in tensor_specs(self))


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("qwen2-tiny", "qwen2", hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
          num_key_value_heads=1, head_dim=64, intermediate_size=512, vocab_size=151936, rope_theta=1e6,
          rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643,
          note="smoke tests: Qwen2's vocabulary, two small layers"),
    Shape("qwen2-0.5b", "qwen2", hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
          num_key_value_heads=2, head_dim=64, intermediate_size=4864, vocab_size=151936, rope_theta=1e6,
          rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643,
          note="Qwen/Qwen2-0.5B"),
    Shape("qwen2-1.5b", "qwen2", hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
          num_key_value_heads=2, head_dim=128, intermediate_size=8960, vocab_size=151936, rope_theta=1e6,
          rms_norm_eps=1e-6, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151643,
          note="Qwen/Qwen2-1.5B"),
    Shape("llama-3.2-1b", "llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
          num_key_value_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256, rope_theta=500000.0,
          rms_norm_eps=1e-5, max_position_embeddings=131072, bos_token_id=128000, eos_token_id=128001,
          rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192},
          note="meta-llama/Llama-3.2-1B"),
)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def tensor_specs(shape: Shape) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init) of every tensor in Hugging Face order; init "normal" or "ones"."""
    h, dh = shape.hidden_size, shape.head_dim
    q, kv, ff = shape.num_attention_heads * dh, shape.num_key_value_heads * dh, shape.intermediate_size
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (shape.vocab_size, h), "normal")]
    for i in range(shape.num_hidden_layers):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", (h,), "ones"))
        for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
            out.append((p + f"self_attn.{proj}.weight", (rows, h), "normal"))
            if shape.attention_bias:
                out.append((p + f"self_attn.{proj}.bias", (rows,), "normal"))
        out.append((p + "self_attn.o_proj.weight", (h, q), "normal"))
        out.append((p + "post_attention_layernorm.weight", (h,), "ones"))
        out.append((p + "mlp.gate_proj.weight", (ff, h), "normal"))
        out.append((p + "mlp.up_proj.weight", (ff, h), "normal"))
        out.append((p + "mlp.down_proj.weight", (h, ff), "normal"))
    out.append(("model.norm.weight", (h,), "ones"))
    if not shape.tie_word_embeddings:
        out.append(("lm_head.weight", (shape.vocab_size, h), "normal"))
    return out


def hf_config(shape: Shape) -> Any:
    """The transformers config object of `shape`."""
    from transformers import LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        hidden_size=shape.hidden_size, num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads, num_key_value_heads=shape.num_key_value_heads,
        intermediate_size=shape.intermediate_size, vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings, rms_norm_eps=shape.rms_norm_eps,
        tie_word_embeddings=shape.tie_word_embeddings, bos_token_id=shape.bos_token_id,
        eos_token_id=shape.eos_token_id, hidden_act="silu", rope_theta=shape.rope_theta, **shape.extra,
    )
    if shape.model_type == "qwen2":
        if shape.head_dim * shape.num_attention_heads != shape.hidden_size:
            raise ValueError(f"{shape.name}: Qwen2 derives head_dim = hidden_size / heads")
        config = Qwen2Config(**common, rope_scaling=shape.rope_scaling, use_sliding_window=False)
        config.architectures = ["Qwen2ForCausalLM"]
    elif shape.model_type == "llama":
        config = LlamaConfig(**common, head_dim=shape.head_dim, rope_scaling=shape.rope_scaling,
                             attention_bias=False, mlp_bias=False)
        config.architectures = ["LlamaForCausalLM"]
    else:
        raise ValueError(f"unknown model_type {shape.model_type!r}")
    config.dtype = "bfloat16"
    return config


def _random_bf16(name: str, dims: tuple[int, ...], init: str, seed: int) -> Any:
    """The tensor `name` as torch bfloat16, drawn in chunks (fp32 scratch stays small)."""
    import torch

    n = _numel(dims)
    if init == "ones":
        return torch.ones(dims, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
    out = torch.empty(n, dtype=torch.bfloat16)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        out[start:stop] = torch.randn(stop - start, generator=gen) * 0.02
    return out.view(dims)


def _plan_shards(specs: list[tuple[str, tuple[int, ...], str]], shard_bytes: int) -> list[list[int]]:
    """Indices of `specs` per file: one file, or greedy HF-style shards of <= shard_bytes."""
    sizes = [_numel(s) * 2 for _, s, _ in specs]
    if sum(sizes) <= shard_bytes:
        return [list(range(len(specs)))]
    shards: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        if shards[-1] and used + size > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    return shards


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]],
                      make: Callable[[int], Any], progress: Callable[[str], None] | None = None) -> None:
    """Stream bfloat16 tensors into one safetensors file: header first, then each tensor as
    `make(i)` returns it (only one tensor in memory at a time)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dims in tensors:
        size = _numel(dims) * 2
        header[name] = {"dtype": "BF16", "shape": list(dims), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    import torch

    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for i, (name, _) in enumerate(tensors):
            t = make(i)
            t.contiguous().view(torch.int16).numpy().tofile(f)
            if progress:
                progress(f"{path.name}: {name} ({i + 1}/{len(tensors)})")
    tmp.replace(path)


def _tokenizer_files(folder: Path, shape: Shape) -> None:
    """A BPE tokenizer with one token `<tI>` per id and no merges (no text meaning): a BPE, as the
    runtime's tokenizer runs BPE models only."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"<t{i}>": i for i in range(shape.vocab_size)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<t0>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": shape.max_position_embeddings,
                           "eos_token": f"<t{shape.eos_token_id}>", "unk_token": "<t0>", "clean_up_tokenization_spaces": False}
    if shape.bos_token_id is not None:
        cfg["bos_token"] = f"<t{shape.bos_token_id}>"
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _stamp(shape: Shape, seed: int) -> dict[str, Any]:
    return {"version": STAMP_VERSION, "shape": asdict(shape), "seed": seed, "dtype": "bfloat16"}


def is_built(folder: Path, shape: Shape, seed: int = 0) -> bool:
    stamp = folder / ".stamp"
    try:
        return json.loads(stamp.read_text()).get("key") == _stamp(shape, seed)
    except (OSError, ValueError):
        return False


def make_random_model(shape: Shape | str, folder: Path, *, seed: int = 0, force: bool = False,
                      shard_bytes: int = SHARD_BYTES, log: Callable[[str], None] | None = None) -> Path:
    """Write a Hugging Face folder of `shape` with random weights into `folder` (reused when
    its stamp matches, unless `force`). Returns `folder`."""
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    folder = Path(folder)
    if not force and is_built(folder, shape, seed):
        if log:
            log(f"{shape.name}: reusing {folder}")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".stamp").unlink(missing_ok=True)
    for old in folder.glob("model*.safetensors*"):
        old.unlink()
    start = time.monotonic()
    hf_config(shape).save_pretrained(folder)
    gen = {"bos_token_id": shape.bos_token_id, "eos_token_id": shape.eos_token_id, "do_sample": False}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    _tokenizer_files(folder, shape)

    specs = tensor_specs(shape)
    shards = _plan_shards(specs, shard_bytes)
    total_bytes = sum(_numel(s) * 2 for _, s, _ in specs)
    if log:
        log(f"{shape.name}: {shape.parameters() / 1e6:.0f} M parameters, {total_bytes / 2**30:.2f} GiB bf16 "
            f"in {len(shards)} file(s) -> {folder}")
    weight_map: dict[str, str] = {}
    for k, idx in enumerate(shards):
        fname = "model.safetensors" if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        chosen = [specs[i] for i in idx]
        write_safetensors(folder / fname, [(n, s) for n, s, _ in chosen],
                          lambda i, chosen=chosen: _random_bf16(chosen[i][0], chosen[i][1], chosen[i][2], seed),
                          progress=log)
        weight_map.update({n: fname for n, _, _ in chosen})
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / ".stamp").write_text(json.dumps({"key": _stamp(shape, seed),
                                               "seconds": round(time.monotonic() - start, 1)}, indent=1))
    if log:
        log(f"{shape.name}: written in {time.monotonic() - start:.0f} s")
    return folder


def iter_shapes(names: list[str]) -> Iterator[Shape]:
    for name in names:
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}: choose from {', '.join(SHAPES)}")
        yield SHAPES[name]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tandem.bench.random_models",
        description="Write a Hugging Face folder with a real model's configuration and random bfloat16 weights.",
        epilog="shapes: " + "; ".join(f"{s.name} ({s.note}, {s.parameters() / 1e6:.0f} M)" for s in SHAPES.values()))
    p.add_argument("shape", choices=list(SHAPES))
    p.add_argument("folder", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rewrite even when the folder's stamp matches")
    args = p.parse_args(argv)
    make_random_model(args.shape, args.folder, seed=args.seed, force=args.force,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
