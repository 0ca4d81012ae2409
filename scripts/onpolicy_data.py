#!/usr/bin/env python
"""More training text for the drafters, answered by the bundle's own M_L through the runtime.

`scripts/chat_data.py` answers prompts with M_L in PyTorch (bfloat16): those answers are not
what the bundle serves. A greedy drafter is accepted when it equals the *served* M_L's argmax
(int4 MatMulNBits with int8 compute), on text that M_L itself wrote. This script answers
training-split prompts with exactly that model: the bundle's `large` mode, greedy, through its
chat template. Its output folder reads like chat_data.py's (``OUT/train/NNNNN.txt`` holding the
whole conversation, ``OUT/train.jsonl``, ``OUT/data.json``), so `tandem reps --data` takes both.

Prompts come from chat_data.py's pool (same subjects, same train / valid / held-out split by
subject hash), training split only; ``--kind`` picks code or chat prompts and ``--skip`` the
ones an earlier data folder already answered. Reruns resume.

    .venv/bin/python scripts/onpolicy_data.py --out build/chat-code --kind code --skip build/chat \\
        --max-prompts 800
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import chat_data  # noqa: E402  (a sibling script: the prompt pool and the split)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="the bundle whose M_L answers (default: the default model)")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed when it exists)")
    p.add_argument("--kind", choices=("code", "chat", "all"), default="all", help="which training prompts")
    p.add_argument("--skip", type=Path, nargs="*", default=[],
                   help="data folders (chat_data.py or this script) whose training prompts are not answered again")
    p.add_argument("--max-prompts", type=int, default=800)
    p.add_argument("--max-functions", type=int, default=600, help="stdlib functions to build code prompts from")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    import tandem

    skip: set[str] = set()
    for folder in args.skip:
        records = folder / "train.jsonl"
        if not records.is_file():
            print(f"error: {records} does not exist (--skip takes data folders)", file=sys.stderr)
            return 2
        skip |= {json.loads(line)["text"] for line in records.read_text().splitlines()}
    pool = [p for p in chat_data.interleave(chat_data.build_prompts(args.max_functions))
            if chat_data.split_of(p.subject) == "train" and args.kind in ("all", p.kind) and p.text not in skip]
    chosen = pool[:args.max_prompts]
    model = tandem.load(args.bundle, threads=args.threads)
    folder = args.out / "train"
    folder.mkdir(parents=True, exist_ok=True)
    records_path = args.out / "train.jsonl"
    done = records_path.read_text().splitlines() if records_path.exists() else []
    if any(json.loads(line)["text"] != p.text for line, p in zip(done, chosen, strict=False)):
        print(f"error: {records_path} was written for other prompts; use a new --out", file=sys.stderr)
        return 2
    tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(chosen), initial=len(done), desc="M_L answers (train)", unit="prompt")
    with records_path.open("a") as records:
        for n in range(len(done), len(chosen)):
            prompt = chosen[n]
            ids = model.apply_chat_template([{"role": "user", "content": prompt.text}], tokenize=True)
            result = model.generate(ids, mode="large", max_new_tokens=args.max_new_tokens)
            text = model.tokenizer.decode(ids + result.ids, skip_special_tokens=False)
            answer = model.tokenizer.decode(result.ids, skip_special_tokens=False)
            (folder / f"{n:05d}.txt").write_text(text)
            records.write(json.dumps({**asdict(prompt), "answer": answer}) + "\n")
            records.flush()
            tokens += len(result.ids)
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    rows = [json.loads(line) for line in records_path.read_text().splitlines()]
    summary = {"large": str(model.bundle_path), "engine": "tandem runtime (mode large)", "decoding": "greedy",
               "max_new_tokens": args.max_new_tokens, "kind": args.kind,
               "splits": {"train": {"prompts": len(rows), "chat": sum(r["kind"] == "chat" for r in rows),
                                    "code": sum(r["kind"] == "code" for r in rows)}}}
    (args.out / "data.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
