"""`tandem export`: M_L (+ tandem M_S, + plain M_S) → one bundle folder the runtime loads.

The graphs are built straight from the weights (`tandem.export.builder`), one tensor at a
time, into a scratch folder next to `out_dir`; each is validated against the streamed
PyTorch reference (`tandem.export.validate`); the folder is renamed to `out_dir` only at
the end. A failure or Ctrl-C leaves `out_dir` as it was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.errors import BundleError, ExportError
from tandem.export.builder import BuildOptions, build_graph
from tandem.export.checkpoint import Checkpoint
from tandem.export.checkpoint import file_sha256 as _sha256
from tandem.export.decoder import DecoderShape
from tandem.export.graph_writer import SharedData
from tandem.export.quantize import (
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    check_accuracy_level,
    check_block_size,
    check_precision,
)
from tandem.export.validate import text_ids, validate_graph
from tandem.manifest import (
    DEFAULT_BLOCK_LENGTH,
    DEFAULT_MAX_BLOCK_LENGTH,
    DEFAULT_ROUTER_THRESHOLD,
    GRAPH_FILES,
    MANIFEST_NAME,
    Manifest,
)

DEFAULT_MAX_CONTEXT = 8192  # default context: M_L's max_position_embeddings, capped here
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The named special tokens transformers gives a chat template (its `special_tokens_map`).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _folder_hash(folder: Path) -> str:
    """Hash of the weight and config files of a model folder (provenance)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in (".safetensors", ".json", ".bin"):
            digest.update(path.name.encode())
            digest.update(_sha256(path).encode())
    return digest.hexdigest()


def _eos_ids(ckpt: Checkpoint, module: Any) -> list[int]:
    sources: list[Any] = []
    if ckpt.source and (Path(ckpt.source) / "generation_config.json").is_file():
        sources.append(json.loads((Path(ckpt.source) / "generation_config.json").read_text()))
    elif module is not None and getattr(module, "generation_config", None) is not None:
        sources.append({"eos_token_id": module.generation_config.eos_token_id})
    sources.append({"eos_token_id": getattr(ckpt.config, "eos_token_id", None)})
    for source in sources:
        eos = source.get("eos_token_id")
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]
    return []


def _check_tokenizer(tokenizer_file: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise ExportError(f"{tokenizer_file} is not a Hugging Face tokenizers file: {exc}") from exc
    if tok.get_vocab_size(with_added_tokens=True) > vocab_size:
        raise ExportError(
            f"the tokenizer has {tok.get_vocab_size()} tokens but M_L's vocabulary has {vocab_size}: "
            "they do not belong together"
        )
    # the runtime tokenizes in C++: a tokenizer.json it cannot run is refused here, not at load
    from tandem.runtime.tokenizer import Tokenizer as RuntimeTokenizer

    try:
        RuntimeTokenizer(tokenizer_file)
    except BundleError as exc:
        raise ExportError(f"tandem's runtime cannot use this tokenizer: {exc}") from exc


def _check_same_tokenizer(tokenizer_file: Path, other: Path | None, role: str) -> None:
    """Refuse an M_S folder that ships a tokenizer other than M_L's."""
    if other is None or not other.is_file():
        return
    from tokenizers import Tokenizer

    try:
        same = Tokenizer.from_file(str(other)).get_vocab() == Tokenizer.from_file(str(tokenizer_file)).get_vocab()
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception
        raise ExportError(f"{other} is not a Hugging Face tokenizers file: {exc}") from exc
    if not same:
        raise ExportError(
            f"the {role} ships a tokenizer ({other}) that differs from M_L's ({tokenizer_file}); "
            "M_S must be trained with M_L's tokenizer"
        )


def _resolve_tokenizer(tokenizer: str | Path | None, large: Checkpoint, drafters: dict[str, Checkpoint],
                       vocab: int) -> Path | None:
    source = tokenizer if tokenizer is not None else (large.source or None)
    if source is None:
        return None
    tok_file = Path(source)
    tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
    if not tok_file.is_file():
        if tokenizer is not None:
            raise ExportError(f"no tokenizer.json at {source}")
        return None
    _check_tokenizer(tok_file, vocab)
    for role, ckpt in drafters.items():
        _check_same_tokenizer(tok_file, Path(ckpt.source) / "tokenizer.json" if ckpt.source else None,
                              "tandem M_S" if role == "tandem_drafter" else "plain M_S")
    return tok_file


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} is not a JSON object")
    return data


