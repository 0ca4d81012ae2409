"""The default bundle shipped in the package: present, loadable without torch, and equal byte
for byte to a fresh export of the shipped weights (so a weight, exporter or manifest change
without `make default-bundle` fails here)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.errors import BundleError
from tandem.runtime import default


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_bundle_equals_a_fresh_export(tmp_path):
    pytest.importorskip("torch")
    fresh = default.export_default_bundle(tmp_path / "bundle")
    shipped, exported = _digests(default.default_bundle()), _digests(fresh)
    stale = sorted(k for k in shipped.keys() | exported.keys() if shipped.get(k) != exported.get(k))
    assert not stale, f"the shipped default bundle is stale in {stale}: run `make default-bundle`"


def test_default_model_loads_without_torch():
    """tandem.load() on the shipped bundle in a process where torch cannot be imported."""
    code = (
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'onnx'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
        "import tandem\n"
        "r = tandem.load(threads=1).generate('def f(x):', mode='speed', max_new_tokens=8)\n"
        "assert len(r.ids) == 8, r\n"
        "assert 'torch' not in sys.modules\n"
        "print(r.ids)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_missing_default_bundle_is_a_bundle_error(monkeypatch, tmp_path):
    monkeypatch.setattr(default, "BUNDLE", tmp_path / "absent")
    with pytest.raises(BundleError, match="default bundle is missing"):
        default.default_bundle()
