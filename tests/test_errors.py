"""Bad input is refused with a typed error whose message says what to fix; never a crash.

Bundles are corrupted in copies of the session's `pair` bundle. Each bundle case runs
through both loaders: the Python API (`tandem.runtime.load`, which reads the manifest through
the C++ reader and then checks the tokenizer and chat template) and the bare C++ core
(`tandem._core.Model`), which desktop apps use without Python.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tandem import _core
from tandem.errors import (
    BundleError,
    DeviceUnavailableError,
    ExportError,
    InvalidArgumentError,
    TandemError,
    TrainingError,
)
from tandem.runtime import load, max_threads


def load_python(path: Path):
    return load(path, threads=1)


def load_core(path: Path):
    return _core.Model(str(path), threads=1)


LOADERS = [pytest.param(load_python, id="python"), pytest.param(load_core, id="core")]


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


@pytest.fixture
def bundle(pair, tmp_path) -> Path:
    """A private copy of the pair bundle, free to corrupt."""
    dst = tmp_path / "bundle"
    shutil.copytree(pair.bundle, dst)
    return dst


def edit_manifest(folder: Path, change: Callable[[dict], None]) -> None:
    path = folder / "tandem.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --------------------------------------------------------------------------- bundles


def _drop(key: str) -> Callable[[dict], None]:
    return lambda d: d.pop(key)


def _graph(role: str, key: str, value) -> Callable[[dict], None]:
    return lambda d: d["graphs"][role].__setitem__(key, value)


def _set(key: str, value) -> Callable[[dict], None]:
    return lambda d: d.__setitem__(key, value)


def _all_vocab(value: int) -> Callable[[dict], None]:
    def change(d: dict) -> None:
        d["vocab_size"] = value
        for spec in d["graphs"].values():
            spec["vocab_size"] = value
    return change


def _swap_past_names(d: dict) -> None:
    spec = d["graphs"]["large"]
    spec["past_keys"][0], spec["past_values"][0] = spec["past_values"][0], "past.0.kee"


MANIFEST_CASES = {
    # name: (change, message regex)
    "format_version": (_set("format_version", 1), "format_version 1 is not supported.*re-export"),
    "not_a_manifest": (_set("format", "something-else"), "not a tandem manifest"),
    "missing_vocab": (_drop("vocab_size"), "vocab_size"),
    "missing_graphs": (_drop("graphs"), "graphs"),
    "missing_graph_key": (lambda d: d["graphs"]["large"].pop("num_layers"), "num_layers"),
    "wrong_type": (_set("context_length", "long"), "context_length"),
    "graph_vocab_disagrees": (_graph("tandem_drafter", "vocab_size", 301), "vocab"),
    "graph_io_name": (_swap_past_names, "past.0.kee"),
    "graph_dims": (_graph("large", "num_kv_heads", 4), "shape|dims"),
    "graph_hidden": (_graph("large", "hidden_size", 48), "shape|dims|hidden"),
    "vocab_vs_graphs": (_all_vocab(301), "shape|dims|vocab"),
    "graph_outside": (_graph("large", "file", "../large.onnx"), "outside the bundle"),
    "graph_absolute": (_graph("large", "file", "/etc/hostname"), "relative"),
    "tokenizer_outside": (_set("tokenizer", "../tok/tokenizer.json"), "outside the bundle"),
    "graph_missing": (_graph("plain_drafter", "file", "nothere.onnx"), "missing"),
    "unknown_role": (lambda d: d["graphs"].__setitem__("huge", d["graphs"]["plain_drafter"]), "huge|unexpected"),
    "eos_outside_vocab": (_set("eos_token_ids", [300]), "eos|vocab"),
    "block_lengths": (_set("default_block_length", 99), "block_length"),
    "missing_length_input": (lambda d: d["graphs"]["large"].pop("seqlens_k"), "seqlens_k"),
    "wrong_length_input": (_graph("tandem_drafter", "total_sequence_length", "total"), "total"),
    "wrong_logits_from": (_graph("plain_drafter", "logits_from", "first_logit"), "first_logit"),
    "kv_dtype": (_graph("large", "kv_dtype", "bfloat16"), "kv_dtype"),
    "kv_dtype_disagrees": (_graph("large", "kv_dtype", "float16"), "element type"),
    "huge_dims": (_graph("large", "num_layers", 10**6), "out of range"),
    "huge_context": (_set("context_length", 2**40), "context_length"),
    "huge_block": (_set("max_block_length", 10**6), "block_length"),
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_inconsistent_manifest_is_refused(bundle, loader, case):
    change, message = MANIFEST_CASES[case]
    (bundle.parent / "large.onnx").write_bytes((bundle / "large.onnx").read_bytes())  # for ../
    (bundle.parent / "tok").mkdir()
    shutil.copy(bundle / "tokenizer.json", bundle.parent / "tok" / "tokenizer.json")
    edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=message):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
def test_missing_folder_and_files(bundle, loader, tmp_path):
    with pytest.raises(BundleError, match="not found.*export"):
        loader(tmp_path / "nowhere")
    (bundle / "plain_drafter.onnx").unlink()
    with pytest.raises(BundleError, match="plain_drafter.onnx.*missing"):
        loader(bundle)
    (bundle / "tandem.json").unlink()
    with pytest.raises(BundleError, match="no tandem.json"):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("content", ["", "{", "[1, 2]", "\xff\xfe", "null"], ids=repr)
def test_manifest_not_json(bundle, loader, content):
    (bundle / "tandem.json").write_text(content, encoding="latin-1")
    with pytest.raises(BundleError, match="JSON|not a tandem manifest"):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped"])
@pytest.mark.parametrize("role", ["large", "tandem_drafter"])
def test_corrupt_graph(bundle, loader, damage, role):
    path = bundle / f"{role}.onnx"
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "garbage":
        data = bytes(range(256)) * 64
    else:  # the first bytes of the protobuf: field tags and lengths
        data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
    path.write_bytes(data)
    with pytest.raises(BundleError, match=f"{role}.onnx.*(corrupt|re-export)"):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
def test_graph_of_another_role(bundle, loader):
    """tandem_drafter.onnx replaced by the plain drafter: it lacks M_S's memory inputs."""
    shutil.copy(bundle / "plain_drafter.onnx", bundle / "tandem_drafter.onnx")
    with pytest.raises(BundleError, match="tandem_drafter.onnx has no input named .*re-export"):
        loader(bundle)


