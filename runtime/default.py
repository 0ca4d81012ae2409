"""The embedded default model pair: weights shipped in `tandem/models/default/`, exported to
a bundle on first use and cached (re-exported when the weights change)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import tandem
from tandem.errors import BundleError
from tandem.manifest import FORMAT_VERSION

# tandem/models/default/{large,tandem,plain}: in the source tree and in an installed wheel
WEIGHTS = Path(tandem.__file__).resolve().parent / "models" / "default"


def weights_dir() -> Path:
    return WEIGHTS


def weights_hash(folder: Path = WEIGHTS) -> str:
    """Hash of every weight, config and tokenizer file of the default pair."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("TANDEM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tandem"
    )
    return Path(base) / "bundles"


def default_bundle(rebuild: bool = False) -> Path:
    """Path of the default bundle, exporting it first when it is missing or stale."""
    if not (WEIGHTS / "large" / "config.json").is_file():
        raise BundleError(
            f"the default model weights are missing from {WEIGHTS}; "
            "reinstall tandem or pass a bundle path (see `tandem export --help`)"
        )
    # the bundle format is part of the name: a bundle cached by an older tandem is rebuilt
    bundle = cache_root() / f"default-v{FORMAT_VERSION}-{weights_hash()}"
    if (bundle / "tandem.json").is_file() and not rebuild:
        return bundle
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with open(bundle.parent / ".default.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one export at a time; others wait and reuse it
        if (bundle / "tandem.json").is_file() and not rebuild:
            return bundle
        try:
            from tandem.export.bundle import export_bundle
        except ModuleNotFoundError as exc:
            raise BundleError(
                "exporting the default bundle needs the PyTorch side "
                "(pip install 'tandem-runtime[torch]'), or pass an exported bundle path"
            ) from exc
        tmp = bundle.with_name(bundle.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"exporting the default bundle to {bundle} (once)")
        plain = WEIGHTS / "plain"
        export_bundle(
            WEIGHTS / "large", tmp, tandem=WEIGHTS / "tandem",
            plain=plain if plain.is_dir() else None, tokenizer=WEIGHTS / "large",
        )
        shutil.rmtree(bundle, ignore_errors=True)
        tmp.rename(bundle)
        for stale in bundle.parent.glob("default-*"):
            if stale != bundle and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return bundle
