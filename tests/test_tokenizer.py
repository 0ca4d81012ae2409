"""The C++ tokenizer (`tandem.Tokenizer`, cpp/src/tokenizer*.cpp) against Hugging Face
`tokenizers`, token for token: encode (with and without special tokens) and decode (with and
without skipping them), on tokenizers of every supported family trained here with `tokenizers`,
plus the default bundle's, over standard-library files and hard cases; every variant of the
components' options; refusals of what is not supported; UTF-8 errors."""

from __future__ import annotations

import copy
import json
import random
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

from tandem import BundleError, InvalidArgumentError, Tokenizer
from tandem.bench.tokenizer_families import FAMILIES, HARD_CASES, build_families, stdlib_sample

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests/fixtures/tiny/large/tokenizer.json"  # the tiny test-fixture pair's
ALL = (*FAMILIES, "tiny")


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    paths = build_families(tmp_path_factory.mktemp("tokenizers"))
    paths["tiny"] = TINY
    return paths


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return stdlib_sample(16, seed=7) + list(HARD_CASES)


def hf_of(path: Path | str) -> HFTokenizer:
    hf = HFTokenizer.from_file(str(path))
    hf.no_truncation()
    hf.no_padding()
    return hf


def assert_same(ours: Tokenizer, hf: HFTokenizer, texts: list[str], both: bool = True) -> None:
    """Encode with and without special tokens, decode with and without skipping them."""
    for text in texts:
        for add in (True, False) if both else (True,):
            got, want = ours.encode(text, add), hf.encode(text, add_special_tokens=add).ids
            if got != want:
                i = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
                pytest.fail(f"encode({text[:60]!r}..., add_special_tokens={add}) differs at token {i}: "
                            f"{got[max(0, i - 3):i + 4]} vs HF {want[max(0, i - 3):i + 4]}")
        ids = hf.encode(text).ids
        for skip in (True, False):
            assert ours.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip), (text[:60], skip)


@pytest.mark.parametrize("family", ALL)
def test_matches_hugging_face_on_stdlib_and_hard_cases(families, corpus, family):
    ours, hf = Tokenizer(families[family]), hf_of(families[family])
    assert ours.vocab_size == hf.get_vocab_size()
    assert_same(ours, hf, corpus)


@pytest.mark.parametrize("family", ALL)
def test_decodes_any_ids_as_hugging_face(families, family):
    """Random id sequences: split UTF-8 sequences, byte-fallback tokens, specials, ids past the
    vocabulary (skipped)."""
    ours, hf = Tokenizer(families[family]), hf_of(families[family])
    rng = random.Random(3)
    n = hf.get_vocab_size()
    for _ in range(300):
        ids = [rng.randrange(n + 5) for _ in range(rng.randint(1, 12))]
        for skip in (True, False):
            assert ours.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip), (ids, skip)
    for token in ("<|endoftext|>", "<s>", "▁the", "Ġthe", "the", "<0x41>"):
        assert ours.token_to_id(token) == hf.token_to_id(token)
    for i in range(0, n, 97):
        assert ours.id_to_token(i) == hf.id_to_token(i)


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize("family", ["gpt2", "llama3", "qwen2", "llama2", "mistral"])
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_random_text_matches_hugging_face(families, family, text):
    ours, hf = _cached(families[family])
    assert ours.encode(text) == hf.encode(text).ids
    ids = hf.encode(text).ids
    assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


_CACHE: dict[Path, tuple[Tokenizer, HFTokenizer]] = {}


def _cached(path: Path) -> tuple[Tokenizer, HFTokenizer]:
    if path not in _CACHE:
        _CACHE[path] = Tokenizer(path), hf_of(path)
    return _CACHE[path]


@pytest.mark.parametrize("family", ["gpt2", "llama3", "qwen2", "mistral"])
def test_code_points_across_unicode(families, family):
    """One code point in 29 of all of Unicode, each in contexts that exercise the regexes'
    classes (\\p{L}, \\p{N}, \\s), NFC and byte fallback."""
    ours, hf = Tokenizer(families[family]), hf_of(families[family])
    cps = [c for c in range(0x20, 0x110000, 29) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(cps), 512):
        text = "".join(f"x{chr(c)}y {chr(c)}1 {chr(c)}{chr(c)}'{chr(c)}\n" for c in cps[start:start + 512])
        assert ours.encode(text) == hf.encode(text).ids, hex(cps[start])


