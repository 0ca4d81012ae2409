#!/usr/bin/env python
"""Self-distillation data for a chat M_L: prompts built offline, answered by M_L itself.

A drafter is judged on what M_L writes, so it learns best from M_L's own answers. This script
builds code and chat prompts with nothing but the Python standard library and a list of topics
in this file, splits them three ways, and lets M_L answer each one greedily through its chat
template (Hugging Face ``generate``, batched, bfloat16 by default (``--dtype``) on the CPU).

- code prompts: a stdlib function's name, signature and docstring ("Write a Python function
  ..."), or its source ("Explain what this function does", "Write tests for it");
- chat prompts: topics x request templates ("What is ...", "Give me three facts about ...").

Splits are decided by a hash of the prompt's *subject* (the function or the topic), so a
held-out prompt never shares its subject with a training prompt:

- ``train`` (80%): training data for the drafters;
- ``valid`` (10%): for choosing the M_L layer and γ;
- ``heldout`` (10%): for the reported figures and the benchmark prompts.

With ``--reps-layers``, the training split's M_L representations are kept from the generation
itself (``output_hidden_states``: every token's hidden states are computed while answering, so
no second pass over the data is needed) and written as a `tandem reps` folder ``OUT/reps``
(engine ``torch-generate``, M_L at ``--dtype``): conversations are concatenated in order into one
stream, cut into windows of ``--seq-len`` + 1 tokens; the teacher is M_L's top-k next-token
log-probabilities from the final hidden state. ``tandem train --reps OUT/reps`` reads it.

Writes ``OUT/{split}/NNNNN.txt`` (the whole conversation as M_L's tokenizer decodes it, special
tokens included, one file per prompt), ``OUT/{split}.jsonl`` (prompt, kind, subject, answer) and
``OUT/data.json`` (counts, the generation settings, tokens/s). Reruns resume: prompts already
answered are skipped.

    .venv/bin/python scripts/chat_data.py --large build/smollm2 --out build/chat --max-prompts 2000
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SPLITS = (("train", 0.8), ("valid", 0.9), ("heldout", 1.0))

TOPICS = [
    "photosynthesis", "black holes", "the French Revolution", "machine learning", "climate change",
    "the human immune system", "volcanoes", "the stock market", "renewable energy", "the Roman Empire",
    "quantum computing", "coffee", "the water cycle", "ancient Egypt", "electric cars", "sleep",
    "the printing press", "honey bees", "cryptography", "the Moon", "vaccines", "jazz music",
    "the Internet", "plate tectonics", "chess", "the Great Wall of China", "recycling", "DNA",
    "the Olympic Games", "meditation", "rainforests", "inflation", "the Renaissance", "solar panels",
    "dinosaurs", "public speaking", "gardening", "the theory of relativity", "antibiotics", "bread baking",
    "the Industrial Revolution", "time management", "octopuses", "the Silk Road", "space exploration",
    "open source software", "earthquakes", "the human brain", "marathon running", "origami",
    "the Amazon river", "democracy", "nuclear power", "learning a new language", "coral reefs",
    "the piano", "artificial intelligence", "the Cold War", "healthy eating", "wind turbines",
    "the Pyramids of Giza", "friendship", "version control with git", "glaciers", "the periodic table",
    "the Mona Lisa", "budgeting", "hurricanes", "the Beatles", "databases", "the solar system",
    "mountain climbing", "bacteria", "the Eiffel Tower", "cloud computing", "volunteering",
    "the Vikings", "tea", "electricity", "photography", "deserts", "the Wright brothers", "cybersecurity",
    "yoga", "the ocean tides", "Shakespeare", "urban planning", "penguins", "the immune response to stress",
    "3D printing", "the Aztecs", "composting", "rainbows", "linear algebra", "the Titanic",
    "remote work", "wolves", "the speed of light", "board games", "the history of writing",
    "blockchain", "bicycles", "the Sahara desert", "memory and learning", "submarines", "mushrooms",
    "the Great Barrier Reef", "procrastination", "Mars", "the metric system", "clean code",
    "sorting algorithms", "recursion", "the Python programming language", "unit testing",
    "operating systems", "compilers", "web browsers", "email etiquette", "job interviews",
    "the scientific method", "gravity", "evolution", "the Moon landing", "kindness", "forests",
    "the ancient Greeks", "airplanes", "magnets", "volcanic islands", "trains", "the human heart",
]

CHAT_TEMPLATES = [
    "What is {t}?",
    "Explain {t} in simple terms.",
    "Give me three interesting facts about {t}.",
    "Write a short paragraph about {t}.",
    "What are the pros and cons of {t}?",
    "How would you explain {t} to a child?",
    "Write a haiku about {t}.",
    "Summarize the history of {t}.",
    "What are common misconceptions about {t}?",
    "Write a short email to a friend recommending they learn about {t}.",
    "List five questions a student might ask about {t}, with short answers.",
    "Why is {t} important?",
]

CODE_TEMPLATES = [
    "Write a Python function `{name}({args})` that does the following: {doc}",
    "Explain what this Python function does:\n\n```python\n{source}\n```",
    "Write unit tests for this Python function:\n\n```python\n{source}\n```",
]


@dataclass
class Prompt:
    kind: str  # code | chat
    subject: str  # what the split is decided by
    text: str


def split_of(subject: str) -> str:
    score = int.from_bytes(hashlib.sha256(subject.encode()).digest()[:8], "big") / 2**64
    return next(name for name, upper in SPLITS if score < upper)


def stdlib_functions(limit: int) -> list[tuple[str, str, str, str, str]]:
    """``(subject, name, args, doc first line, source)`` of documented stdlib functions, in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc or node.end_lineno is None:
                continue
            first = doc.strip().splitlines()[0].strip().rstrip(".")
            source = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if len(first) < 12 or node.end_lineno - node.lineno > 24:
                continue
            args = ", ".join(a.arg for a in node.args.args)
            found.append((f"{path.stem}.{node.name}", node.name, args, first[0].lower() + first[1:], source))
            if len(found) >= limit:
                return found
    return found


