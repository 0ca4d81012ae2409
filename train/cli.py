"""``tandem train`` and ``tandem eval`` subcommands (registered by the main ``tandem`` CLI).

    tandem train --mode lm --tokenizer tok/ --train-tokenizer 2048 --data src/ --out large/
    tandem train --mode tandem --large large/ --layers 2 --hidden 128 --data src/ --out tandem/
    tandem train --mode plain  --large large/ --layers 2 --hidden 128 --data src/ --out plain/
    tandem eval --large large/ --model plain=plain/ --model tandem-distil=tandem/ --data src/

For a big M_L, compute its representations once, then train without it:

    tandem reps --large qwen/ --data src/ --rep-layers 14 --out reps/
    tandem train --large qwen/ --reps reps/ --layers 1 --shared-head --draft-vocab 8192 \
        --layer-assignment 14 --out tandem/
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from tandem.errors import TrainingError
from tandem.export.quantize import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
from tandem.train.data import (
    MIN_HELDOUT_TOKENS,
    Corpus,
    TextTokenizer,
    collect_files,
    consecutive_windows,
    train_tokenizer,
)
from tandem.train.evaluate import evaluate, format_table, load_drafter, write_results
from tandem.train.model import (
    LAYER_ASSIGNMENTS,
    SUPPORTED_MODEL_TYPES,
    LargeParts,
    TandemSmall,
    create_drafter,
    create_drafter_config,
    create_lm_config,
    create_tandem,
    draft_vocabulary,
    set_draft_vocab,
)
from tandem.train.reps import (
    DEFAULT_TOP_K,
    DISTIL_TEACHERS,
    ENGINES,
    RepsReader,
    precompute,
    torch_precision,
)
from tandem.train.router import Router, RouterConfig, describe_fit
from tandem.train.trainer import AUTOCAST, LOSSES, MODES, TrainConfig, Trainer, resolve_device

DEFAULT_HIDDEN = 256


def _add_data_args(parser: argparse.ArgumentParser, required: bool = True, reps: bool = False) -> None:
    parser.add_argument("--data", nargs="+", required=required, help="text/code files or folders")
    parser.add_argument("--heldout-fraction", type=float, default=0.05,
                        help="share of files (by content hash) held out for evaluation"
                             + (" (not precomputed)" if reps else ""))
    if reps:
        parser.add_argument("--seq-len", type=int, default=256,
                            help="tokens per stored window; training may use any --seq-len up to it (default 256)")
        return
    parser.add_argument("--min-heldout-tokens", type=int, default=MIN_HELDOUT_TOKENS,
                        help="held-out tokens needed for figures worth reporting: `train` warns below it, "
                             f"`eval` refuses (default: {MIN_HELDOUT_TOKENS})")
    parser.add_argument("--seq-len", type=int, default=TrainConfig.seq_len,
                        help=f"tokens per training window (default {TrainConfig.seq_len})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``: pretrain an LM, or train a tandem / plain M_S for a frozen M_L."""
    parser = subparsers.add_parser("train", help="train a tandem M_S, a plain M_S, or a from-scratch LM")
    parser.add_argument("--mode", choices=MODES, default="tandem")
    parser.add_argument("--large", type=Path, help="M_L folder (HF model + tokenizer.json); not used by --mode lm")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: --large)")
    parser.add_argument("--train-tokenizer", type=int, metavar="VOCAB",
                        help="--mode lm: first train a byte-level BPE of VOCAB tokens on --data into --tokenizer")
    parser.add_argument("--out", type=Path, required=True, help="output folder (also holds the checkpoint)")
    parser.add_argument("--init", type=Path, help="start M_S from this HF folder instead of a new model")
    parser.add_argument("--arch", choices=SUPPORTED_MODEL_TYPES, default="llama", help="--mode lm architecture")
    parser.add_argument("--layers", type=int, default=2, help="layers of a new model")
    parser.add_argument("--hidden", type=int, help=f"width of a new model (default {DEFAULT_HIDDEN})")
    parser.add_argument("--heads", type=int, help="attention heads of a new model")
    parser.add_argument("--kv-heads", type=int, help="KV heads of a new model (GQA when fewer than heads)")
    parser.add_argument("--intermediate", type=int, help="MLP width of a new model")
    parser.add_argument("--max-positions", type=int, default=2048, help="--mode lm context length")
    parser.add_argument("--layer-assignment", default="proportional", metavar="|".join(LAYER_ASSIGNMENTS) + "|L[,L...]",
                        help="which M_L layer feeds each M_S layer: last, proportional (default), or explicit "
                             "M_L layer numbers (0 = embeddings), one per M_S layer or one for all, e.g. 2 or 2,4; "
                             "for a 1-layer M_S a middle layer did best in docs/results/tandem_vs_plain.md")
    parser.add_argument("--no-router", action="store_true", help="do not train an adaptive-block router")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    parser.add_argument("--loss", choices=LOSSES, help="default: ce-then-distil (tandem), distil (plain), ce (lm)")
    parser.add_argument("--variable-boundaries", action="store_true",
                        help="draw every training block's length from 1..--block-length (as verification ends "
                             "blocks at varying lengths when decoding), instead of fixed blocks of --block-length")
    parser.add_argument("--reps", type=Path, metavar="FOLDER",
                        help="train from M_L representations precomputed by `tandem reps` (M_L is not run; "
                             "--large is still read for its config, embedding and LM head, --data only for the "
                             "held-out check)")
    parser.add_argument("--shared-head", action="store_true",
                        help="build M_S at M_L's width and share M_L's embedding and LM head, frozen (not "
                             "trained, stored once in the bundle); --hidden is then M_L's width")
    parser.add_argument("--draft-vocab", type=int, metavar="N",
                        help="the drafter (tandem or plain) proposes only the N most frequent tokens of the "
                             "training data (plus EOS); still lossless, and its head costs N rows instead of the "
                             "vocabulary, in training and in decoding")
    _add_data_args(parser, required=False)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("int", "float") and flag not in ("--seq-len",):
            parser.add_argument(flag, type=int if f.type == "int" else float, default=getattr(defaults, f.name))
    parser.add_argument("--autocast", choices=AUTOCAST, default=TrainConfig.autocast,
                        help="bfloat16 autocast: auto (default) uses it on CUDA and on a CPU with bf16 matmuls "
                             "(AVX512-BF16 / AMX), bf16 always, off never (float32)")
    parser.set_defaults(func=run_train)
    return parser


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``eval``: accuracy and TV distance to M_L of drafters on held-out text."""
    parser = subparsers.add_parser("eval", help="compare drafters with M_L on held-out text")
    parser.add_argument("--large", type=Path, required=True, help="M_L folder (HF model + tokenizer.json)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=FOLDER",
                        help="a drafter to evaluate (tandem or plain folder); repeat for several")
    parser.add_argument("--block-length", type=int, default=2, help="γ of the tandem block mask")
    parser.add_argument("--max-windows", type=int, default=64, help="held-out windows to score")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results here")
    _add_data_args(parser)
    parser.set_defaults(func=run_eval)
    return parser


def _load_large(folder: Path | None) -> PreTrainedModel:
    if folder is None:
        raise TrainingError("this command needs M_L: pass --large FOLDER")
    if not (folder / "config.json").exists():
        raise TrainingError(f"{folder} is not an HF model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _build_model(args: argparse.Namespace, large: PreTrainedModel | LargeParts | None, tokenizer: TextTokenizer,
                 stream: torch.Tensor | None) -> tuple[TandemSmall | PreTrainedModel, Router | None]:
    if args.mode == "lm":
        if args.draft_vocab:
            raise TrainingError("--draft-vocab is for the drafters (--mode tandem or plain), not --mode lm")
        if args.init is not None:
            return AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32), None
        hidden = args.hidden or DEFAULT_HIDDEN
        config = create_lm_config(args.arch, tokenizer.vocab_size, args.layers, hidden,
                                  args.heads or max(1, hidden // 64), args.kv_heads, args.intermediate,
                                  args.max_positions, tokenizer.eos_id)
        torch.manual_seed(args.seed)
        return AutoModelForCausalLM.from_config(config).float(), None
    if args.init is not None:
        small = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    else:
        hidden = args.hidden
        if args.shared_head:
            if hidden not in (None, large.config.hidden_size):
                raise TrainingError(f"--shared-head builds M_S at M_L's width {large.config.hidden_size}; "
                                    f"drop --hidden {hidden}")
            hidden = large.config.hidden_size
        config = create_drafter_config(large.config, args.layers, hidden or DEFAULT_HIDDEN, args.heads, args.kv_heads,
                                       args.intermediate)
        small = create_drafter(large, config, seed=args.seed, freeze_shared=args.shared_head)
    vocab = None
    if args.draft_vocab:  # the same vocabulary for either drafter: the N most frequent training tokens + EOS
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        vocab = draft_vocabulary(stream, args.draft_vocab, large.config.vocab_size, always=eos)
    if args.mode == "tandem":
        return create_tandem(large, small, args.layer_assignment, router=not args.no_router, seed=args.seed,
                             draft_vocab=vocab), None
    router = None if args.no_router else Router(RouterConfig(embed_dim=small.config.hidden_size))
    return set_draft_vocab(small, vocab), router


def _quiet(*args: object, **kwargs: object) -> None:
    """print() for processes other than torchrun's rank 0."""


