"""The Python API over the C++ loop: `tandem.load(bundle).generate(...)` and `.stream(...)`.

Needs only numpy-free pieces: the compiled `tandem._core` (the decoding loop, the tokenizer,
the detokenizer and stop strings, all in C++) and the manifest.
The GIL is released while C++ runs, so other Python threads keep going.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tandem.errors import BundleError, InvalidArgumentError, UntrainedBlockLengthWarning
from tandem.manifest import Manifest
from tandem.runtime.ort_library import find_ort_library
from tandem.runtime.tokenizer import Tokenizer

MODES = ("large", "tandem", "speed", "vanilla")
_INT32_MAX = 2**31 - 1  # C++ `int` parameters


def _core() -> Any:
    from tandem import _core

    return _core


def max_threads() -> int:
    """The most threads `load` accepts for `threads` and `drafter_threads` on this machine.

    The cap is the C++ core's (tandem::MaxThreads): ONNX Runtime starts every thread of a
    pool when it loads the model, so a count past it would hang instead of failing."""
    return int(_core().max_threads())


def _check_threads(threads: int, drafter_threads: int) -> None:
    """Refuses thread counts before anything loads: a session asked for 10**6 threads would hang
    starting them (the C++ core refuses them too; this names the Python arguments)."""
    for name, value, zero_means in (("threads", threads, "one per core"),
                                    ("drafter_threads", drafter_threads, "as threads")):
        if value < 0:
            raise InvalidArgumentError(f"{name} must be >= 0 (0: {zero_means})")
        cap = max_threads()
        if value > cap:
            raise InvalidArgumentError(f"{name}={value} is above the cap of {cap} threads on this machine: "
                                       f"pass a count from 1 to {cap}, or 0 for {zero_means}")


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

    def __init__(self, model: TandemModel, prompt_ids: list[int], stop: list[str], options: dict[str, Any]) -> None:
        self._model = model
        self._prompt_ids = prompt_ids
        # the C++ detokenizer: UTF-8-safe text and stop strings (what C++ apps get from
        # tandem::GenerateText, which runs the same loop as __iter__)
        tokenizer = model.tokenizer._tok if model.tokenizer is not None else None
        self._detok = _core().Detokenizer(tokenizer, stop, True)
        self._gen = _core().Generator(model._model, prompt_ids, **options)
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
        self.manifest = Manifest.load(bundle)
        self._model = _core().Model(str(bundle), device=device, threads=threads, drafter_threads=drafter_threads,
                                    ort_library=find_ort_library() or "")
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
        """The bundle's chat template (None when it has none); the file must lie in the bundle."""
        name = self.manifest.chat_template
        if not name:
            return None
        folder = self.bundle_path.resolve()
        path = (folder / name).resolve()
        if Path(name).is_absolute() or path.parent != folder:
            raise BundleError(f"{self.bundle_path}: chat_template {name!r} must be a file name inside the bundle; "
                              "re-export the bundle")
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise BundleError(f"{self.bundle_path} names the chat template {name!r} but has no such file; "
                              "copy the whole bundle folder or re-export it") from None
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
        if self._model.has_small:
            out += ["tandem", "speed"]
        if self._model.has_draft:
            out.append("vanilla")
        return out

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
    def stream(
        self,
        prompt: str | bytes | Sequence[int],
        *,
        mode: str | None = None,
        block_length: int | str | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        stop: str | Sequence[str] | None = None,
        router_threshold: float | None = None,
        min_block_length: int = 1,
        max_block_length: int | None = None,
        ignore_eos: bool = False,
    ) -> Stream:
        """Like :meth:`generate`, but iterate over the result to get text pieces as they
        are produced; the full :class:`GenerationResult` is in `.result` afterwards."""
        if isinstance(prompt, str | bytes):
            ids = self.encode(prompt)
        else:
            try:
                ids = [int(i) for i in prompt]
            except (TypeError, ValueError) as exc:
                raise InvalidArgumentError("prompt must be text or a sequence of token ids") from exc
        if not ids:
            raise InvalidArgumentError("the prompt is empty: give some text or at least one token id")
        if any(not 0 <= i < self.vocab_size for i in ids):
            bad = next(i for i in ids if not 0 <= i < self.vocab_size)
            raise InvalidArgumentError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        for name, value, low in (("max_new_tokens", max_new_tokens, 0), ("top_k", top_k, 0),
                                 ("min_block_length", min_block_length, 1)):
            if not low <= int(value) <= _INT32_MAX:
                raise InvalidArgumentError(f"{name} must be in [{low}, {_INT32_MAX}], got {value}")
        if not 0 <= int(seed) < 2**64:
            raise InvalidArgumentError(f"seed must be in [0, 2**64), got {seed}")
        mode = mode or ("speed" if "speed" in self.modes else "large")
        if mode not in MODES:
            raise InvalidArgumentError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
        adaptive = block_length == "auto"
        if isinstance(block_length, str) and not adaptive:
            raise InvalidArgumentError(f"block_length must be an integer or 'auto', got {block_length!r}")
        if block_length is not None and not adaptive and not 1 <= int(block_length) <= _INT32_MAX:
            raise InvalidArgumentError(f"block_length must be >= 1, got {block_length}")
        if max_block_length is not None and not 0 <= int(max_block_length) <= _INT32_MAX:
            raise InvalidArgumentError(f"max_block_length must be >= 1, got {max_block_length}")
        self._warn_untrained_block_length(mode, block_length, max_block_length if adaptive else None)
        eos = [] if eos_token_id is None else (
            [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]
        )
        if any(not 0 <= e < self.vocab_size for e in eos):
            raise InvalidArgumentError(f"eos_token_id {eos} is outside the vocabulary [0, {self.vocab_size})")
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
        options = dict(
            mode=mode,
            block_length=0 if block_length is None or adaptive else int(block_length),
            adaptive=adaptive,
            router_threshold=-1.0 if router_threshold is None else float(router_threshold),
            min_block_length=int(min_block_length),
            max_block_length=int(max_block_length or 0),
            max_new_tokens=int(max_new_tokens),
            do_sample=bool(do_sample),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
            seed=int(seed),
            eos_token_ids=eos,
            ignore_eos=bool(ignore_eos),
        )
        return Stream(self, ids, stops, options)

    def _warn_untrained_block_length(self, mode: str, block_length: int | str | None,
                                     max_block_length: int | None) -> None:
        """Warn when a tandem drafter would draft further than the γ it was trained at."""
        small = self.manifest.graphs.get("small")
        trained = small.trained_block_length if small is not None else 0
        if mode not in ("speed", "tandem") or not trained:
            return
        gamma = max_block_length if block_length == "auto" else block_length
        gamma = self.manifest.default_block_length if gamma is None else int(gamma)
        if gamma > trained:
            warnings.warn(f"block length {gamma} is longer than the γ = {trained} the tandem drafter was trained "
                          f"at: its drafts at block positions {trained}..{gamma - 1} were never trained (still "
                          "lossless in speed mode, usually fewer accepted); pass block_length <= "
                          f"{trained} or retrain with --block-length {gamma}", UntrainedBlockLengthWarning,
                          stacklevel=4)

    def generate(self, prompt: str | bytes | Sequence[int], **options: Any) -> GenerationResult:
        """Generate from text or token ids; takes the keyword arguments of :meth:`stream`.

        mode: "large" | "tandem" | "speed" | "vanilla" (default: speed when the bundle has a
        tandem drafter). block_length: γ, or "auto" for the router's adaptive length
        (speed/vanilla). Sampling parameters follow Hugging Face names; `stop` strings end
        the text before the match (finish_reason "stop").
        """
        stream = self.stream(prompt, **options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result


def load(bundle: str | os.PathLike[str] | None = None, device: str = "cpu", threads: int = 0,
         drafter_threads: int = 1) -> TandemModel:
    """Load a bundle folder (default: the embedded default bundle, shipped with the package)."""
    if bundle is None:
        _check_threads(threads, drafter_threads)
        from tandem.runtime.default import default_bundle

        bundle = default_bundle()
    return TandemModel(bundle, device=device, threads=threads, drafter_threads=drafter_threads)