# ----------------------------------------------------------------------------- variants


def _added(content: str, id: int, **flags: bool) -> dict:  # noqa: A002
    token = dict(id=id, content=content, single_word=False, lstrip=False, rstrip=False, normalized=False,
                 special=False)
    token.update(flags)
    return token


BYTE_LEVEL_NO_REGEX = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _variants(families: dict[str, Path]) -> dict[str, dict]:
    gpt2 = json.loads(families["gpt2"].read_text())
    llama2 = json.loads(families["llama2"].read_text())
    spbpe = json.loads(families["spbpe"].read_text())
    out: dict[str, dict] = {}

    d = copy.deepcopy(gpt2)
    n = len(d["model"]["vocab"])
    d["added_tokens"] += [_added("<mask>", n, lstrip=True, special=True), _added("[SEP]", n + 1, rstrip=True, special=True),
                          _added("word", n + 2, single_word=True), _added("def", n + 3, normalized=True),
                          _added("  ", n + 4, normalized=True), _added("<both>", n + 5, lstrip=True, rstrip=True),
                          _added("ing", n + 6, single_word=True, lstrip=True), _added("é", n + 7),
                          _added("return", 999)]
    out["added_token_flags"] = d
    d = copy.deepcopy(llama2)  # normalized added tokens, matched in their normalized form
    n = len(d["model"]["vocab"])
    d["added_tokens"] += [_added("hello world", n, normalized=True), _added("<tag>", n + 1, normalized=True, special=True),
                          _added("Ünï", n + 2), _added("▁the", n + 3, normalized=True)]
    out["added_tokens_normalized"] = d
    for behavior in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
        for invert in (False, True):
            d = copy.deepcopy(gpt2)
            d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": r"\s+|[,.;:]"}, "behavior": behavior, "invert": invert},
                BYTE_LEVEL_NO_REGEX]}
            out[f"split_{behavior}_{invert}"] = d
    d = copy.deepcopy(gpt2)  # a string pattern, a regex with empty matches, single digits
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": "e"}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": "x*"}, "behavior": "Isolated", "invert": False},
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    out["split_empty_matches_digits"] = d
    d = copy.deepcopy(gpt2)
    d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False}, {"type": "WhitespaceSplit"},
        {"type": "CharDelimiterSplit", "delimiter": "_"}, BYTE_LEVEL_NO_REGEX]}
    out["digits_whitespace_delimiter"] = d
    for name, normalizer in {
        "lowercase": {"type": "Lowercase"},
        "strip": {"type": "Strip", "strip_left": True, "strip_right": True},
        "strip_accents": {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}]},
        "nfkd": {"type": "NFKD"},
        "nmt_nfkc": {"type": "Sequence", "normalizers": [{"type": "Nmt"}, {"type": "NFKC"}]},
        "replace_regex": {"type": "Sequence", "normalizers": [
            {"type": "Replace", "pattern": {"Regex": r"\s+"}, "content": " "},
            {"type": "Replace", "pattern": {"Regex": "x+ ?|y"}, "content": ""}]},
        "byte_level": {"type": "ByteLevel"},
    }.items():
        d = copy.deepcopy(gpt2)
        d["normalizer"] = normalizer
        out[f"normalizer_{name}"] = d
    for scheme in ("first", "always", "never"):
        for split in (True, False):
            d = copy.deepcopy(spbpe)
            d["normalizer"] = None
            d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}
            d["decoder"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split}
            n = len(d["model"]["vocab"])
            d["added_tokens"] += [_added("<s>", n, special=True), _added("[X]", n + 1)]
            out[f"metaspace_{scheme}_{split}"] = d
    d = copy.deepcopy(spbpe)  # a stripped text start is not "first" any more
    d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": True, "strip_right": False},
                                                           {"type": "NFC"}]}
    d["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": True}
    out["metaspace_first_after_strip"] = d
    d = copy.deepcopy(llama2)
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"Regex": "▁+"}, "content": " "}, {"type": "ByteFallback"},
        {"type": "Strip", "content": " ", "start": 0, "stop": 1}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 2, "stop": 0}]}
    out["decoder_regex_strip"] = d
    for fuse in (False, True):
        d = copy.deepcopy(llama2)
        d["model"]["byte_fallback"] = False
        d["model"]["fuse_unk"] = fuse
        out[f"unk_fuse_{fuse}"] = d
    d = copy.deepcopy(llama2)
    d["model"]["ignore_merges"] = True
    out["ignore_merges_metaspace"] = d
    d = copy.deepcopy(gpt2)
    d["post_processor"] = {"type": "BertProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0]}
    out["post_bert"] = d
    d = copy.deepcopy(gpt2)
    d["post_processor"] = {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 0], "cls": ["<|endoftext|>", 0],
                           "trim_offsets": True, "add_prefix_space": False}
    out["post_roberta"] = d
    d = copy.deepcopy(gpt2)
    d["post_processor"] = {"type": "TemplateProcessing", "pair": [], "single": [
        {"SpecialToken": {"id": "X", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
        {"SpecialToken": {"id": "X", "type_id": 0}}],
        "special_tokens": {"X": {"id": "X", "ids": [0, 5, 7], "tokens": ["<|endoftext|>", "a", "b"]}}}
    out["post_template_multi_id"] = d
    d = copy.deepcopy(gpt2)
    d["decoder"] = None
    d["pre_tokenizer"] = None
    out["no_pre_tokenizer_no_decoder"] = d
    d = copy.deepcopy(gpt2)
    d["model"]["merges"] = [" ".join(m) for m in d["model"]["merges"]]
    d["truncation"] = {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0}
    out["string_merges_and_truncation_ignored"] = d
    return out


VARIANTS = (
    "added_token_flags", "added_tokens_normalized", *(f"split_{b}_{i}" for b in (
        "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous") for i in (False, True)),
    "split_empty_matches_digits", "digits_whitespace_delimiter", "normalizer_lowercase", "normalizer_strip",
    "normalizer_strip_accents", "normalizer_nfkd", "normalizer_nmt_nfkc", "normalizer_replace_regex",
    "normalizer_byte_level", *(f"metaspace_{s}_{b}" for s in ("first", "always", "never") for b in (True, False)),
    "metaspace_first_after_strip", "decoder_regex_strip", "unk_fuse_False", "unk_fuse_True",
    "ignore_merges_metaspace", "post_bert", "post_roberta", "post_template_multi_id",
    "no_pre_tokenizer_no_decoder", "string_merges_and_truncation_ignored",
)


@pytest.fixture(scope="module")
def variants(families) -> dict[str, dict]:
    made = _variants(families)
    assert set(made) == set(VARIANTS)
    return made


@pytest.mark.parametrize("name", VARIANTS)
def test_component_options_match_hugging_face(variants, tmp_path, name):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(variants[name], ensure_ascii=False))
    texts = list(HARD_CASES) + stdlib_sample(2, seed=11) + [
        "a <mask> b [SEP]  c word words sword <both>  x testing ing é return def  def",
        "hello world <tag> Ünï ▁the the", "x_y_z 12_34  a\tb", "  xxy yx  ", "e.e,e;e: ee"]
    assert_same(Tokenizer(path), hf_of(path), texts)


# ----------------------------------------------------------------------------- refusals


def _refused(tmp_path: Path, doc: dict, needle: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=needle):
        Tokenizer(path)


@pytest.mark.parametrize(("part", "value", "needle"), [
    ("model", {"type": "WordPiece", "vocab": {"a": 0}, "unk_token": "a"}, "model \"WordPiece\""),
    ("model", {"type": "Unigram", "vocab": [["a", 0.0]]}, "model \"Unigram\""),
    ("pre_tokenizer", {"type": "Whitespace"}, "pre_tokenizer \"Whitespace\""),
    ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [{"type": "BertPreTokenizer"}]}, "\"BertPreTokenizer\""),
    ("normalizer", {"type": "Precompiled", "precompiled_charsmap": ""}, "normalizer \"Precompiled\""),
    ("normalizer", {"type": "BertNormalizer"}, "normalizer \"BertNormalizer\""),
    ("decoder", {"type": "WordPiece", "prefix": "##"}, "decoder \"WordPiece\""),
    ("post_processor", {"type": "Pipeline"}, "post_processor \"Pipeline\""),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "^a"}, "behavior": "Isolated", "invert": False}, "anchor"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": r"\bx"}, "behavior": "Isolated", "invert": False}, r"\\b"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "[[:alpha:]]"}, "behavior": "Isolated", "invert": False},
     "POSIX"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "(?m:x)"}, "behavior": "Isolated", "invert": False},
     "group"),
    ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": False},
     "does not compile"),
])
def test_unsupported_components_are_refused_by_name(families, tmp_path, part, value, needle):
    doc = json.loads(families["gpt2"].read_text())
    if part == "model":
        doc["model"] = value
    else:
        doc[part] = value
    _refused(tmp_path, doc, needle)


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("dropout", 0.1, "dropout"), ("continuing_subword_prefix", "##", "continuing_subword_prefix"),
    ("end_of_word_suffix", "</w>", "end_of_word_suffix"), ("unk_token", "<nope>", "unk_token"),
])
def test_unsupported_bpe_options_are_refused(families, tmp_path, key, value, needle):
    doc = json.loads(families["gpt2"].read_text())
    doc["model"][key] = value
    _refused(tmp_path, doc, needle)