def run_train(args: argparse.Namespace) -> int:
    tokenizer_folder = args.tokenizer or args.large
    if tokenizer_folder is None:
        raise TrainingError("pass --tokenizer FOLDER (or --large, whose tokenizer is used)")
    if args.data is None and args.reps is None:
        raise TrainingError("pass --data FILES_OR_FOLDERS (or --reps FOLDER written by `tandem reps`)")
    if args.train_tokenizer:
        if args.mode != "lm":
            raise TrainingError("--train-tokenizer is for --mode lm; M_S must use M_L's tokenizer")
        texts = (p.read_text(errors="replace") for p in collect_files(args.data))
        train_tokenizer(texts, args.train_tokenizer, tokenizer_folder)
    tokenizer = TextTokenizer.load(tokenizer_folder)
    say = print if os.environ.get("RANK", "0") == "0" else _quiet  # under torchrun: process 0 reports
    reps = RepsReader(args.reps) if args.reps is not None else None
    if args.mode == "lm":
        large = None
    elif reps is not None:
        if args.large is None:
            raise TrainingError("--reps needs --large too: M_S takes M_L's config, embedding and LM head")
        large = LargeParts.from_folder(args.large)
    else:
        large = _load_large(args.large)
    if large is not None and tokenizer.vocab_size > large.config.vocab_size:
        raise TrainingError(f"tokenizer has {tokenizer.vocab_size} tokens but M_L's vocab is "
                            f"{large.config.vocab_size}; use M_L's own tokenizer")
    corpus = None
    if args.data is not None:
        corpus = Corpus.build(args.data, tokenizer, args.heldout_fraction)
        say(f"data: {corpus.train.numel()} training tokens, {corpus.heldout.numel()} held-out tokens")
        problem = corpus.heldout_problem(args.min_heldout_tokens)
        if problem:
            say(f"warning: {problem}", file=sys.stderr)
    if reps is not None:
        say(f"reps: {reps.num_tokens} tokens of M_L representations (layers {reps.spec.layers}, "
              f"teacher {reps.spec.distil}) in {args.reps}")
    stream = corpus.train if reps is None else torch.from_numpy(np.stack(list(reps.tokens())))
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    model, router = _build_model(args, large, tokenizer, stream)
    trainer = Trainer(model, large, corpus, config, args.out, router, reps=reps)
    losses = trainer.train(resume=not args.no_resume)
    fit = trainer.fit_router(progress=True)
    summary = {"final_loss": losses[-1] if losses else None, "router": fit.as_dict() if fit else None,
               "training_tokens_per_second": trainer.tokens_per_second}
    out = trainer.save(tokenizer_folder, summary)
    say(f"saved {config.mode} model to {out} (final loss {summary['final_loss']}"
        f"{'; ' + describe_fit(fit) if fit else ''})")
    return 0