def read_chat_template(folder: str | Path) -> tuple[str | None, dict[str, str]]:
    """The chat template of a Hugging Face folder and its named special tokens, as transformers
    reads them: `chat_template.jinja` first, else `tokenizer_config.json`'s `chat_template` (a
    string, or a list of {"name", "template"} of which the one named "default" is taken); the
    special tokens (`bos_token`, `eos_token`, ...) from `tokenizer_config.json`, completed from
    `special_tokens_map.json`. (None, {...}) when the folder has no template."""
    folder = Path(folder)
    config_path = folder / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    template: Any = None
    jinja_path = folder / CHAT_TEMPLATE_FILE
    if jinja_path.is_file():
        try:
            template = jinja_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ExportError(f"{jinja_path} is not readable UTF-8 text: {exc}") from exc
    else:
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
            if template is None:
                raise ExportError(f"{config_path}: chat_template lists templates {sorted(map(str, named))} but none "
                                  "named 'default'; add a chat_template.jinja to the folder to choose one")
        elif isinstance(template, dict):
            if "default" not in template:
                raise ExportError(f"{config_path}: chat_template has templates {sorted(template)} but none named "
                                  "'default'; add a chat_template.jinja to the folder to choose one")
            template = template["default"]
        if template is not None and not isinstance(template, str):
            raise ExportError(f"{config_path}: chat_template must be a string, got {type(template).__name__}")
    tokens: dict[str, str] = {}
    sources = [config]
    map_path = folder / "special_tokens_map.json"
    if map_path.is_file():
        sources.append(_read_json(map_path))
    for name in SPECIAL_TOKEN_NAMES:
        for source in sources:
            value = source.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                tokens[name] = value
                break
    return (template or None), tokens


def _resolve_chat_template(tokenizer: str | Path | None, large: Checkpoint,
                           tok_file: Path | None) -> tuple[str | None, dict[str, str], Path | None]:
    """M_L's chat template: from the tokenizer folder when one is given, else M_L's folder."""
    if tok_file is None:
        return None, {}, None
    folders = []
    if tokenizer is not None:
        folders.append(Path(tokenizer) if Path(tokenizer).is_dir() else Path(tokenizer).parent)
    if large.source:
        folders.append(Path(large.source))
    first_tokens: dict[str, str] = {}
    for folder in folders:
        template, tokens = read_chat_template(folder)
        if template is not None:
            from tandem.runtime.chat import compile_template

            try:
                compile_template(template)
            except BundleError as exc:
                raise ExportError(f"the chat template of {folder} does not compile: {exc}") from exc
            return template, tokens, folder
        first_tokens = first_tokens or tokens
    return None, first_tokens, None


def _check_pair(large: Checkpoint, drafters: dict[str, Checkpoint]) -> None:
    large_shape = DecoderShape.of(large.config, "M_L")
    for role, ckpt in drafters.items():
        who = "the tandem M_S" if role == "tandem_drafter" else "the plain M_S"
        shape = DecoderShape.of(ckpt.config, who)
        if shape.vocab_size != large_shape.vocab_size:
            raise ExportError(f"{who} has vocab size {shape.vocab_size} but M_L has {large_shape.vocab_size}; "
                              "both must use M_L's tokenizer")
    tandem_drafter = drafters.get("tandem_drafter")
    if tandem_drafter is not None:
        tandem = tandem_drafter.tandem_config
        if tandem is None:
            raise ExportError(f"--tandem {tandem_drafter.source or ''} is not a tandem M_S (no tandem_config.json); "
                              "train one with `tandem train --mode tandem`, or pass it as --plain")
        if tandem["large_hidden_size"] != large_shape.hidden_size or max(tandem["layer_map"]) > large_shape.num_layers:
            raise ExportError("the tandem M_S was built for an M_L of another width or depth; retrain it for this M_L")


