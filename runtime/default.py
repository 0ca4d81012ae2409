"""The embedded default model pair.

`tandem/models/default/` holds the PyTorch weights (`large/`, `tandem/`, `plain/`: for training
and re-export) and `bundle/`, the pair exported to ONNX, so that `tandem.load()` works right
after a plain `pip install`, without torch. `make default-bundle` re-exports the bundle from the
weights; a test holds the shipped bundle byte for byte against a fresh export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import tandem
from tandem.errors import BundleError

# tandem/models/default: in the source tree and in an installed wheel
WEIGHTS = Path(tandem.__file__).resolve().parent / "models" / "default"
BUNDLE = WEIGHTS / "bundle"


def weights_dir() -> Path:
    return WEIGHTS


def default_bundle() -> Path:
    """Path of the shipped default bundle."""
    if not (BUNDLE / "tandem.json").is_file():
        raise BundleError(
            f"the default bundle is missing from {BUNDLE}; reinstall tandem, run "
            "`make default-bundle` in a source checkout, or pass a bundle path "
            "(see `tandem export --help`)"
        )
    return BUNDLE


def export_default_bundle(out: Path = BUNDLE) -> Path:
    """Exports the default pair from its PyTorch weights to `out` (needs the torch extra).

    The bundle is written next to `out` and moved into place at the end, so a failure leaves
    the previous bundle as it was."""
    try:
        from tandem.export.bundle import export_bundle
    except ModuleNotFoundError as exc:
        raise BundleError(
            "exporting the default bundle needs the PyTorch side: "
            "pip install 'tandem-runtime[torch]'"
        ) from exc
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain = WEIGHTS / "plain"
    export_bundle(
        WEIGHTS / "large", tmp, tandem=WEIGHTS / "tandem",
        plain=plain if plain.is_dir() else None, tokenizer=WEIGHTS / "large",
    )
    _relative_sources(tmp / "tandem.json")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _relative_sources(manifest: Path) -> None:
    """The provenance names the weight folders relative to the package, not as absolute paths of
    the machine that exported it: the shipped bundle is then the same in every checkout."""
    data = json.loads(manifest.read_text())
    for record in data.get("provenance", {}).values():
        if isinstance(record, dict) and record.get("source"):
            source = Path(record["source"]).resolve()
            if source.is_relative_to(WEIGHTS):
                record["source"] = str(Path("tandem/models/default") / source.relative_to(WEIGHTS))
    manifest.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    print(f"default bundle written to {export_default_bundle()}")
