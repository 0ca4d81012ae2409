"""Quantized graphs' quality against float32: ours vs ONNX Runtime GenAI on the same inputs.

For one Hugging Face folder, our bundle's `large` graph and GenAI's model builder output at
the same precision, on the same prefill calls (empty past, every row's logits):

  reference  `tandem.export.reference.Reference` in float32 (the folder's weights as stored)
  ours       `tandem.export.validate.run_graph(bundle/large.onnx, ...)`
  GenAI      its model.onnx in plain ONNX Runtime (this interpreter's): input_ids,
             attention_mask (ones) and empty past_key_values.{i}.key/value, names read from
             its genai_config.json

and reports, per system vs the reference, argmax agreement and top-5 overlap
(`tandem.export.validate.logit_quality`), the relative L2 error of the logits, the mean
KL(reference ‖ system) of the next-token distributions and, on real text, the mean next-token
negative log-likelihood of the text itself (fp32, ours, GenAI); and ours vs GenAI.

Prompts: real text (paragraphs of English prose and code, tokenized by the folder's tokenizer)
for trained models; seeded random ids for random-weight folders (`tandem.bench.random_models`,
whose word-level tokenizer has no text). Figures on random-weight models are about rounding
only: their logits are nearly flat, so argmax agreement there says little about a trained model.

    python -m tandem.bench.quality --hf build/realsize/models/smollm2-135m \\
        --bundle build/realsize/bundles/smollm2-135m-int4-KEY \\
        --genai build/realsize/genai/builds/smollm2-135m-int4-KEY --out /tmp/quality.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Real text for trained models: prose, code and a list, each well over 64 tokens.
TEXTS = [
    "The river rises in the hills to the north of the town and flows slowly through farmland before "
    "it reaches the sea. For centuries it carried timber, grain and wool to the harbour, and the town "
    "grew rich on the trade. When the railway arrived in the middle of the nineteenth century, the "
    "boats disappeared within a generation, and the old warehouses along the quay were turned into "
    "shops, flats and a small museum that tells the story of the river and the people who worked on it.",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n"
    "    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n"
    "    result = []\n"
    "    i = j = 0\n"
    "    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n"
    "            result.append(a[i])\n"
    "            i += 1\n"
    "        else:\n"
    "            result.append(b[j])\n"
    "            j += 1\n"
    "    result.extend(a[i:])\n"
    "    result.extend(b[j:])\n"
    "    return result\n",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light energy "
    "into chemical energy. Inside the chloroplasts, chlorophyll absorbs sunlight, which is used to "
    "split water molecules into oxygen, protons and electrons. The energy carried by these electrons "
    "is then used to build sugars from carbon dioxide taken from the air. The oxygen released as a "
    "by-product is what most living things on Earth breathe.",
    "To make a simple loaf of bread, mix five hundred grams of flour with a teaspoon of salt and a "
    "packet of dried yeast. Add about three hundred millilitres of warm water and stir until the "
    "dough comes together. Knead it on a floured surface for ten minutes, until it is smooth and "
    "elastic, then leave it in a warm place to rise for an hour. Shape the loaf, let it rise again, "
    "and bake it in a hot oven for thirty minutes.",
]


def log(msg: str) -> None:
    print(f"  quality: {msg}", file=sys.stderr, flush=True)


def is_random_model(folder: Path) -> bool:
    """A `tandem.bench.random_models` folder (its stamp names a shape and seed)."""
    try:
        key = json.loads((Path(folder) / ".stamp").read_text()).get("key") or {}
    except (OSError, ValueError):
        return False
    return isinstance(key, dict) and "shape" in key and "seed" in key


def text_prompts(folder: Path, count: int, tokens: int) -> list[list[int]]:
    """`count` prompts of exactly `tokens` ids: TEXTS tokenized by the folder's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    prompts = []
    for i in range(count):
        ids = tok.encode(TEXTS[i % len(TEXTS)], add_special_tokens=False).ids
        if len(ids) < tokens:
            raise ValueError(f"text {i % len(TEXTS)} has {len(ids)} tokens, fewer than {tokens}")
        prompts.append(ids[:tokens])
    return prompts