def test_malformed_files_raise_bundle_errors(families, tmp_path):
    with pytest.raises(BundleError, match="no tokenizer file"):
        Tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Tokenizer(tmp_path / "bad.json")
    doc = json.loads(families["gpt2"].read_text())
    doc["model"]["merges"].append(["nope", "neither"])
    _refused(tmp_path, doc, "not in the vocabulary")
    doc = json.loads(families["gpt2"].read_text())
    doc["model"]["vocab"]["x"] = -3
    _refused(tmp_path, doc, "out of range")


# --------------------------------------------------------------------------- text errors


def test_invalid_text_raises_invalid_argument(families):
    tok = Tokenizer(families["gpt2"])
    assert tok.encode("naïve".encode()) == tok.encode("naïve")
    with pytest.raises(InvalidArgumentError, match=r"not valid UTF-8 \(byte 2 of 4"):
        tok.encode(b"ab\xffc")
    with pytest.raises(InvalidArgumentError, match="byte 1"):
        tok.encode(b"a\xed\xa0\x80")  # an encoded surrogate
    with pytest.raises(InvalidArgumentError, match="lone surrogate"):
        tok.encode("a\udc80b")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        tok.decode([1, -1])
    with pytest.raises(InvalidArgumentError, match="integer token ids"):
        tok.decode(["a"])
    with pytest.raises(TypeError, match="str or UTF-8 bytes"):
        tok.encode(3)  # type: ignore[arg-type]