@pytest.mark.parametrize("loader", LOADERS)
def test_symlink_out_of_bundle_is_refused(bundle, loader, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "large.onnx", outside)
    os.symlink(outside, bundle / "large.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        loader(bundle)


def _externalize(bundle: Path, location: Callable[[Path], str]) -> int:
    """Moves large.onnx's big initializers into an external file and points them at `location`."""
    import onnx
    from onnx import external_data_helper

    path = bundle / "large.onnx"
    proto = onnx.load(path)
    external_data_helper.convert_model_to_external_data(
        proto, all_tensors_to_one_file=True, location="weights.bin", size_threshold=4096)
    onnx.save_model(proto, path)
    proto = onnx.load(path, load_external_data=False)
    count = 0
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location(bundle)
                count += 1
    path.write_bytes(proto.SerializeToString())  # onnx.save refuses such paths itself
    return count


def test_external_data_inside_bundle_loads(bundle, model):
    assert _externalize(bundle, lambda b: "weights.bin") > 0
    got = load(bundle, threads=1).generate([1, 2, 3], mode="large", max_new_tokens=5, ignore_eos=True)
    assert got.ids == model.generate([1, 2, 3], mode="large", max_new_tokens=5, ignore_eos=True).ids


EXTERNAL_CASES = {
    "parent": lambda b: "../weights.bin",
    "absolute": lambda b: str(b.parent / "weights.bin"),
    "dotdot_inside": lambda b: "sub/../../weights.bin",
    "symlink": lambda b: "link.bin",
}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("case", sorted(EXTERNAL_CASES))
def test_external_data_outside_bundle_is_refused(bundle, loader, case):
    assert _externalize(bundle, EXTERNAL_CASES[case]) > 0
    shutil.move(bundle / "weights.bin", bundle.parent / "weights.bin")
    if case == "symlink":
        os.symlink(bundle.parent / "weights.bin", bundle / "link.bin")
    with pytest.raises(BundleError, match="external data.*outside the bundle"):
        loader(bundle)


def test_tokenizer_problems(bundle, tmp_path):
    from tiny_models import tiny_tokenizer

    big = tiny_tokenizer(tmp_path / "big", vocab_size=400)
    shutil.copy(big / "tokenizer.json", bundle / "tokenizer.json")
    with pytest.raises(BundleError, match=r"\d+ tokens.*300.*another model"):
        load(bundle, threads=1)
    (bundle / "tokenizer.json").write_text("{broken")
    with pytest.raises(BundleError, match="not a valid tokenizer"):
        load(bundle, threads=1)


# --------------------------------------------------------------------------- parameters

PARAM_CASES = [
    (dict(block_length=-3), "block_length"),
    (dict(block_length=9), r"block_length must be in \[1, 8\]"),
    (dict(block_length=2**40), "block_length"),
    (dict(block_length="fast"), "block_length.*'auto'"),
    (dict(block_length="auto", max_block_length=9), "max_block_length"),
    (dict(block_length="auto", min_block_length=-1), "min_block_length"),
    (dict(block_length="auto", draft_cost=float("nan")), "draft_cost"),
    (dict(block_length="auto", verify_cost=float("inf")), "verify_cost"),
    (dict(block_length="auto", min_block_length=5, max_block_length=3), "max_block_length"),
    (dict(block_length="auto", router_threshold=float("nan")), "router_threshold"),
    (dict(block_length="auto", mode="tandem"), "adaptive.*speed and vanilla"),
    (dict(temperature=-1.0, do_sample=True), "temperature"),
    (dict(temperature=0.0, do_sample=True), "temperature"),
    (dict(temperature=float("nan"), do_sample=True), "temperature"),
    (dict(temperature=float("inf"), do_sample=True), "temperature"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_p=-0.1), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-1), "top_k must be"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=2**40), "max_new_tokens"),
    (dict(seed=-1), "seed"),
    (dict(seed=2**64), "seed"),
    (dict(mode="fast"), "unknown mode 'fast'"),
    (dict(eos_token_id=300), "eos_token_id.*vocabulary"),
    (dict(eos_token_id=2**70), "eos_token_id.*vocabulary"),
    (dict(stop=[""]), "stop strings"),
    (dict(eos_token_id="x"), "eos_token_id must be a token id"),
    (dict(eos_token_id=1, eos_token_ids=[2]), "not both"),
    (dict(top_k="3"), r"top_k='3' is not a value of this option \(int >= 0"),
    (dict(beam_width=4), "unknown generation option 'beam_width' .*max_new_tokens"),
]


