"""`make demo`: Tandem on the embedded default pair.

Generates from a code prompt in `speed` mode (streamed), then compares `large` and `speed`
on the same prompt: tokens/s (median of 3 runs), acceptance and speedup.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from tandem.errors import TandemError
from tandem.runtime import load

PROMPT = (
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n"
    "    def __repr__(self):\n        return "
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle folder (default: the embedded default pair)")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--block-length", type=int, default=None, help="γ (default: the bundle's)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    try:
        model = load(args.bundle, threads=args.threads)
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"bundle: {model.bundle_path}  modes: {', '.join(model.modes)}\n")
    mode = "speed" if "speed" in model.modes else "large"
    print(f"--- {mode} mode ---")
    sys.stdout.write(args.prompt)
    stream = model.stream(args.prompt, mode=mode, block_length=args.block_length,
                          max_new_tokens=args.max_new_tokens)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    print("\n")

    rows = []
    for m in [m for m in ("large", "vanilla", "speed") if m in model.modes]:
        runs = [model.generate(args.prompt, mode=m, block_length=args.block_length,
                               max_new_tokens=args.max_new_tokens, ignore_eos=True)
                for _ in range(args.repeats)]
        tps = statistics.median(r.stats["tokens_per_second"] for r in runs)
        rows.append((m, tps, runs[0].stats))
    base = rows[0][1]
    print(f"{'mode':<8} {'tokens/s':>9} {'speedup':>8} {'acceptance':>11} {'M_L calls':>10} {'M_S calls':>10}")
    for m, tps, s in rows:
        acc = f"{s['acceptance_rate']:.2f}" if m != "large" else "-"
        print(f"{m:<8} {tps:>9.1f} {tps / base:>7.2f}x {acc:>11} {s['large_calls']:>10} {s['drafter_calls']:>10}")
    print(f"\n(median of {args.repeats} runs of {args.max_new_tokens} tokens, greedy, "
          f"{args.threads or 'all'} threads; speed and vanilla are lossless: same text as large)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
