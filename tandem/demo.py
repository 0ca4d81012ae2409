"""`make demo`: Tandem on the default model (SmolLM2-135M-Instruct with its committed drafters).

Asks the instruct model a coding question through its chat template and streams the answer
in `speed` mode (greedy), then runs every mode the bundle has on the same prompt, in this one
process: `large` (M_L alone), `vanilla` (the plain drafter, when the bundle has one), `speed`
at the bundle's γ, and adaptive `vanilla` / `speed` (the router ends each draft). For each:
tokens/s (median of --repeats runs, taken round the configurations), speedup over `large`,
acceptance, and whether its tokens equal `large`'s token for token (greedy speculative
decoding is lossless).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from typing import Any

from tandem.errors import TandemError, UntrainedBlockLengthWarning
from tandem.runtime import load

QUESTION = "Write a Python function that reverses a string."


def _configs(model: Any, gamma: int) -> list[tuple[str, dict[str, Any]]]:
    """(label, generate options) of every mode the bundle has, `large` first."""
    configs: list[tuple[str, dict[str, Any]]] = [("large", {"mode": "large"})]
    modes = [m for m in ("vanilla", "speed") if m in model.modes]
    for m in modes:
        configs.append((f"{m} γ={gamma}", {"mode": m, "block_length": gamma}))
    # adaptive: drafts end where the router says, up to the γ the tandem drafter was trained at
    # (the same cap for both drafters: like with like)
    for m in modes:
        if model.has_router(m):
            configs.append((f"{m} adaptive (≤{gamma})", {"mode": m, "block_length": "auto", "max_block_length": gamma}))
    return configs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle folder (default: the default model, built on first use)")
    parser.add_argument("--question", default=QUESTION, help=f"the user message (default: {QUESTION!r})")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--block-length", type=int, default=None, help="γ (default: the bundle's)")
    parser.add_argument("--threads", type=int, default=0, help="M_L's threads (0: one per core)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (the median is shown)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.max_new_tokens < 1:
        parser.error("--repeats and --max-new-tokens must be >= 1")

    try:
        model = load(args.bundle, threads=args.threads)
        gamma = args.block_length or model.manifest.default_block_length
        print(f"bundle: {model.bundle_path}\nmodes: {', '.join(model.modes)}\n")
        mode = "speed" if "speed" in model.modes else "large"
        if model.chat_template is not None:
            prompt: str | list[int] = model.apply_chat_template([{"role": "user", "content": args.question}],
                                                                tokenize=True)
            print(f"user: {args.question}\nassistant ({mode}, greedy):")
        else:  # a bundle without a chat template: the question is completed as plain text
            prompt = args.question
            print(f"(no chat template in this bundle: completing the text, {mode}, greedy)\n{args.question}", end="")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UntrainedBlockLengthWarning)
            stream = model.stream(prompt, mode=mode, block_length=gamma if mode == "speed" else None,
                                  max_new_tokens=args.max_new_tokens)
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
            print("\n")

            # the repeats go round the configurations, so that a slow spell of the machine
            # falls on all of them alike
            configs = _configs(model, gamma)
            runs: list[list[Any]] = [[] for _ in configs]
            for _ in range(args.repeats):
                for (_, options), done in zip(configs, runs, strict=True):
                    done.append(model.generate(prompt, max_new_tokens=args.max_new_tokens, **options))
            rows = [(label, options["mode"], statistics.median(r.stats["tokens_per_second"] for r in done), done[0])
                    for (label, options), done in zip(configs, runs, strict=True)]
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    base_tps, base = rows[0][2], rows[0][3]
    width = max(len(r[0]) for r in rows)
    print(f"{'config':<{width}} {'tokens/s':>9} {'vs large':>9} {'acceptance':>11} {'same as large':>14}")
    for label, mode, tps, result in rows:
        acceptance = f"{result.stats['acceptance_rate']:.2f}" if mode != "large" else "-"
        same = "-" if mode == "large" else ("yes" if result.ids == base.ids else "NO")
        print(f"{label:<{width}} {tps:>9.1f} {tps / base_tps:>8.2f}x {acceptance:>11} {same:>14}")
    print(f"\n({len(base.ids)} tokens per run, greedy; tokens/s: median of {args.repeats} runs, "
          f"M_L threads: {args.threads or 'one per core'}; 'same as large': the generated tokens equal large's, "
          "token for token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