@pytest.mark.parametrize(("kwargs", "message"), PARAM_CASES, ids=[repr(k) for k, _ in PARAM_CASES])
def test_bad_parameters(model, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        model.generate([1, 2, 3], max_new_tokens=kwargs.pop("max_new_tokens", 4), **kwargs)
    # the model is still fine
    assert len(model.generate([1, 2, 3], max_new_tokens=3, ignore_eos=True).ids) == 3


CORE_CASES = [  # straight to the C++ core (GenerateOptions + Generator), without the Python API
    (dict(block_length=-1), "block_length"),
    (dict(block_length=9), "block_length"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(mode="turbo"), "unknown mode"),
    (dict(mode="speed", adaptive=True, max_block_length=9), "max_block_length"),
    (dict(mode="speed", adaptive=True, min_block_length=-1), "min_block_length"),
    (dict(mode="speed", adaptive=True, draft_cost=float("-inf")), "draft_cost"),
    (dict(mode="speed", adaptive=True, router_threshold=float("nan")), "router_threshold"),
    (dict(mode="large", adaptive=True), "adaptive"),
    (dict(eos_token_ids=[-1]), "eos"),
]


@pytest.mark.parametrize(("kwargs", "message"), CORE_CASES, ids=[repr(k) for k, _ in CORE_CASES])
def test_bad_parameters_core(model, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        _core.Generator(model._model, [1, 2, 3], _core.GenerateOptions(**kwargs))


def test_modes_the_bundle_lacks(bundle):
    def drop(role: str) -> Callable[[dict], None]:
        return lambda d: d["graphs"].pop(role)

    edit_manifest(bundle, drop("plain_drafter"))
    m = load(bundle, threads=1)
    assert "vanilla" not in m.modes
    assert m.has_router("speed") and not m.has_router("vanilla") and not m.has_router("large")
    with pytest.raises(InvalidArgumentError, match="vanilla needs a plain drafter.*--plain"):
        m.generate([1, 2], mode="vanilla")
    edit_manifest(bundle, drop("tandem_drafter"))
    m = load(bundle, threads=1)
    for mode in ("speed", "tandem"):
        with pytest.raises(InvalidArgumentError, match=f"{mode} needs a tandem drafter.*--tandem"):
            m.generate([1, 2], mode=mode)
    assert m.generate([1, 2], max_new_tokens=2, ignore_eos=True).stats["drafter_calls"] == 0


def test_device_and_threads(pair):
    with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider.*onnxruntime-gpu.*cpu"):
        load(pair.bundle, device="cuda")
    with pytest.raises(DeviceUnavailableError, match="CUDAExecutionProvider"):
        _core.Model(str(pair.bundle), device="cuda")
    with pytest.raises(InvalidArgumentError, match="device"):
        load(pair.bundle, device="tpu")
    with pytest.raises(InvalidArgumentError, match="device"):
        _core.Model(str(pair.bundle), device="tpu")
    for threads in (-1, 2**40):
        with pytest.raises(InvalidArgumentError, match="threads"):
            load(pair.bundle, threads=threads)
    with pytest.raises(InvalidArgumentError, match="intra_op_threads"):
        _core.Model(str(pair.bundle), threads=-1)


# Thread counts past the cap: ONNX Runtime would start them all while loading (10**6 hangs).
# Each probe runs in a child process with a timeout, so a regression fails instead of hanging.
THREAD_PROBE = """
import json, sys
from tandem import _core
from tandem.errors import InvalidArgumentError
from tandem.runtime import load
bundle, out = sys.argv[1], {}
for name, call in [
    ("threads", lambda: load(bundle, threads=10**6)),
    ("drafter_threads", lambda: load(bundle, drafter_threads=10**6)),
    ("default_bundle", lambda: load(threads=10**6)),
    ("core_threads", lambda: _core.Model(bundle, threads=10**6)),
    ("core_drafter_threads", lambda: _core.Model(bundle, drafter_threads=10**6)),
]:
    try:
        call()
        out[name] = "loaded"
    except InvalidArgumentError as exc:
        out[name] = str(exc)
print(json.dumps(out))
"""


def _child(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300)


def test_thread_counts_past_the_cap_are_refused(pair):
    got = _child(["-c", THREAD_PROBE, str(pair.bundle)])
    assert got.returncode == 0, got.stderr
    refused = json.loads(got.stdout)
    cap = max_threads()
    assert cap >= 64 and cap == _core.max_threads()
    # one check, the C++ core's, names each front end's own option and how the cap is set
    tail = (f"is above the cap of {cap} threads on this machine (4 per hardware thread, at least 64): "
            f"pass a count from 1 to {cap}, or 0 for")
    assert refused["threads"] == f"threads=1000000 {tail} one per core"
    assert refused["default_bundle"] == refused["threads"], "refused before the default bundle is exported"
    assert refused["drafter_threads"] == f"drafter_threads=1000000 {tail} as threads"
    assert refused["core_threads"] == f"intra_op_threads=1000000 {tail} one per core"
    assert refused["core_drafter_threads"] == f"drafter_threads=1000000 {tail} as intra_op_threads"


def test_thread_counts_up_to_the_cap_load(pair, tmp_path):
    cap = max_threads()
    for kwargs in (dict(threads=cap + 1), dict(drafter_threads=cap + 1)):
        with pytest.raises(InvalidArgumentError, match=f"threads={cap + 1} is above the cap of {cap}"):
            load(pair.bundle, **kwargs)
        with pytest.raises(InvalidArgumentError, match=f"threads={cap + 1} is above the cap of {cap}"):
            _core.Model(str(pair.bundle), **kwargs)
    # the cap itself passes the check (a missing bundle is what fails: loading `cap` threads
    # for real is slow on a small machine)
    with pytest.raises(BundleError):
        load(tmp_path / "missing", threads=cap, drafter_threads=cap)
    with pytest.raises(BundleError):
        _core.Model(str(tmp_path / "missing"), threads=cap, drafter_threads=cap)
    got = load(pair.bundle, threads=2, drafter_threads=2).generate([1, 2, 3], mode="speed", max_new_tokens=4,
                                                                      ignore_eos=True)
    assert len(got.ids) == 4


@pytest.mark.parametrize(("argv", "name"), [
    (["-m", "tandem.cli", "generate", "{bundle}", "--ids", "1,2", "--threads", "1000000"], "threads"),
    (["-m", "tandem.demo", "--bundle", "{bundle}", "--threads", "1000000"], "threads"),
    (["-m", "tandem.cli", "reps", "--large", "{bundle}", "--data", "{bundle}", "--out", "{bundle}/never",
      "--threads", "1000000"], "--threads"),
], ids=["generate", "demo", "reps"])
def test_cli_refuses_thread_counts_past_the_cap(pair, argv, name):
    got = _child([a.format(bundle=pair.bundle) for a in argv])
    assert got.returncode == 1
    assert got.stderr.startswith(f"error: {name}=1000000 is above the cap of {max_threads()} threads"), got.stderr
    assert "Traceback" not in got.stderr and got.stdout == ""
    assert not (pair.bundle / "never").exists()


# --------------------------------------------------------------------------- prompts

PROMPT_CASES = [
    ([], "empty"),
    ("", "empty"),
    (b"", "empty"),
    ([300], r"token id 300 is outside the vocabulary \[0, 300\)"),
    ([1, -1], "token id -1"),
    ([2**63], "outside the vocabulary"),
    ([2**70], "outside the vocabulary"),
    (["a"], "sequence of token ids"),
    (list(range(64)), "64 tokens but the context holds 64.*shorten"),
    ([1] * 1000, "1000 tokens.*shorten"),
    (b"\xff\xfe", "not valid UTF-8"),
    (b"ok \xc3", "not valid UTF-8"),
    ("a\ud800b", "not valid Unicode"),
]


@pytest.mark.parametrize(("prompt", "message"), PROMPT_CASES, ids=[repr(p)[:24] for p, _ in PROMPT_CASES])
def test_bad_prompts(model, prompt, message):
    with pytest.raises(InvalidArgumentError, match=message):
        model.generate(prompt, max_new_tokens=4)


@pytest.mark.parametrize(("prompt", "message"), [([], "empty"), ([300], "outside"), ([-5], "outside"),
                                                 (list(range(64)), "shorten")])
def test_bad_prompts_core(model, prompt, message):
    with pytest.raises(InvalidArgumentError, match=message):
        _core.Generator(model._model, prompt)


def test_longest_prompt_is_accepted(model):
    got = model.generate(list(range(63)), mode="speed", max_new_tokens=10, ignore_eos=True)
    assert len(got.ids) == 1 and got.finish_reason == "length"


def test_errors_are_typed():
    """Every error is a TandemError; argument errors are also ValueErrors."""
    for cls in (BundleError, InvalidArgumentError, DeviceUnavailableError, ExportError, TrainingError):
        assert issubclass(cls, TandemError)
    assert issubclass(InvalidArgumentError, ValueError)


# --------------------------------------------------------------------------- exporter / trainer


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300, n_positions=64)).eval()


