"""The Python API over the C++ loop: `tandem.load(bundle).generate(...)` and `.stream(...)`.

Needs only numpy-free pieces: the compiled `tandem._core` (the decoding loop, the manifest
reader, the tokenizer, the detokenizer and stop strings, all in C++).
The GIL is released while C++ runs, so other Python threads keep going.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import BundleError, InvalidArgumentError, UntrainedBlockLengthWarning
from tandem.runtime.ort_library import find_ort_library
from tandem.runtime.tokenizer import Tokenizer

_INT64 = range(-(2**63), 2**63)


def _core() -> Any:
    from tandem import _core

    return _core


def max_threads() -> int:
    """The most threads `load` accepts for `threads` and `drafter_threads` on this machine.

    The cap is the C++ core's (tandem::MaxThreads): ONNX Runtime starts every thread of a
    pool when it loads the model, so a count past it would hang instead of failing."""
    return int(_core().max_threads())


def _token_ids(values: Any, vocab_size: int, what: str, expected: str) -> list[int]:
    """`values` as a list of ints. One too large for C++'s int64 is refused here (the C++ core
    checks the vocabulary of the others); anything else than integers raises `expected`."""
    try:
        ids = [operator.index(v) for v in values]
    except TypeError:
        raise InvalidArgumentError(expected) from None
    for i in ids:
        if i not in _INT64:
            raise InvalidArgumentError(f"{what} {i} is outside the vocabulary [0, {vocab_size})")
    return ids


def check_threads(name: str, value: int, zero_means: str) -> None:
    """Refuse a thread count outside [0, max_threads()] with InvalidArgumentError naming `name`.
    The check is the C++ core's (tandem::CheckThreads); every front end (load, the CLIs, tandem
    reps, tandem bench) calls it before anything loads."""
    _core().check_threads(name, max(-(2**63), min(operator.index(value), 2**63 - 1)), zero_means)


def _check_threads(threads: int, drafter_threads: int) -> None:
    check_threads("threads", threads, "one per core")
    check_threads("drafter_threads", drafter_threads, "as threads")


@dataclass
class GenerationResult:
    """What one generation produced."""

    text: str                # decoded new text ("" when the bundle has no tokenizer)
    ids: list[int]           # the generated token ids (EOS included when hit)
    finish_reason: str       # "eos" | "max_new_tokens" | "length" | "stop"
    stats: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] = field(default_factory=list)


class Stream:
    """Iterator over text pieces of one generation; `.result` is set once it is exhausted.

    Breaking out of the loop (or a KeyboardInterrupt) simply abandons this request: the
    model stays usable.
    """

    def __init__(self, model: TandemModel, prompt_ids: list[int], stop: list[str], options: Any) -> None:
        self._model = model
        self._prompt_ids = prompt_ids
        # the C++ detokenizer: UTF-8-safe text and stop strings (what C++ apps get from
        # tandem::GenerateText, which runs the same loop as __iter__)
        tokenizer = model.tokenizer._tok if model.tokenizer is not None else None
        self._detok = _core().Detokenizer(tokenizer, stop, True)
        self._gen = _core().Generator(model._model, prompt_ids, options)
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        detok = self._detok
        finish = ""
        while True:
            new = self._gen.step()
            if not new:
                break
            piece = detok.push(new)  # text never splits a character nor shows part of a stop string
            if piece:
                yield piece
            if detok.stopped:
                finish = "stop"  # the text ends before the stop string
                break
        if not finish:
            tail = detok.finish()
            if tail:
                yield tail
            finish = "stop" if detok.stopped else self._gen.finish_reason
        self.result = GenerationResult(
            text=detok.text,
            ids=list(detok.ids),
            finish_reason=finish,
            stats=self._gen.stats,
            prompt_ids=self._prompt_ids,
        )


class TandemModel:
    """A loaded bundle. Share it across threads freely; each call makes its own request."""

    def __init__(self, bundle: str | os.PathLike[str], device: str = "cpu", threads: int = 0,
                 drafter_threads: int = 1) -> None:
        """threads: M_L's intra-op threads (0: one per core). drafter_threads: the drafters'
        (default 1: a one-thread drafter does not contend with M_L's spinning workers). Both
        are at most `max_threads()`; more raises InvalidArgumentError."""
        if device not in ("cpu", "cuda"):
            raise InvalidArgumentError(f"device must be 'cpu' or 'cuda', got {device!r}")
        _check_threads(threads, drafter_threads)
        self._model = _core().Model(str(bundle), device=device, threads=threads, drafter_threads=drafter_threads,
                                    ort_library=find_ort_library() or "")
        self.manifest = self._model.manifest  # tandem.json as the C++ reader read and checked it
        self.bundle_path = Path(self._model.bundle_path)
        self.device = device
        # the bundle's tokenizer.json, run by the C++ core (BundleError names what it cannot read)
        self.tokenizer: Tokenizer | None = None
        if self._model.tokenizer_path:
            self.tokenizer = Tokenizer(self._model.tokenizer_path)
            tok_vocab = self.tokenizer.vocab_size
            if tok_vocab > self.vocab_size:
                raise BundleError(
                    f"{self._model.tokenizer_path} has {tok_vocab} tokens but the graphs' vocabulary has "
                    f"{self.vocab_size}: the tokenizer belongs to another model; re-export the bundle"
                )
        self.chat_template: str | None = self._read_chat_template()

    def _read_chat_template(self) -> str | None:
        """The bundle's chat template (None when it has none; the C++ reader checked that the
        file is in the bundle)."""
        path = self.manifest.chat_template
        if not path:
            return None
        try:
            return Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path} is not readable UTF-8 text ({exc}); re-export the bundle") from exc

    # -- properties --------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self._model.vocab_size)

    @property
    def context_length(self) -> int:
        return int(self._model.context_length)

    @property
    def modes(self) -> list[str]:
        """The decoding modes this bundle supports."""
        out = ["large"]
        if self._model.has_tandem_drafter:
            out += ["tandem", "speed"]
        if self._model.has_plain_drafter:
            out.append("vanilla")
        return out

    def has_router(self, mode: str) -> bool:
        """Whether `mode`'s drafter has routers, so that `block_length="auto"` (adaptive) can
        run in it; False for `large` and for a mode the bundle does not have."""
        if mode not in self.modes or mode == "large":
            return False
        return bool(self._model.has_router(mode))

    def __repr__(self) -> str:
        return f"TandemModel({str(self.bundle_path)!r}, modes={self.modes}, device={self.device!r})"

    # -- tokens ------------------------------------------------------------------------
    def encode(self, text: str | bytes) -> list[int]:
        """The prompt's token ids (the tokenizer's special tokens such as BOS included), as the
        Hugging Face tokenizer of the bundle gives them. Invalid UTF-8 bytes or a lone
        surrogate raise InvalidArgumentError."""
        if not isinstance(text, str | bytes):
            raise InvalidArgumentError(f"the prompt must be text (str or UTF-8 bytes), got {type(text).__name__}")
        if self.tokenizer is None:
            raise InvalidArgumentError(
                f"{self.bundle_path} ships no tokenizer.json: pass token ids instead of text"
            )
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens skipped ("" when the bundle has no tokenizer)."""
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids)

    # -- chat --------------------------------------------------------------------------
    def apply_chat_template(self, messages: Sequence[dict[str, Any]], *, tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str | list[int]:
        """The bundle's chat template (M_L's, copied by the exporter) rendered over `messages`,
        as Hugging Face's `tokenizer.apply_chat_template(messages, tokenize=tokenize,
        add_generation_prompt=add_generation_prompt)` renders it: the text, or with
        `tokenize=True` its token ids (encoded without the tokenizer's own special tokens:
        the template writes them). `messages`: [{"role": "system" | "user" | "assistant",
        "content": "..."}, ...]. A bundle without a template raises BundleError; malformed
        messages, or messages the template refuses, InvalidArgumentError."""
        from tandem.runtime.chat import render

        if self.chat_template is None:
            raise BundleError(
                f"{self.bundle_path} has no chat template, so chat() cannot format messages: re-export it from "
                "an M_L folder whose tokenizer_config.json has a chat_template (or that has a "
                "chat_template.jinja), or format the prompt yourself and call generate()")
        text = render(self.chat_template, messages, self.manifest.special_tokens,
                      add_generation_prompt=add_generation_prompt)
        if not tokenize:
            return text
        if self.tokenizer is None:
            raise BundleError(f"{self.bundle_path} ships no tokenizer.json, so chat messages cannot be encoded; "
                              "re-export the bundle with its tokenizer")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(self, messages: Sequence[dict[str, Any]], **options: Any) -> GenerationResult:
        """Generate the assistant's reply to a conversation: `messages` rendered with the bundle's
        chat template (with the generation prompt, see :meth:`apply_chat_template`), then
        generated from like :meth:`generate`, which takes the same keyword arguments."""
        return self.generate(self.apply_chat_template(messages, tokenize=True), **options)

    # -- generation --------------------------------------------------------------------
    def options(self, *, mode: str | None = None, block_length: int | str | None = None,
                eos_token_id: int | Sequence[int] | None = None, **options: Any) -> Any:
        """The :class:`GenerateOptions` (``tandem._core.GenerateOptions``, the C++ struct) that
        `generate` / `stream` run with. Python adds only the conveniences C++ cannot give: `mode`
        defaults to speed when the bundle has a tandem drafter, ``block_length="auto"`` means
        ``adaptive=True``, and `eos_token_id` (Hugging Face's name) takes one id or several.
        Every other keyword is a field of GenerateOptions; an unknown one, or a value out of
        range, raises InvalidArgumentError."""
        if isinstance(block_length, str):
            if block_length != "auto":
                raise InvalidArgumentError(f"block_length must be an integer or 'auto', got {block_length!r}")
            options["adaptive"], block_length = True, None
        if eos_token_id is not None:
            if options.get("eos_token_ids") is not None:
                raise InvalidArgumentError("pass eos_token_id or eos_token_ids, not both")
            ids = [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
            options["eos_token_ids"] = _token_ids(ids, self.vocab_size, "eos_token_id",
                                                  "eos_token_id must be a token id or a sequence of them")
        mode = mode or ("speed" if "speed" in self.modes else "large")
        return _core().GenerateOptions(mode=mode, block_length=block_length, **options)

    def stream(self, prompt: str | bytes | Sequence[int], *, stop: str | Sequence[str] | None = None,
               **options: Any) -> Stream:
        """Like :meth:`generate`, but iterate over the result to get text pieces as they
        are produced; the full :class:`GenerationResult` is in `.result` afterwards."""
        if isinstance(prompt, str | bytes):
            ids = self.encode(prompt)
        else:
            ids = _token_ids(prompt, self.vocab_size, "token id", "prompt must be text or a sequence of token ids")
        stops = [] if stop is None else ([stop] if isinstance(stop, str) else list(stop))
        if any(not isinstance(s, str) or not s for s in stops):
            raise InvalidArgumentError("stop strings must be non-empty strings")
        for s in stops:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidArgumentError(f"stop string {s!r} is not valid Unicode (a lone surrogate)") from exc
        if stops and self.tokenizer is None:
            raise InvalidArgumentError(f"{self.bundle_path} ships no tokenizer.json, so stop strings cannot be "
                                       "matched: pass eos_token_id instead")
        resolved = self._model.resolve(self.options(**options))  # checks every option first
        self._warn_untrained_block_length(resolved)
        return Stream(self, ids, stops, resolved)

    def _warn_untrained_block_length(self, options: Any) -> None:
        """Warn when a tandem drafter would draft further than the γ it was trained at."""
        drafter = self.manifest.graphs.get("tandem_drafter")
        trained = drafter.trained_block_length if drafter is not None else 0
        if options.mode not in ("speed", "tandem") or not trained:
            return
        gamma = options.max_block_length if options.adaptive else options.block_length
        if gamma > trained:
            warnings.warn(f"block length {gamma} is longer than the γ = {trained} the tandem drafter was trained "
                          f"at: its drafts at block positions {trained}..{gamma - 1} were never trained (still "
                          "lossless in speed mode, usually fewer accepted); pass block_length <= "
                          f"{trained} or retrain with --block-length {gamma}", UntrainedBlockLengthWarning,
                          stacklevel=4)

    def generate(self, prompt: str | bytes | Sequence[int], **options: Any) -> GenerationResult:
        """Generate from text or token ids.

        Keywords: `stop` (strings that end the text before the match, finish_reason "stop")
        and the generation options (see :meth:`options` and ``tandem.GenerateOptions``):
        mode ("large" | "tandem" | "speed" | "vanilla"; default: speed when the bundle has a
        tandem drafter), block_length (γ, or "auto" for the router's adaptive length in
        speed/vanilla), max_new_tokens, do_sample, temperature, top_k, top_p, seed,
        eos_token_id, ignore_eos, min_block_length, max_block_length, and for "auto": draft_cost and
        verify_cost (c and β in M_L steps; default: measured on this machine once per model) and
        router_threshold (τ, a floor on the router's score).
        """
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result


def load(bundle: str | os.PathLike[str] | None = None, device: str = "cpu", threads: int = 0,
         drafter_threads: int = 1) -> TandemModel:
    """Load a bundle folder (default: the default model, SmolLM2-135M-Instruct with its committed drafters,
    built locally on first use: see `tandem.runtime.default`)."""
    if bundle is None:
        _check_threads(threads, drafter_threads)
        from tandem.runtime.default import default_bundle

        bundle = default_bundle()
    return TandemModel(bundle, device=device, threads=threads, drafter_threads=drafter_threads)
