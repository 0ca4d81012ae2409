"""The tiny test-fixture pair: `tests/fixtures/tiny/` (a 4M-parameter Llama M_L trained on the
CPython standard library, a tandem and a plain drafter; see its MODEL_CARD.md) and `bundle/`, the
pair exported at fp32 and committed, so tests, benchmarks and scripts have a real trained pair
that loads in milliseconds. tests/test_default_bundle.py holds the committed bundle byte for
byte against a fresh export; after a weight, exporter or manifest change regenerate it with

    make tiny-bundle          # = .venv/bin/python tests/tiny_bundle.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "tiny"
TINY_BUNDLE = TINY / "bundle"


def export_tiny_bundle(out: Path = TINY_BUNDLE) -> Path:
    """Export the tiny pair's weights to `out` (needs the torch extra: the export validates
    against the PyTorch reference). Written next to `out` and moved into place at the end."""
    from tandem.export.bundle import export_bundle

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain = TINY / "plain"
    export_bundle(TINY / "large", tmp, tandem=TINY / "tandem", plain=plain if plain.is_dir() else None,
                  tokenizer=TINY / "large")
    _relative_sources(tmp / "tandem.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _relative_sources(manifest: Path) -> None:
    """The provenance names the weight folders relative to the repository, not as absolute
    paths of the machine that exported it: the committed bundle is then the same in every
    checkout."""
    data = json.loads(manifest.read_text())
    for record in data.get("provenance", {}).values():
        if isinstance(record, dict) and record.get("source"):
            source = Path(record["source"]).resolve()
            if source.is_relative_to(ROOT):
                record["source"] = str(source.relative_to(ROOT))
    manifest.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    print(f"tiny fixture bundle written to {export_tiny_bundle()}", file=sys.stderr)