def build_prompts(max_functions: int) -> list[Prompt]:
    prompts = [Prompt("chat", topic, template.format(t=topic)) for topic in TOPICS for template in CHAT_TEMPLATES]
    for subject, name, args, doc, source in stdlib_functions(max_functions):
        for template in CODE_TEMPLATES:
            prompts.append(Prompt("code", subject, template.format(name=name, args=args, doc=doc, source=source)))
    return prompts


def interleave(prompts: list[Prompt]) -> list[Prompt]:
    """Chat and code alternating (stable), so any prefix of the list has both kinds."""
    chat = [p for p in prompts if p.kind == "chat"]
    code = [p for p in prompts if p.kind == "code"]
    out: list[Prompt] = []
    for i in range(max(len(chat), len(code))):
        out += ([chat[i]] if i < len(chat) else []) + ([code[i]] if i < len(code) else [])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--large", type=Path, required=True, help="M_L: Hugging Face folder with a chat template")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    p.add_argument("--max-prompts", type=int, default=2000, help="training prompts to answer (valid and held-out "
                   "get a tenth of this each)")
    p.add_argument("--max-functions", type=int, default=600, help="stdlib functions to build code prompts from")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                   help="M_L's precision while answering (bfloat16: about 2x faster on a CPU with AVX512-BF16 "
                        "or AMX; the answers are M_L's greedy ones at that precision)")
    p.add_argument("--reps-layers", help="M_L layers to keep for the training split, comma-separated "
                   "(0 = embeddings .. L = final norm); none by default")
    p.add_argument("--seq-len", type=int, default=256, help="reps window length")
    p.add_argument("--top-k", type=int, default=64, help="teacher: M_L's k most likely next tokens")
    return p.parse_args(argv)