def _out_folder_check(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise ExportError(f"--out {out} is a non-empty folder that is not a tandem bundle; refusing to replace "
                          "it: choose a new or empty folder")


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished bundle `tmp` to `out`, replacing an older bundle there."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_bundle(
    large: str | Path | Any,
    out_dir: str | Path,
    *,
    tandem: str | Path | Any | None = None,
    plain: str | Path | Any | None = None,
    tokenizer: str | Path | None = None,
    block_length: int | None = None,
    max_block_length: int = DEFAULT_MAX_BLOCK_LENGTH,
    router_threshold: float = DEFAULT_ROUTER_THRESHOLD,
    context_length: int | None = None,
    validate: bool = True,
    precision: str = "fp32",
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
    block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Callable[[str], None] | None = print,
) -> Manifest:
    """Build M_L's graph (and the tandem M_S's and a plain drafter's) into `out_dir`.

    `large`, `tandem`, `plain`: Hugging Face folders (safetensors; the tandem M_S folder
    from `tandem train --mode tandem`) or in-process modules (`transformers` causal LMs,
    `tandem.train.model.TandemSmall`; a plain drafter's `.router` is exported with it).
    `tokenizer`: a folder or `tokenizer.json` file; default: M_L's folder when it has one.
    `precision`: fp32, fp16 (for CUDA), int8 or int4 (MatMulNBits, for CPU) — see
    `tandem.export.quantize`; `accuracy_level` (4: int8 compute) and `block_size` (weights per
    quantization block along K) apply to int8/int4.
    `block_length`: the bundle's default γ; None: the γ the tandem drafter was trained at
    (its `training_summary.json`), else 4.
    `progress`: called with status lines (None: silent, no progress bars).
    Returns the manifest written to `out_dir/tandem.json`.
    """
    say = progress or (lambda _msg: None)
    check_precision(precision)
    check_accuracy_level(accuracy_level)
    check_block_size(block_size, precision)
    if block_length is not None and not 1 <= block_length <= max_block_length:
        raise ExportError(f"need 1 <= block_length ({block_length}) <= max_block_length ({max_block_length})")
    out = Path(out_dir)
    _out_folder_check(out)
    started = time.monotonic()

    ckpts: dict[str, Checkpoint] = {}
    try:
        ckpts["large"] = Checkpoint.load(large, "M_L")
        if tandem is not None:
            ckpts["tandem_drafter"] = Checkpoint.load(tandem, "tandem M_S")
        if plain is not None:
            ckpts["plain_drafter"] = Checkpoint.load(plain, "plain M_S")
        drafters = {r: c for r, c in ckpts.items() if r != "large"}
        _check_pair(ckpts["large"], drafters)
        if block_length is None:  # the γ the tandem drafter was trained at
            trained = ckpts["tandem_drafter"].trained_block_length if "tandem_drafter" in ckpts else 0
            block_length = min(trained, max_block_length) if trained else DEFAULT_BLOCK_LENGTH
        config = ckpts["large"].config
        vocab = int(config.vocab_size)
        ctx = context_length or min(int(getattr(config, "max_position_embeddings", 2048)), DEFAULT_MAX_CONTEXT)
        if ctx < 2:
            raise ExportError("context_length must be >= 2")
        tok_file = _resolve_tokenizer(tokenizer, ckpts["large"], drafters, vocab)
        chat_template, special_tokens, template_folder = _resolve_chat_template(tokenizer, ckpts["large"], tok_file)
        if template_folder is not None:
            say(f"chat template: from {template_folder}")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            manifest = _build(ckpts, tmp, large if not isinstance(large, str | Path) else None, vocab=vocab,
                              ctx=ctx, tok_file=tok_file, chat_template=chat_template,
                              special_tokens=special_tokens, precision=precision, accuracy_level=accuracy_level,
                              block_size=block_size, validate=validate, block_length=block_length,
                              max_block_length=max_block_length, router_threshold=router_threshold, say=say, bars=progress is not None)
            _replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        for ckpt in ckpts.values():
            ckpt.close()
    say(f"bundle written to {out} ({', '.join(s.file for s in manifest.graphs.values())}, {precision}) "
        f"in {time.monotonic() - started:.0f} s")
    return manifest


