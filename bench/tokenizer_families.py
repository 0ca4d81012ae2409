"""Tokenizers of each family the C++ tokenizer supports, trained in-process with Hugging Face
`tokenizers` (the oracle of the parity tests and the peer of the encode-speed benchmark), and
the text they are checked on: the running interpreter's standard library plus hand-picked
hard cases.

Families (what the converted tokenizer.json files of those models hold):
  gpt2     byte-level BPE, ByteLevel pre-tokenizer with its GPT-2 regex (no prefix space)
  llama3   Split(Llama 3 regex) + ByteLevel(use_regex=False), ignore_merges, BOS by template
  qwen2    NFC + Split(Qwen2 regex) + ByteLevel(use_regex=False), chat special tokens
  llama2   SentencePiece-style BPE: Prepend/Replace "▁" normalizer, byte fallback, unk fused,
           Replace/ByteFallback/Fuse/Strip decoder, BOS by template (Llama 2's "legacy" file)
  mistral  the same model with a Metaspace(prepend_scheme="first", split=False) pre-tokenizer
           and decoder (the newer conversion of Llama/Mistral tokenizers)
  spbpe    tokenizers' SentencePieceBPETokenizer layout: NFKC + Metaspace(always, split)
"""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path
from typing import Any

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
FAMILIES = ("gpt2", "llama3", "qwen2", "llama2", "mistral", "spbpe")

MULTILINGUAL = (
    "Grüße aus München! Ça va? Él está aquí. Příliš žluťoučký kůň. Zażółć gęślą jaźń.\n"
    "Привет, мир! Γειά σου Κόσμε. Բարեւ աշխարհ. გამარჯობა მსოფლიო.\n"
    "你好，世界。こんにちは世界、カタカナ。안녕하세요 세계. 中文标点“引号”《书名》\n"
    "مرحبا بالعالم. שלום עולם. नमस्ते दुनिया। স্বাগতম। வணக்கம் உலகம். สวัสดีชาวโลก\n"
)
HARD_CASES = (
    "", " ", "  ", "\n", "\r\n", "a", "Hello world", "  leading", "trailing  ", "\t\tx\n\n\n  y",
    MULTILINGUAL,
    "emoji 🎉🚀 family 👩‍👩‍👧‍👦 flags 🇫🇷🇯🇵 hearts ❤️‍🔥 skin 👍🏽 keycap 1️⃣",
    "combining: e\u0301 a\u0300\u0316 o\u0308\u0304 Hangul jamo \u1100\u1161\u11a8 Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇",
    "compatibility: ﬁ ﬂ ① Ⅻ ｆｕｌｌｗｉｄｔｈ ㍻ ℌ ² ½ Å",
    " " * 300 + "x" + "\t" * 50 + "\n" * 80 + " " * 17,
    "digits 0 12 345 6789 3.14159 1e-10 0xFF 1,000,000 ١٢٣ ४५६ ①②",
    "<|endoftext|>", "a<|endoftext|>b", " <|endoftext|> ", "<s>hello</s>", " <s> x", "<unk>", "<s><s>",
    "<|begin_of_text|>hi<|eot_id|>", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "it's I'M we'LL THEY'RE you'Ve she'D ſ", "\u00a0nbsp\u2000en\u3000ideo\u180emvs\u0085nel\u2028ls\u2029ps",
    "\x00\x01\x1f\x7f control", "▁ ▁▁x ▁", "<0x41> <0xZZ>", "ÀÉÎÕÜ àéîõü ÇçŒœ",
    "x" * 600, "λ" * 300 + " " + "日本" * 150,
)


def stdlib_files() -> list[Path]:
    """Every .py file of the running interpreter's standard library (its tests included,
    installed packages not), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(f for f in root.rglob("*.py")
                  if not {"site-packages", "dist-packages"} & set(f.relative_to(root).parts))


def read_texts(files: list[Path]) -> list[str]:
    """The files' text (UTF-8; the few that are not are skipped)."""
    texts = []
    for f in files:
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def stdlib_sample(n: int, seed: int = 0) -> list[str]:
    """`n` standard-library files drawn with `seed`."""
    files = stdlib_files()
    return read_texts(random.Random(seed).sample(files, min(n, len(files))))


def _training_corpus() -> list[str]:
    return stdlib_sample(60, seed=1) + [MULTILINGUAL] * 20


def build_families(folder: Path, corpus: list[str] | None = None, vocab_size: int = 3000) -> dict[str, Path]:
    """Trains one tokenizer per family on `corpus` and writes `folder/<family>.json`."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    folder.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else _training_corpus()
    out: dict[str, Path] = {}

    def save(name: str, tok: Any) -> None:
        out[name] = folder / f"{name}.json"
        tok.save(str(out[name]))

    def byte_level(name: str, pre: Any, specials: list[str], normalizer: Any = None, ignore_merges: bool = False,
                   post: Any = None) -> None:
        tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = post or processors.ByteLevel(trim_offsets=False)
        save(name, tok)

    def split_then_bytes(pattern: str) -> Any:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])

    byte_level("gpt2", pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    byte_level("llama3", split_then_bytes(LLAMA3_PATTERN), ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
               ignore_merges=True,
               post=processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                         processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                                       special_tokens=[("<|begin_of_text|>", 0)])]))
    byte_level("qwen2", split_then_bytes(QWEN2_PATTERN), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
               normalizer=normalizers.NFC())

    # SentencePiece-style: words trained with Metaspace, then laid out as Llama 2's vocabulary
    # (<unk> <s> </s>, the 256 byte-fallback tokens, the rest)
    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                       show_progress=False, limit_alphabet=300))
    trained = json.loads(sp.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    for name, legacy in (("llama2", True), ("mistral", False)):
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
        if legacy:
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                             decoders.Strip(" ", 1, 0)])
        else:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
            tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        save(name, tok)

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>"],
                                                        show_progress=False, limit_alphabet=500))
    save("spbpe", tok)
    return out