def test_shared_across_threads(families, corpus):
    tok = Tokenizer(families["llama3"])
    expected = [tok.encode(t) for t in corpus]
    results: dict[int, list[list[int]]] = {}

    def work(k: int) -> None:
        results[k] = [tok.encode(t) for t in corpus[k:] + corpus[:k]]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert results[k] == expected[k:] + expected[:k]


def test_folder_and_string_constructors(families, tmp_path):
    (tmp_path / "tokenizer.json").write_text(families["gpt2"].read_text())
    by_folder = Tokenizer(tmp_path)
    by_text = Tokenizer.from_str(families["gpt2"].read_text())
    assert by_folder.encode("def f(x): return x") == by_text.encode("def f(x): return x")
    assert "vocab_size=" in repr(by_folder)


def test_speed_benchmark_writes_results(tmp_path):
    """The encode-speed benchmark (bench/tokenizer_speed.py) on a few files: tables, identical ids."""
    from tandem.bench.tokenizer_speed import main

    assert main(["--files", "4", "--repeats", "1", "--families", "tiny", "--out", str(tmp_path),
                 "--wait-idle", "0"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["rows"]
    assert row["identical_files"] == row["files"] == 4
    assert row["tokens"] > 0 and len(row["hf_warm_s"]) == len(row["tandem_warm_s"]) == 1
    assert "| tiny |" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit):
        main(["--families", "nope"])


# ------------------------------------------------------------------ detokenizer, stop strings


def _stream(tok: Tokenizer, ids: list[int], rng: random.Random, stop: list[str] | None = None) -> tuple[list[str], object]:
    """ids pushed in random chunks through the C++ detokenizer; the pieces and the detokenizer."""
    from tandem import _core

    detok = _core.Detokenizer(tok._tok, stop or [], True)
    pieces, i = [], 0
    while i < len(ids):
        n = rng.randint(1, 4)
        pieces.append(detok.push(ids[i:i + n]))
        i += n
        if detok.stopped:
            break
    pieces.append(detok.finish())
    return pieces, detok


@pytest.mark.parametrize("family", ALL)
def test_detokenizer_pieces_add_up_to_decode(families, family):
    """Any ids (split characters, byte-fallback runs, special tokens, unknown ids), pushed in
    chunks: the pieces add up to decode(ids), and no piece but the last ends in U+FFFD."""
    tok = Tokenizer(families[family])
    rng = random.Random(5)
    n = tok.vocab_size
    streams = [tok.encode(t, add_special_tokens=False) for t in HARD_CASES[10:20]]
    streams += [[rng.randrange(n + 2) for _ in range(rng.randint(1, 40))] for _ in range(150)]
    for ids in streams:
        pieces, detok = _stream(tok, ids, rng)
        assert "".join(pieces) == detok.text == tok.decode(ids), ids
        assert not any(p.endswith("\ufffd") for p in pieces[:-1])
        assert list(detok.ids) == ids and not detok.stopped


@pytest.mark.parametrize("family", ["gpt2", "llama2", "mistral", "qwen2"])
def test_detokenizer_stops_before_the_first_stop_string(families, family):
    tok = Tokenizer(families[family])
    rng = random.Random(9)
    texts = stdlib_sample(3, seed=5) + [HARD_CASES[10]]
    for trial in range(60):
        text = rng.choice(texts)
        start = rng.randrange(max(1, len(text) - 400))
        ids = tok.encode(text[start:start + 400], add_special_tokens=False)
        full = tok.decode(ids)
        i = rng.randrange(len(full))
        stop = full[i:i + rng.randint(1, 6)]
        if "\ufffd" in stop:
            continue
        others = ["\x00never", stop + "\x01"] if trial % 2 else []
        pieces, detok = _stream(tok, ids, rng, [*others, stop])
        cut = full.find(stop)
        assert "".join(pieces) == detok.text == full[:cut], (stop, full[:80])
        assert detok.stopped
    pieces, detok = _stream(tok, tok.encode("no such text here"), rng, ["zzz\u2603"])
    assert "".join(pieces) == detok.text == tok.decode(tok.encode("no such text here")) and not detok.stopped


def test_detokenizer_errors(families):
    from tandem import _core

    tok = Tokenizer(families["gpt2"])
    with pytest.raises(InvalidArgumentError, match="non-empty"):
        _core.Detokenizer(tok._tok, [""], True)
    with pytest.raises(InvalidArgumentError, match="need the bundle's tokenizer"):
        _core.Detokenizer(None, ["x"], True)
    assert _core.Detokenizer(None, [], True).push([1, 2]) == ""


def test_export_refuses_a_tokenizer_the_runtime_cannot_run(tmp_path):
    """The exporter loads tokenizer.json with the C++ tokenizer: an unsupported one fails the
    export, naming the component, before anything is written."""
    from tiny_models import tiny_large
    from tokenizers import models as hf_models

    from tandem import ExportError
    from tandem.export.bundle import export_bundle

    folder = tmp_path / "tok"
    folder.mkdir()
    HFTokenizer(hf_models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(folder / "tokenizer.json"))
    out = tmp_path / "bundle"
    with pytest.raises(ExportError, match="runtime cannot use this tokenizer.*model \"WordPiece\""):
        export_bundle(tiny_large("llama", num_layers=1), out, tokenizer=folder, progress=None)
    assert not out.exists()


def test_stream_pieces_add_up_to_the_text(pair):
    """The Python API streams through the C++ detokenizer: the pieces add up to the result's
    text, which is the decode of the generated ids, cut before a stop string."""
    from tandem import load

    model = load(pair.bundle, threads=1)
    prompt = "def add(a, b):\n    return"
    options = dict(mode="speed", block_length=3, max_new_tokens=30, ignore_eos=True)
    stream = model.stream(prompt, **options)
    pieces = list(stream)
    full = stream.result
    assert "".join(pieces) == full.text == model.decode(full.ids) == model.tokenizer.decode(full.ids)
    assert full.prompt_ids == model.encode(prompt) == hf_of(pair.bundle / "tokenizer.json").encode(prompt).ids
    i = len(full.text) // 2
    while "\ufffd" in full.text[i:i + 3]:  # a stop string of whole characters
        i += 1
    stop = full.text[i:i + 3]
    assert len(stop) == 3
    stream = model.stream(prompt, stop=["\x00nowhere", stop], **options)
    pieces = list(stream)
    assert "".join(pieces) == stream.result.text == full.text[:full.text.find(stop)]
    assert stream.result.finish_reason == "stop"
    assert full.ids[:len(stream.result.ids)] == stream.result.ids
    with pytest.raises(InvalidArgumentError, match="not valid Unicode"):
        model.generate(prompt, stop="\ud800")