def _build(ckpts: dict[str, Checkpoint], tmp: Path, large_module: Any, *, vocab: int, ctx: int,
           tok_file: Path | None, chat_template: str | None, special_tokens: dict[str, str], precision: str,
           accuracy_level: int, block_size: int, validate: bool, block_length: int, max_block_length: int, router_threshold: float, say: Callable[[str], None], bars: bool) -> Manifest:
    from tqdm import tqdm

    options = BuildOptions(precision=precision, accuracy_level=accuracy_level, context_length=ctx,
                           block_size=block_size)
    tandem_drafter = ckpts.get("tandem_drafter")
    rep_layers = list(tandem_drafter.tandem_config["large_layers"]) if tandem_drafter is not None else []
    graphs, validation, data_hashes = {}, {}, {}
    text = text_ids(tok_file, vocab) if validate else None
    # A tensor equal to one already in another graph's data file (a drafter at M_L's width
    # with M_L's embedding and head) is stored once: the later graph reads it from there.
    shared = SharedData(tmp) if len(ckpts) > 1 else None
    for role, ckpt in ckpts.items():
        file = GRAPH_FILES[role]
        layers = int(ckpt.config.num_hidden_layers)
        with tqdm(total=layers, desc=f"{file} ({precision})", unit="layer", disable=not bars,
                  file=sys.stderr, leave=True) as bar:
            saved = shared.saved_bytes if shared is not None else 0
            spec, data_hashes[role] = build_graph(ckpt, role, tmp / file, options, on_layer=bar.update,
                                                  rep_layers=rep_layers if role == "large" else None, shared=shared)
        if shared is not None and shared.saved_bytes > saved:
            say(f"{file}: {(shared.saved_bytes - saved) / 1e6:.1f} MB of tensors equal to another graph's are "
                "stored once (read from that graph's data file)")
        spec.trained_block_length = ckpt.trained_block_length if role != "large" else 0
        graphs[role] = spec
        if validate:
            figures = validate_graph(tmp / file, spec, ckpt, role, precision=precision, context_length=ctx,
                                     text=text, block_size=block_size)
            validation[role] = figures
            if precision == "fp32":
                say(f"validated {file}: max |ORT - PyTorch| / max(1, |PyTorch|) = {figures['max_rel_diff']:.1e}")
            else:
                exact = figures.get("max_rel_diff_float_compute_vs_same_weights")
                check = (f"float32-compute twin vs the same {precision} weights {exact:.1e}" if exact is not None
                         else f"error vs the same {precision} weights {figures['max_rel_error_vs_same_weights']:.1e}")
                say(f"validated {file} ({precision}): {check}; argmax agrees with the fp32 model at "
                    f"{figures['argmax_agreement']:.0%} of positions, top-5 overlap {figures['top5_overlap']:.0%}"
                    f"{' (on a text sample)' if figures.get('quality_text') else ' (random ids)'}")

    tok_name = ""
    if tok_file is not None:
        shutil.copyfile(tok_file, tmp / "tokenizer.json")
        tok_name = "tokenizer.json"
    template_name = ""
    if chat_template is not None:
        (tmp / CHAT_TEMPLATE_FILE).write_text(chat_template, encoding="utf-8")
        template_name = CHAT_TEMPLATE_FILE
    config = ckpts["large"].config
    hashes = {}
    for role, spec in graphs.items():
        hashes[role] = _sha256(tmp / spec.file)
        hashes[role + ".data"] = data_hashes[role]  # hashed while written
    from tandem.export.quantize import optional_torch

    torch = optional_torch()
    manifest = Manifest(
        graphs=graphs,
        vocab_size=vocab,
        context_length=ctx,
        eos_token_ids=_eos_ids(ckpts["large"], large_module),
        bos_token_id=getattr(config, "bos_token_id", None),
        pad_token_id=getattr(config, "pad_token_id", None),
        tokenizer=tok_name,
        chat_template=template_name,
        special_tokens=special_tokens if tok_name else {},
        default_block_length=block_length,
        max_block_length=max_block_length,
        router_threshold=router_threshold,
        precision=precision,
        build={"accuracy_level": accuracy_level if precision in ("int4", "int8") else None,
               "block_size": block_size if precision in ("int4", "int8") else None,
               "builder": "tandem.export.builder",
               "torch": torch.__version__ if torch is not None else None},
        provenance={
            role: {"source": c.source, "hash": _folder_hash(Path(c.source)) if c.source else ""}
            | ({"router_sampled_temperature": c.router_config["sampled_temperature"]} if c.router_config else {})
            for role, c in ckpts.items()
        } | {"graphs": hashes},
        validation=validation,
    )
    manifest.save(tmp)
    return manifest