def random_prompts(vocab: int, count: int, tokens: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(x) for x in rng.integers(0, vocab, tokens)] for _ in range(count)]


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_genai(model_dir: Path, prompts: list[list[int]], threads: int = 0) -> list[dict[str, np.ndarray]]:
    """GenAI's decoder graph on each prompt with an empty past: logits `[1, t, V]` per prompt."""
    config = json.loads((Path(model_dir) / "genai_config.json").read_text())["model"]["decoder"]
    names, outputs = config["inputs"], config["outputs"]
    session = _session(Path(model_dir) / config["filename"], threads)
    inputs = {i.name: i for i in session.get_inputs()}
    layers, kv_heads, head = config["num_hidden_layers"], config["num_key_value_heads"], config["head_size"]
    results = []
    for ids in prompts:
        t = len(ids)
        feeds: dict[str, np.ndarray] = {names["input_ids"]: np.array([ids], dtype=np.int64)}
        if "attention_mask" in names:
            feeds[names["attention_mask"]] = np.ones((1, t), dtype=np.int64)
        if "position_ids" in names and names["position_ids"] in inputs:
            feeds[names["position_ids"]] = np.arange(t, dtype=np.int64)[None]
        for i in range(layers):
            for key in ("past_key_names", "past_value_names"):
                name = names[key] % i
                dtype = np.float16 if "float16" in inputs[name].type else np.float32
                feeds[name] = np.zeros((1, kv_heads, 0, head), dtype=dtype)
        missing = set(inputs) - set(feeds)
        if missing:
            raise RuntimeError(f"{model_dir}: GenAI graph inputs {sorted(missing)} are not fed")
        (logits,) = session.run([outputs["logits"]], feeds)
        results.append({"logits": logits.astype(np.float32)})
    return results


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _nll(logits: list[dict[str, np.ndarray]], prompts: list[list[int]]) -> float:
    """Mean negative log-likelihood of each prompt's next id (the text itself) under `logits`."""
    total, n = 0.0, 0
    for g, ids in zip(logits, prompts, strict=True):
        lp = _log_softmax(g["logits"][0])
        nxt = np.asarray(ids[1:])
        total -= float(lp[np.arange(len(nxt)), nxt].sum())
        n += len(nxt)
    return total / max(n, 1)


def _kl(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> float:
    """Mean over rows of KL(want ‖ got) of the next-token distributions."""
    kl, rows = 0.0, 0
    for g, w in zip(got, want, strict=True):
        lg, lw = _log_softmax(g["logits"][0]), _log_softmax(w["logits"][0])
        kl += float(np.sum(np.exp(lw) * (lw - lg)))
        rows += lg.shape[0]
    return kl / max(rows, 1)


def figures(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]],
            prompts: list[list[int]] | None) -> dict[str, float]:
    """argmax agreement, top-5 overlap, relative L2 error and KL of `got` vs `want` (+ NLL)."""
    from tandem.export.validate import compare, logit_quality

    stats = compare([{"logits": g["logits"]} for g in got], [{"logits": w["logits"]} for w in want])["logits"]
    return {**logit_quality(got, want), "rel_l2": stats["rel_l2"], "max_abs_diff": stats["max_abs_diff"],
            "kl_vs_fp32": _kl(got, want), **({"nll": _nll(got, prompts)} if prompts is not None else {})}