class RepsWriter:
    """Collects conversations (token ids + per-token M_L layers) and writes `tandem reps` shards."""

    def __init__(self, out: Path, large: Path, layers: list[int], seq_len: int, top_k: int, head: Any,
                 precision: str) -> None:
        import numpy as np

        self.np = np
        self.out, self.large, self.layers, self.seq_len, self.top_k = out, large, layers, seq_len, top_k
        self.head, self.precision = head.float(), precision
        self.tokens: list[int] = []
        self.reps: dict[int, list] = {layer: [] for layer in layers}
        self.top_ids: list = []
        self.top_logp: list = []

    def add(self, ids: list[int], hidden: dict, final: Any) -> None:
        """ids (n,); hidden[layer] (n, d) float32 tensors of those ids; final (n, d): last layer (normed)."""
        import torch

        self.tokens += ids
        for layer in self.layers:
            self.reps[layer].append(hidden[layer].to(torch.float16).numpy())
        logp = torch.log_softmax(final.float() @ self.head.T, dim=-1).topk(self.top_k, dim=-1)
        self.top_ids.append(logp.indices.to(torch.int32).numpy())
        self.top_logp.append(logp.values.to(torch.float16).numpy())

    def write(self, windows_per_shard: int = 64) -> dict:
        import hashlib

        import torch

        from tandem.train.reps import RepsSpec, shard_file, stream_sha256

        np, n = self.np, self.seq_len
        total = (len(self.tokens) - 1) // n  # windows of n inputs; the token after each is its last target
        ids = np.asarray(self.tokens, dtype=np.int32)
        reps = {layer: np.concatenate(self.reps[layer]) for layer in self.layers}
        top_ids, top_logp = np.concatenate(self.top_ids), np.concatenate(self.top_logp)
        config = self.large / "config.json"
        cfg = json.loads(config.read_text())
        self.out.mkdir(parents=True, exist_ok=True)
        windows = np.stack([ids[w * n: w * n + n + 1] for w in range(total)])
        spec = RepsSpec(
            large_config_sha256=hashlib.sha256(config.read_bytes()).hexdigest(),
            large_hidden_size=cfg["hidden_size"], large_num_layers=cfg["num_hidden_layers"],
            vocab_size=cfg["vocab_size"], layers=self.layers, seq_len=n, distil="topk", top_k=self.top_k,
            windows_per_shard=windows_per_shard, total_windows=total,
            data_sha256=stream_sha256(torch.from_numpy(windows.reshape(-1))), engine="torch-generate",
            precision=self.precision,
        )
        for shard in range(spec.num_shards):
            first, count = shard * windows_per_shard, spec.shard_windows(shard)
            rows = slice(first * n, (first + count) * n)
            np.save(shard_file(self.out, shard, "tokens"), windows[first:first + count])
            for layer in self.layers:
                np.save(shard_file(self.out, shard, f"rep-{layer}"), reps[layer][rows].reshape(count, n, -1))
            np.save(shard_file(self.out, shard, "top-ids"), top_ids[rows].reshape(count, n, -1))
            np.save(shard_file(self.out, shard, "top-logp"), top_logp[rows].reshape(count, n, -1))
        spec.complete_shards = spec.num_shards
        spec.save(self.out)
        return {"windows": total, "tokens": total * n, "layers": self.layers}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.large)
    if not tokenizer.chat_template:
        print(f"error: {args.large} has no chat template; this script needs an instruct M_L", file=sys.stderr)
        return 2
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(args.large, dtype=getattr(torch, args.dtype)).eval()
    num_layers = model.config.num_hidden_layers
    layers = sorted({int(x) for x in args.reps_layers.split(",")}) if args.reps_layers else []
    if any(not 0 <= layer <= num_layers for layer in layers):
        print(f"error: --reps-layers must lie in 0..{num_layers}", file=sys.stderr)
        return 2
    prompts = interleave(build_prompts(args.max_functions))
    limits = {"train": args.max_prompts, "valid": max(1, args.max_prompts // 10),
              "heldout": max(1, args.max_prompts // 10)}
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"large": str(args.large), "max_new_tokens": args.max_new_tokens, "decoding": "greedy",
                     "dtype": args.dtype,
                     "splits": {}}
    eos = tokenizer.eos_token_id
    for split, limit in limits.items():
        capture = bool(layers) and split == "train"
        chosen = [p for p in prompts if split_of(p.subject) == split][:limit]
        chosen.sort(key=lambda p: len(p.text))  # batches of similar length: less padding
        folder = args.out / split
        folder.mkdir(exist_ok=True)
        records_path = args.out / f"{split}.jsonl"
        if capture and records_path.exists():  # the representations are not resumable: start the split over
            records_path.unlink()
        done = records_path.read_text().splitlines() if records_path.exists() else []
        todo = chosen[len(done):]
        writer = RepsWriter(args.out / "reps", args.large, layers, args.seq_len, args.top_k,
                            model.get_output_embeddings().weight.detach(),
                            {"bfloat16": "bf16", "float32": "fp32"}[args.dtype]) if capture else None
        tokens = 0
        start = time.perf_counter()
        bar = tqdm(total=len(chosen), initial=len(done), desc=f"M_L answers ({split})", unit="prompt")
        with records_path.open("a") as records:
            for first in range(0, len(todo), args.batch_size):
                batch = todo[first:first + args.batch_size]
                texts = [tokenizer.apply_chat_template([{"role": "user", "content": p.text}],
                                                       add_generation_prompt=True, tokenize=False) for p in batch]
                enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id or eos,
                                         output_hidden_states=capture, return_dict_in_generate=True)
                seqs = out.sequences
                width = enc["input_ids"].shape[1]
                steps = seqs.shape[1] - width
                for i, prompt in enumerate(batch):
                    answer = seqs[i, width:].tolist()
                    if eos in answer:
                        answer = answer[:answer.index(eos) + 1]
                    tokens += len(answer)
                    n = len(done) + first + i
                    answer_text = tokenizer.decode(answer, skip_special_tokens=False)
                    (folder / f"{n:05d}.txt").write_text(texts[i] + answer_text)
                    records.write(json.dumps({**asdict(prompt), "answer": answer_text}) + "\n")
                    if writer is not None:
                        pad = int((enc["attention_mask"][i] == 0).sum())
                        # hidden states exist for every token fed to M_L: the prompt (step 0) and the
                        # answer tokens fed back (steps 1..); the last generated token was never fed
                        kept = min(len(answer), steps - 1)
                        ids = seqs[i, pad:width + kept].tolist()
                        hidden = {layer: torch.cat(
                            [out.hidden_states[0][layer][i, pad:]] +
                            [out.hidden_states[s][layer][i] for s in range(1, kept + 1)]) for layer in layers}
                        final = torch.cat([out.hidden_states[0][num_layers][i, pad:]] +
                                          [out.hidden_states[s][num_layers][i] for s in range(1, kept + 1)])
                        writer.add(ids, hidden, final)
                records.flush()
                del out
                bar.update(len(batch))
                bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        bar.close()
        summary["splits"][split] = {"prompts": len(chosen), "chat": sum(p.kind == "chat" for p in chosen),
                                    "code": sum(p.kind == "code" for p in chosen)}
        if todo:
            summary["splits"][split]["answer_tokens_per_second"] = tokens / (time.perf_counter() - start)
        if writer is not None:
            summary["reps"] = writer.write()
    (args.out / "data.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