def test_export_refuses_unsupported_architecture(tmp_path):
    from tiny_models import tiny_large

    from tandem.export.bundle import export_bundle

    with pytest.raises(ExportError, match="M_L is a 'gpt2' model; tandem builds llama, qwen2, mistral"):
        export_bundle(_gpt2(), tmp_path / "b", progress=None)
    with pytest.raises(ExportError, match="plain M_S is a 'gpt2' model.*llama"):
        export_bundle(tiny_large("llama"), tmp_path / "b", plain=_gpt2(), progress=None)
    assert list(tmp_path.iterdir()) == [], "refused before writing anything"


def test_export_refuses_other_vocabulary(tmp_path):
    from tiny_models import tiny_large

    from tandem.export.bundle import export_bundle

    other = tiny_large("llama", vocab_size=320)
    with pytest.raises(ExportError, match="vocab size 320 but M_L has 300.*tokenizer"):
        export_bundle(tiny_large("llama"), tmp_path / "b", plain=other, progress=None)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_tokenizer_of_another_model(tmp_path):
    from tiny_models import tiny_large, tiny_tokenizer

    from tandem.export.bundle import export_bundle

    big = tiny_tokenizer(tmp_path / "tok", vocab_size=400)
    with pytest.raises(ExportError, match=r"tokenizer has \d+ tokens.*300"):
        export_bundle(tiny_large("llama", num_layers=1), tmp_path / "b", tokenizer=big, validate=False,
                      progress=None)