def add_reps_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``reps``: run M_L once over the training data and store what training needs."""
    parser = subparsers.add_parser(
        "reps", help="precompute M_L's representations for training (resumable fp16 shards)",
        description="Run M_L once over windows of the training split of --data and write the representations "
                    "the drafter reads, plus Tandem-Distil's teacher, to memory-mapped float16 shards. "
                    "`tandem train --reps FOLDER` then trains without running M_L. Rerunning with the same "
                    "arguments resumes after the last complete shard.")
    parser.add_argument("--large", type=Path, required=True, help="M_L folder (Hugging Face model + tokenizer.json)")
    parser.add_argument("--out", type=Path, required=True, help="reps folder to write (or resume)")
    parser.add_argument("--rep-layers", default=None, metavar="L[,L...]",
                        help="M_L layers to store (0 = embeddings .. L = final norm): the layers the drafter will "
                             "read (its --layer-assignment); default: the middle layer")
    parser.add_argument("--max-tokens", type=int, help="stop after this many tokens (default: all training data)")
    parser.add_argument("--engine", choices=ENGINES, default="onnxruntime",
                        help="onnxruntime: M_L's exported graph at --precision (fast on CPU); torch: PyTorch, "
                             "float32 on the CPU (exactly what training with M_L in the loop sees), bf16 on CUDA")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8", "int4", "bf16"),
                        help="M_L's precision: fp32/fp16/int8/int4 under --engine onnxruntime (default int4); "
                             "--engine torch computes in fp32 on the CPU and bf16 (autocast) on CUDA")
    parser.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=DEFAULT_BLOCK_SIZE,
                        help="--engine onnxruntime at int8/int4: weights per quantization block, as the bundle "
                             "will be exported with (tandem export --block-size; default: 32)")
    parser.add_argument("--device", default="auto",
                        help="--engine torch: auto (CUDA when present) | cpu | cuda; ONNX Runtime runs on the CPU")
    parser.add_argument("--distil", choices=DISTIL_TEACHERS, default="topk",
                        help="Tandem-Distil's teacher: topk = M_L's top-k log-probabilities (small); hidden = "
                             "its final hidden state, put through the LM head at training time (exact, d_L "
                             "halves per token); none = Tandem-CE only")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="k of --distil topk")
    parser.add_argument("--shard-tokens", type=int, default=16_384,
                        help="tokens per shard: the unit of resuming (default 16384)")
    parser.add_argument("--threads", type=int, default=0, help="M_L threads (0: all cores)")
    _add_data_args(parser, reps=True)
    parser.set_defaults(func=run_reps)
    return parser


def run_reps(args: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from tandem.runtime import check_threads

    check_threads("--threads", args.threads, "all cores")  # before M_L loads: a huge pool would hang

    config = AutoConfig.from_pretrained(args.large) if (args.large / "config.json").is_file() else None
    if config is None:
        raise TrainingError(f"{args.large} is not a Hugging Face model folder (no config.json)")
    if args.rep_layers is None:
        layers = [config.num_hidden_layers // 2]
    else:
        parts = [p.strip() for p in args.rep_layers.split(",")]
        if not all(p.isdigit() for p in parts):
            raise TrainingError(f"--rep-layers {args.rep_layers!r}: write M_L layer numbers, e.g. 14 or 7,14")
        layers = [int(p) for p in parts]
    corpus = Corpus.build(args.data, TextTokenizer.load(args.large), args.heldout_fraction)
    print(f"data: {corpus.train.numel()} training tokens")
    device = resolve_device(args.device) if args.engine == "torch" else torch.device("cpu")
    precision = args.precision or (torch_precision(device) if args.engine == "torch" else "int4")
    spec = precompute(args.large, corpus.train, layers, args.out, seq_len=args.seq_len, max_tokens=args.max_tokens,
                      engine=args.engine, precision=precision, distil=args.distil, top_k=args.top_k,
                      block_size=args.block_size, shard_tokens=args.shard_tokens, threads=args.threads, device=device)
    rate = f", {spec.tokens_per_second:.0f} tokens/s" if spec.tokens_per_second else ""
    print(f"wrote {spec.total_windows * spec.seq_len} tokens of layers {spec.layers} to {args.out}{rate}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    large = _load_large(args.large)
    drafters = {}
    for spec in args.model:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise TrainingError(f"--model {spec!r}: write NAME=FOLDER, e.g. --model tandem=out/tandem")
        drafters[name] = load_drafter(folder)
    corpus = Corpus.build(args.data, TextTokenizer.load(args.large), args.heldout_fraction)
    problem = corpus.heldout_problem(args.min_heldout_tokens)
    if problem:
        raise TrainingError(f"refusing to report: {problem}")
    windows = consecutive_windows(corpus.heldout, args.seq_len + 1, args.max_windows)
    results = evaluate(large, drafters, windows, args.block_length, args.batch_size, resolve_device(args.device),
                       progress=True)
    print(format_table(results))
    if args.json:
        write_results(results, args.json)
    return 0


def add_fit_router_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``fit-router``: refit the greedy and sampled routers of a trained drafter in place."""
    parser = subparsers.add_parser(
        "fit-router", help="refit the adaptive block-length routers of a trained drafter (minutes)",
        description="Log (M_S, M_L) pairs on training data and fit the drafter's two routers: the greedy one "
                    "(target: M_S's argmax is M_L's) and the sampled one (target: the acceptance probability "
                    "1 - TV at --router-temperature). Only the router files of --drafter are rewritten "
                    "(tandem: tandem_config.json and tandem.safetensors; plain: router_config.json and "
                    "router.safetensors); the M_S weights stay. Use it to add routers to a drafter trained "
                    "with --no-router, to update a folder with an older single router, or to fit the sampled "
                    "router for another temperature. Re-export the bundle afterwards.")
    parser.add_argument("--drafter", type=Path, required=True, help="the drafter folder (--out of `tandem train`)")
    parser.add_argument("--large", type=Path, required=True, help="M_L folder (Hugging Face model)")
    parser.add_argument("--reps", type=Path, metavar="FOLDER",
                        help="log the pairs from M_L representations precomputed by `tandem reps` (M_L not run; "
                             "needs a teacher: --distil topk or hidden)")
    parser.add_argument("--data", nargs="+", help="or: text/code files or folders (M_L in the loop; training split)")
    parser.add_argument("--heldout-fraction", type=float, default=0.05,
                        help="--data: share of files held out, as in `tandem train` (default 0.05)")
    parser.add_argument("--router-temperature", type=float, default=1.0,
                        help="sampling temperature T the sampled router is fitted for (default 1)")
    parser.add_argument("--router-batches", type=int, help=f"batches logged (default {TrainConfig.router_batches})")
    parser.add_argument("--router-steps", type=int, help=f"fitting steps per router (default {TrainConfig.router_steps})")
    parser.add_argument("--block-length", type=int,
                        help="γ of the block mask the tandem pairs are logged under (default: the drafter's training)")
    boundaries = parser.add_mutually_exclusive_group()
    boundaries.add_argument("--variable-boundaries", dest="variable_boundaries", action="store_true", default=None,
                            help="blocks of lengths drawn from 1..γ (default: as the drafter was trained)")
    boundaries.add_argument("--fixed-boundaries", dest="variable_boundaries", action="store_false",
                            help="blocks of exactly γ")
    parser.add_argument("--seq-len", type=int, help="tokens per window (default: the drafter's training)")
    parser.add_argument("--batch-size", type=int, help="windows per batch (default: the drafter's training)")
    parser.add_argument("--seed", type=int, help="default: the drafter's training seed")
    parser.add_argument("--top-k", type=int, help="router features: top-k tokens (default: the old router's, else 4)")
    parser.add_argument("--hidden-size", type=int, help="router MLP width (default: the old router's, else 64)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.set_defaults(func=run_fit_router)
    return parser


def run_fit_router(args: argparse.Namespace) -> int:
    from tandem.train.refit import RefitSettings, refit_routers

    settings = RefitSettings(**{name: getattr(args, name) for name in (
        "router_temperature", "router_batches", "router_steps", "block_length", "variable_boundaries", "seq_len",
        "batch_size", "seed", "top_k", "hidden_size", "device")})
    fit = refit_routers(args.drafter, args.large, data=args.data, reps=args.reps,
                        heldout_fraction=args.heldout_fraction, settings=settings)
    print(f"{describe_fit(fit)}; wrote the routers into {args.drafter} (re-export its bundle)")
    return 0