def compare_quality(hf_folder: str | Path, our_bundle: str | Path, genai_model_dir: str | Path | None, *,
                    cases: int = 4, tokens: int = 64, prompts: list[list[int]] | None = None,
                    text: bool | None = None, threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """Quality figures of our bundle's `large` graph and GenAI's graph vs the fp32 reference.

    `cases` prefill calls of `tokens` ids each (empty past, all rows' logits), from `prompts`
    if given, else real text (`text=True`; the default unless the folder is a random-weight
    model) or seeded random ids. `genai_model_dir` None: ours only."""
    from tandem._core import read_manifest
    from tandem.export.checkpoint import Checkpoint
    from tandem.export.feeds import CaseInputs
    from tandem.export.reference import Reference
    from tandem.export.validate import Case, case_inputs, run_graph

    hf_folder, our_bundle = Path(hf_folder), Path(our_bundle)
    manifest = read_manifest(str(our_bundle))
    spec = manifest.graphs["large"]
    if text is None:
        text = prompts is None and not is_random_model(hf_folder)
    if prompts is None:
        prompts = (text_prompts(hf_folder, cases, tokens) if text
                   else random_prompts(spec.vocab_size, cases, tokens, seed))
    if max(len(p) for p in prompts) > manifest.context_length:
        raise ValueError(f"prompts longer than the bundle's context {manifest.context_length}")
    inputs: list[CaseInputs] = []
    for i, ids in enumerate(prompts):
        case = case_inputs(spec, Case(len(ids), 0), seed=i)  # empty past, logits_from = 0
        case.ids = np.array([ids], dtype=np.int64)
        inputs.append(case)
    result: dict[str, Any] = {
        "prompts": "text" if text else "random ids", "cases": len(prompts),
        "tokens": [len(p) for p in prompts], "rows": sum(len(p) for p in prompts),
        "precision": manifest.precision, "hf_folder": str(hf_folder), "bundle": str(our_bundle),
        "genai": str(genai_model_dir) if genai_model_dir else None, "threads": threads,
    }
    start = time.monotonic()
    ckpt = Checkpoint.from_folder(hf_folder)
    try:
        want = [w["fp32"] for w in Reference(ckpt, ("fp32",), context_length=manifest.context_length)
                .run("large", inputs, [])]
    finally:
        ckpt.close()
    want = [{"logits": w["logits"]} for w in want]
    log(f"fp32 reference: {time.monotonic() - start:.1f} s")
    targets = prompts if text else None
    if text:
        result["fp32"] = {"nll": _nll(want, prompts)}
    start = time.monotonic()
    ours = [{"logits": o["logits"]} for o in run_graph(Path(spec.file), spec, inputs, threads)]
    log(f"ours ({Path(spec.file).name}): {time.monotonic() - start:.1f} s")
    result["ours"] = figures(ours, want, targets)
    if genai_model_dir:
        start = time.monotonic()
        genai = run_genai(Path(genai_model_dir), prompts, threads)
        log(f"GenAI: {time.monotonic() - start:.1f} s")
        result["genai"] = figures(genai, want, targets)
        versus = figures(genai, ours, None)
        result["ours_vs_genai"] = {"argmax_agreement": versus["argmax_agreement"],
                                   "top5_overlap": versus["top5_overlap"]}
    return result


def describe(result: dict[str, Any]) -> str:
    """A few lines for a terminal."""
    lines = [f"{result['precision']}: {result['cases']} prefill cases x {result['tokens'][0]} tokens "
             f"({result['prompts']}), vs the fp32 reference"]
    for key, label in (("ours", "ours "), ("genai", "GenAI")):
        f = result.get(key)
        if f:
            nll = f" NLL {f['nll']:.3f}" if "nll" in f else ""
            lines.append(f"  {label}: argmax {f['argmax_agreement']:.4f}  top-5 {f['top5_overlap']:.4f}  "
                         f"rel L2 {f['rel_l2']:.4f}  KL {f['kl_vs_fp32']:.4f}{nll}")
    if "nll" in (result.get("fp32") or {}):
        lines.append(f"  fp32 : NLL {result['fp32']['nll']:.3f}")
    if result.get("ours_vs_genai"):
        v = result["ours_vs_genai"]
        lines.append(f"  ours vs GenAI: argmax {v['argmax_agreement']:.4f}  top-5 {v['top5_overlap']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tandem.bench.quality", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Logit quality of a quantized bundle's large graph and of ONNX Runtime GenAI's graph at the same\n"
            "precision, both against the float32 PyTorch reference of the Hugging Face folder, on the same\n"
            "prefill calls: argmax agreement, top-5 overlap, relative L2 error, KL and (real text) the NLL of\n"
            "the text; plus ours vs GenAI argmax agreement. Runs GenAI's model.onnx in this interpreter's\n"
            "onnxruntime (no onnxruntime-genai needed)."),
        epilog=(
            "example:\n"
            "  python -m tandem.bench.quality --hf build/realsize/models/smollm2-135m \\\n"
            "      --bundle build/realsize/bundles/smollm2-135m-int4-KEY \\\n"
            "      --genai build/realsize/genai/builds/smollm2-135m-int4-KEY\n\n"
            "prompts: real text (English prose, code) unless the folder is a random-weight model "
            "(tandem.bench.random_models), then seeded random ids"),
    )
    p.add_argument("--hf", type=Path, required=True, help="the Hugging Face folder the bundle was exported from")
    p.add_argument("--bundle", type=Path, required=True, help="our bundle (its large.onnx is compared)")
    p.add_argument("--genai", type=Path, help="the GenAI builder's output folder (genai_config.json, model.onnx)")
    p.add_argument("--cases", type=int, default=4, help="prefill calls (default: 4)")
    p.add_argument("--tokens", type=int, default=64, help="ids per call (default: 64)")
    p.add_argument("--prompts", choices=("auto", "text", "random"), default="auto",
                   help="real text, random ids, or auto (text unless a random-weight folder)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both sessions (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of random prompts")
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = p.parse_args(argv)
    text = None if args.prompts == "auto" else args.prompts == "text"
    result = compare_quality(args.hf, args.bundle, args.genai, cases=args.cases, tokens=args.tokens, text=text,
                             threads=args.threads, seed=args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