def test_trainer_builders_refuse_mismatched_models():
    from tiny_models import tiny_config, tiny_large

    from tandem.train.model import create_drafter, create_drafter_config, create_tandem

    large = tiny_large("llama")
    with pytest.raises(TrainingError, match="vocab size 320 but M_L has 300"):
        create_drafter(large, tiny_config("llama", vocab_size=320))
    with pytest.raises(TrainingError, match="vocab size 320"):
        create_tandem(large, tiny_config("qwen2", vocab_size=320))
    with pytest.raises(TrainingError, match="'gpt2'"):
        create_drafter_config(_gpt2().config, num_layers=1, hidden_size=16)


def test_trainer_refuses_models_of_another_large(tmp_path):
    from tiny_models import tiny_config, tiny_corpus, tiny_large, tiny_model, tiny_tokenizer

    from tandem.train.data import Corpus, TextTokenizer
    from tandem.train.model import create_drafter_config, create_tandem
    from tandem.train.trainer import TrainConfig, Trainer

    corpus = Corpus.build([tiny_corpus(tmp_path / "files")], TextTokenizer.load(tiny_tokenizer(tmp_path / "tok")))
    config = TrainConfig(mode="plain", steps=1, batch_size=2, seq_len=8, device="cpu")
    large = tiny_large("llama")
    with pytest.raises(TrainingError, match="vocab size 320 but M_L has 300"):
        Trainer(tiny_model(tiny_config("llama", vocab_size=320)), large, corpus, config,
                tmp_path / "a")
    other = tiny_large("llama", num_layers=3)
    tandem = create_tandem(other, create_drafter_config(other.config, 1, 32))
    with pytest.raises(TrainingError, match="built for an M_L of width .* and 3 layers"):
        Trainer(tandem, large, corpus, TrainConfig(mode="tandem", steps=1, batch_size=2, seq_len=8, device="cpu"),
                tmp_path / "b")


def test_export_refuses_drafter_with_another_tokenizer(tmp_path):
    from tiny_models import tiny_large, tiny_large_folder

    from tandem.export.bundle import export_bundle
    from tandem.train.data import train_tokenizer

    large = tiny_large_folder(tmp_path / "large", "llama", num_layers=1)
    plain = tmp_path / "plain"
    tiny_large("llama", seed=5, num_layers=1).save_pretrained(plain)
    train_tokenizer(["completely different words " * 50, "zebra quartz jukebox " * 50], 300, plain)
    with pytest.raises(ExportError, match="plain M_S ships a tokenizer .* differs from M_L's"):
        export_bundle(large, tmp_path / "b", plain=plain, progress=None)
    assert not list((tmp_path / "b").glob("*.onnx")), "refused before writing any graph"
