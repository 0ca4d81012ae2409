"""The `tandem` command line.

    tandem generate [BUNDLE] --prompt "def fib(n):" --mode speed --block-length 4 --stats
    tandem generate BUNDLE --chat --system "Be brief." --prompt "What is a tandem?"
    tandem export --large M_L/ --tandem M_S/ [--plain PLAIN/] --out bundle/
    tandem train ...        (PyTorch side; see `tandem train --help`)
    tandem reps ...         (M_L's representations, once, for training)
    tandem eval ...
    tandem serve [BUNDLE]   (OpenAI-compatible HTTP server; see `tandem serve --help`)
    tandem bench [BUNDLE]   (benchmarks; see `tandem bench --help`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tandem.errors import TandemError
from tandem.manifest import DEFAULT_BLOCK_LENGTH, DEFAULT_MAX_BLOCK_LENGTH, DEFAULT_ROUTER_THRESHOLD

TORCH_COMMANDS = ("train", "reps", "eval", "export")


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text with the C++ loop",
                       description="Generate text from a bundle with the compiled loop.")
    p.add_argument("bundle", nargs="?", type=Path,
                   help="bundle folder (default: the default model, built locally on first use)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--ids", help="prompt as comma-separated token ids")
    p.add_argument("--chat", action="store_true",
                   help="treat --prompt as one user message and format it with the bundle's chat template")
    p.add_argument("--system", metavar="TEXT", help="with --chat: a system message before the user's")
    p.add_argument("--mode", choices=("large", "tandem", "speed", "vanilla"),
                   help="decoding mode (default: speed when the bundle has a tandem drafter)")
    p.add_argument("--block-length", default=None,
                   help="γ, or 'auto' for the router's adaptive block length (default: bundle's)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: one per core)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--stats", action="store_true", help="print generation statistics to stderr")
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming text")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from tandem.runtime import load

    if args.chat and args.prompt is None:
        raise SystemExit("--chat formats --prompt as a user message: pass --prompt TEXT, not --ids")
    if args.system is not None and not args.chat:
        raise SystemExit("--system needs --chat (it is a chat message)")
    model = load(args.bundle, device=args.device, threads=args.threads)
    block = args.block_length
    if block is not None and block != "auto":
        try:
            block = int(block)
        except ValueError:
            raise SystemExit(f"--block-length must be an integer or 'auto', got {block!r}") from None
    if args.ids is not None:
        try:
            prompt: str | list[int] = [int(x) for x in args.ids.split(",") if x.strip()]
        except ValueError:
            raise SystemExit("--ids must be comma-separated integers") from None
    elif args.chat:
        messages = [{"role": "system", "content": args.system}] if args.system is not None else []
        messages.append({"role": "user", "content": args.prompt})
        prompt = model.apply_chat_template(messages, tokenize=True)
    else:
        prompt = args.prompt
    stream = model.stream(
        prompt, mode=args.mode, block_length=block, max_new_tokens=args.max_new_tokens,
        do_sample=args.sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos,
    )
    for piece in stream:
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    result = stream.result
    assert result is not None
    if args.json:
        print(json.dumps({"text": result.text, "ids": result.ids, "finish_reason": result.finish_reason,
                          "stats": result.stats}))
    else:
        if model.tokenizer is None:
            sys.stdout.write(" ".join(map(str, result.ids)))
        sys.stdout.write("\n")
    if args.stats:
        s = result.stats
        print(
            f"[{result.finish_reason}] {s['new_tokens']} tokens in {s['total_time']:.3f}s "
            f"({s['tokens_per_second']:.1f} tok/s), rounds {s['rounds']}, M_L calls {s['large_calls']}, "
            f"M_S calls {s['drafter_calls']}, acceptance {s['acceptance_rate']:.2f}, "
            f"time in ORT {s['ort_time'] / max(s['total_time'], 1e-9):.0%}, "
            f"first token {s['time_to_first_token'] * 1e3:.1f} ms",
            file=sys.stderr,
        )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _block_length(text: str) -> int | str:
    """γ >= 1, or 'auto' (the router's adaptive block length)."""
    return text if text == "auto" else _positive_int(text)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a bundle over an OpenAI-compatible HTTP API",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve one bundle over HTTP with OpenAI's API: POST /v1/completions and /v1/chat/completions\n"
            "(streamed with `stream: true`), GET /v1/models, GET /health. Requests may add tandem's fields\n"
            "`mode`, `block_length` (an integer or \"auto\"), `top_k` and `ignore_eos`; every response carries a\n"
            "`tandem` object with the generation's stats. temperature 0 decodes greedily.\n\n"
            "At most --max-concurrent generations run at once, --queue-size more wait their turn and any\n"
            "request beyond those is answered 429. A client that disconnects cancels its generation.\n"
            "Bad requests get a 4xx with an OpenAI-style JSON error. Needs the `serve` extra:\n"
            "pip install 'tandem-runtime[serve]'."),
        epilog=(
            "examples:\n"
            "  tandem serve                                   the default model on http://127.0.0.1:8000\n"
            "  tandem serve bundles/mine --port 9000 --mode speed --block-length auto\n"
            "  TANDEM_API_KEY=secret tandem serve bundles/mine --host 0.0.0.0\n"
            "  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\\n"
            "       -d '{\"prompt\": \"def fib(n):\", \"max_tokens\": 32, \"temperature\": 0}'"),
    )
    p.add_argument("bundle", nargs="?", type=Path,
                   help="bundle folder (default: the default model, built locally on first use)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every "
                        "interface: set an API key then)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 for a free one)")
    p.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY") or None,
                   help="require 'Authorization: Bearer KEY' on every request except GET /health "
                        "(default: $TANDEM_API_KEY, which keeps the key out of the process list; "
                        "neither: no key needed)")
    p.add_argument("--model-id",
                   help="the name clients pass as `model` (default: the bundle folder's name, "
                        "'tandem-default' for the default model)")
    p.add_argument("--max-concurrent", type=_positive_int, default=2,
                   help="generations running at once; each steps in its own worker thread (default: 2)")
    p.add_argument("--queue-size", type=int, default=16,
                   help="requests that may wait for a free slot; past that the server answers 429 (default: 16)")
    p.add_argument("--mode", choices=("large", "tandem", "speed", "vanilla"),
                   help="mode of requests that name none (default: speed when the bundle has a tandem drafter)")
    p.add_argument("--block-length", type=_block_length,
                   help="γ of requests that name none, or 'auto' for the router's (default: the bundle's)")
    p.add_argument("--max-tokens", type=_positive_int, default=256,
                   help="max_tokens of requests that name none; always clamped to the context (default: 256)")
    p.add_argument("--threads", type=int, default=0,
                   help="M_L's intra-op threads, shared by all generations (0: one per core; default: 0)")
    p.add_argument("--drafter-threads", type=int, default=1, help="the drafters' intra-op threads (default: 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="execution provider (default: cpu)")
    p.add_argument("--max-body-bytes", type=_positive_int, default=4 * 2**20,
                   help="largest request body accepted; larger ones get 413 (default: 4 MiB)")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="server log verbosity (default: info)")
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from tandem.runtime import load
    from tandem.runtime.server import ServerConfig, require_serve_dependencies, serve

    require_serve_dependencies()  # before a possibly long model load
    model = load(args.bundle, device=args.device, threads=args.threads, drafter_threads=args.drafter_threads)
    model_id = args.model_id or ("tandem-default" if args.bundle is None else model.bundle_path.resolve().name)
    config = ServerConfig(model_id=model_id, api_key=args.api_key, max_concurrent=args.max_concurrent,
                          queue_size=args.queue_size, default_mode=args.mode, default_block_length=args.block_length,
                          default_max_tokens=args.max_tokens, max_body_bytes=args.max_body_bytes)
    loopback = args.host in ("127.0.0.1", "localhost", "::1") or args.host.startswith("127.")

    def ready(url: str) -> None:
        print(f"serving {model_id!r} ({', '.join(model.modes)}; context {model.context_length}) on {url}/v1 "
              f"with at most {config.max_concurrent} concurrent generations and {config.queue_size} queued"
              + ("; API key required" if config.api_key else ""), file=sys.stderr, flush=True)
        if not loopback and not config.api_key:
            print(f"warning: listening on {args.host} without an API key: anyone who reaches this port can "
                  "generate; set --api-key or TANDEM_API_KEY", file=sys.stderr, flush=True)

    serve(model, config, host=args.host, port=args.port, log_level=args.log_level,
          access_log=not args.no_access_log, on_ready=ready)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    from tandem.export.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE

    p = sub.add_parser(
        "export", help="build M_L's graph (+ tandem M_S, + plain M_S) into a bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Build ONNX Runtime graphs straight from Hugging Face / tandem folders (safetensors, read\n"
            "one tensor at a time) into a bundle the runtime loads: large.onnx (M_L, block mode),\n"
            "tandem_drafter.onnx (tandem M_S step), plain_drafter.onnx (plain M_S step), tokenizer and\n"
            "manifest.\n"
            "Every graph is validated against a PyTorch reference; the figures go into tandem.json.\n"
            "The bundle is written to a scratch folder next to --out and moved there at the end:\n"
            "a failure or Ctrl-C leaves --out as it was."),
        epilog=("example:\n"
                "  tandem export --large Qwen2-1.5B/ --plain Qwen2-0.5B/ --out bundles/qwen --precision int4"),
    )
    p.add_argument("--large", type=Path, required=True, help="M_L: a Hugging Face model folder")
    p.add_argument("--tandem", type=Path, help="tandem M_S folder (from `tandem train --mode tandem`)")
    p.add_argument("--plain", type=Path, help="plain M_S folder for vanilla speculative decoding")
    p.add_argument("--out", type=Path, required=True,
                   help="bundle folder to write (new, empty, or an older bundle to replace)")
    p.add_argument("--tokenizer", type=Path, help="tokenizer folder or tokenizer.json (default: --large)")
    p.add_argument("--block-length", type=int,
                   help="the bundle's default block length γ (default: the γ the tandem M_S was trained at, "
                        f"else {DEFAULT_BLOCK_LENGTH})")
    p.add_argument("--max-block-length", type=int, default=DEFAULT_MAX_BLOCK_LENGTH,
                   help="longest γ a request may ask for (default: %(default)s)")
    p.add_argument("--router-threshold", type=float, default=DEFAULT_ROUTER_THRESHOLD,
                   help="default τ for adaptive mode: a floor on the router's score beside the cost rule "
                        "(docs/CONTRACTS.md \"Adaptive block length\"; default: %(default)s)")
    p.add_argument("--context-length", type=int,
                   help="longest sequence the bundle serves (default: M_L's max_position_embeddings, "
                        "at most 8192); the KV cache of a request is sized to what it needs within it")
    p.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4"), default="fp32",
                   help="weights of every graph: fp32; fp16 (for CUDA); int8 or int4 weight-only "
                        "(MatMulNBits, for CPU). I/O stays float32 (default: fp32)")
    p.add_argument("--accuracy-level", type=int, choices=(0, 1, 2, 3, 4), default=4,
                   help="int8/int4 MatMulNBits compute: 4 = int8 activations (fastest on CPU), "
                        "0 = float32 (default: 4)")
    p.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=DEFAULT_BLOCK_SIZE,
                   help="int8/int4: weights per quantization block along K, each with its own scale "
                        f"(default: {DEFAULT_BLOCK_SIZE}, as ONNX Runtime GenAI's builder). Larger blocks store "
                        "fewer scales and can decode faster where memory bandwidth bounds it, but lose accuracy "
                        "(python -m tandem.bench.block_size measures both)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from tandem.export.bundle import export_bundle

    export_bundle(
        args.large, args.out, tandem=args.tandem, plain=args.plain, tokenizer=args.tokenizer,
        block_length=args.block_length, max_block_length=args.max_block_length,
        router_threshold=args.router_threshold, context_length=args.context_length,
        validate=not args.no_validate, precision=args.precision, accuracy_level=args.accuracy_level,
        block_size=args.block_size,  # export_bundle refuses one other than 32 at a float precision
    )
    return 0


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Tandem Transformers runtime: "
                                     "train, export and run M_L + M_S pairs with ONNX Runtime.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    _add_serve(sub)
    _add_export(sub)
    command = next((a for a in argv if not a.startswith("-")), None)
    # train/reps/eval/fit-router import torch: register their full parsers only when asked for
    if command in ("train", "reps", "eval", "fit-router"):
        from tandem.train.cli import (
            add_eval_parser,
            add_fit_router_parser,
            add_reps_parser,
            add_train_parser,
        )

        add_train_parser(sub)
        add_reps_parser(sub)
        add_eval_parser(sub)
        add_fit_router_parser(sub)
    else:
        sub.add_parser("train", help="train a tandem M_S, a plain M_S, or a from-scratch LM (needs torch)")
        sub.add_parser("reps", help="precompute M_L's representations for training (needs torch)")
        sub.add_parser("eval", help="held-out accuracy and agreement with M_L (needs torch)")
        sub.add_parser("fit-router", help="refit the adaptive block-length routers of a trained drafter "
                                          "(needs torch)")
    try:
        from tandem.bench.cli import add_bench_parser
    except ImportError:
        pass
    else:
        add_bench_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as exc:
        if exc.name in ("torch", "transformers", "onnx", "safetensors", "tqdm"):
            print(f"error: `tandem {args.command}` needs the PyTorch side: "
                  "pip install 'tandem-runtime[torch]' (torch==2.13.0)", file=sys.stderr)
            return 1
        raise
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
