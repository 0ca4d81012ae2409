"""`tandem export`: M_L (+ tandem M_S, + plain M_S) → one bundle folder the runtime loads."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tandem.errors import ExportError
from tandem.export.large import LargeGraph, export_large
from tandem.export.quantize import check_precision, quantize_graph
from tandem.export.small import PlainStepGraph, TandemStepGraph, export_plain, export_tandem
from tandem.export.validate import CASES, max_abs_diffs
from tandem.manifest import Manifest

FP32_TOLERANCE = 1e-4


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_hash(folder: Path) -> str:
    """Hash of the weight and config files of a model folder (provenance)."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in (".safetensors", ".json", ".bin"):
            digest.update(path.name.encode())
            digest.update(_sha256(path).encode())
    return digest.hexdigest()


def _load_large(large: str | Path | nn.Module) -> tuple[nn.Module, str]:
    if isinstance(large, nn.Module):
        return large.eval().float(), ""
    from transformers import AutoModelForCausalLM

    folder = Path(large)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} is not a Hugging Face model folder (no config.json)")
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), str(folder)


def _load_tandem(tandem: str | Path | nn.Module | None) -> tuple[nn.Module | None, str]:
    if tandem is None or isinstance(tandem, nn.Module):
        return tandem, ""
    from tandem.train.model import TandemSmall

    return TandemSmall.from_pretrained(tandem), str(tandem)


def _load_plain(plain: str | Path | nn.Module | None) -> tuple[nn.Module | None, nn.Module | None, str]:
    """(model, router or None, source)"""
    if plain is None:
        return None, None, ""
    from tandem.train.router import Router

    if isinstance(plain, nn.Module):
        return plain.eval().float(), getattr(plain, "router", None), ""
    from transformers import AutoModelForCausalLM

    folder = Path(plain)
    if not (folder / "config.json").is_file():
        raise ExportError(f"{folder} is not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, Router.load(folder), str(folder)


def _eos_ids(config: Any, generation_config: Any) -> list[int]:
    for source in (generation_config, config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
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


def export_bundle(
    large: str | Path | nn.Module,
    out_dir: str | Path,
    *,
    tandem: str | Path | nn.Module | None = None,
    plain: str | Path | nn.Module | None = None,
    tokenizer: str | Path | None = None,
    block_length: int = 4,
    max_block_length: int = 16,
    router_threshold: float = 0.8,
    context_length: int | None = None,
    validate: bool = True,
    precision: str = "fp32",
    progress: Callable[[str], None] | None = print,
) -> Manifest:
    """Export M_L (and optionally the tandem M_S and a plain drafter) into `out_dir`.

    `tokenizer`: a folder or `tokenizer.json` file; default: M_L's folder when it has one.
    `precision`: fp32, fp16 (for CUDA), int8 or int4 (weight-only, for CPU); see
    `tandem.export.quantize`. Graphs are exported and validated in fp32, then converted;
    with `validate`, `validation[role]["argmax_agreement_vs_fp32"]` records how often the
    converted graph's argmax matches the fp32 PyTorch module over the validation cases.
    Returns the manifest written to `out_dir/tandem.json`.
    """
    say = progress or (lambda _msg: None)
    check_precision(precision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    large_model, large_src = _load_large(large)
    tandem_model, tandem_src = _load_tandem(tandem)
    plain_model, plain_router, plain_src = _load_plain(plain)
    from tandem.train.model import check_pair

    vocab = large_model.config.vocab_size
    if tandem_model is not None:
        check_pair(large_model.config, tandem_model.small.config, ExportError)
        if tandem_model.config.large_hidden_size != large_model.config.hidden_size:
            raise ExportError("the tandem M_S was built for an M_L of another width; retrain it for this M_L")
    if plain_model is not None:
        check_pair(large_model.config, plain_model.config, ExportError)
    if not 1 <= block_length <= max_block_length:
        raise ExportError(f"need 1 <= block_length ({block_length}) <= max_block_length ({max_block_length})")
    ctx = context_length or int(getattr(large_model.config, "max_position_embeddings", 2048))
    if ctx < 2:
        raise ExportError("context_length must be >= 2")

    # the tokenizer is checked up front, before any graph is exported
    tok_file: Path | None = None
    tok_src = tokenizer if tokenizer is not None else (large_src or None)
    if tok_src is not None:
        tok_file = Path(tok_src)
        tok_file = tok_file / "tokenizer.json" if tok_file.is_dir() else tok_file
        if tok_file.is_file():
            _check_tokenizer(tok_file, vocab)
            for role, src in (("tandem M_S", tandem_src), ("plain M_S", plain_src)):
                _check_same_tokenizer(tok_file, Path(src) / "tokenizer.json" if src else None, role)
        elif tokenizer is not None:
            raise ExportError(f"no tokenizer.json at {tok_src}")
        else:
            tok_file = None

    graphs = {}
    rep_layers = list(tandem_model.config.large_layers) if tandem_model is not None else []
    say("exporting large.onnx (M_L, block mode)")
    graphs["large"] = export_large(large_model, rep_layers, out)
    if tandem_model is not None:
        say("exporting small.onnx (tandem M_S step graph)")
        graphs["small"] = export_tandem(tandem_model, out)
    if plain_model is not None:
        say("exporting draft.onnx (plain drafter)")
        graphs["draft"] = export_plain(plain_model, plain_router, out)
    for role in ("small", "draft"):
        if role not in graphs and (out / f"{role}.onnx").exists():
            (out / f"{role}.onnx").unlink()  # stale graph of an earlier export

    tok_name = ""
    if tok_file is not None:
        shutil.copyfile(tok_file, out / "tokenizer.json")
        tok_name = "tokenizer.json"

    validation: dict[str, Any] = {}
    modules: dict[str, nn.Module] = {}
    if validate:
        modules["large"] = LargeGraph(large_model, rep_layers)
        if tandem_model is not None:
            modules["small"] = TandemStepGraph(tandem_model)
        if plain_model is not None:
            modules["draft"] = PlainStepGraph(plain_model, plain_router)
        for role, module in modules.items():
            diffs = max_abs_diffs(module, out / graphs[role].file, graphs[role], CASES[role])
            validation[role] = diffs
            worst = max(v for k, v in diffs.items() if k != "argmax_agreement")
            say(f"validated {graphs[role].file}: max |ORT - PyTorch| = {worst:.2e}")
            if worst > FP32_TOLERANCE:
                raise ExportError(
                    f"{graphs[role].file} disagrees with PyTorch by {worst:.2e} (> {FP32_TOLERANCE}); "
                    "the export is wrong, please report it"
                )
    if precision != "fp32":
        for role, spec in graphs.items():
            say(f"converting {spec.file} to {precision}")
            quantize_graph(out / spec.file, out / spec.file, precision)
            spec.precision = precision
            if role in modules:
                diffs = max_abs_diffs(modules[role], out / spec.file, spec, CASES[role])
                agreement = diffs.pop("argmax_agreement")
                validation[role]["argmax_agreement_vs_fp32"] = agreement
                validation[role]["max_abs_diff_vs_fp32"] = max(diffs.values())
                say(f"validated {spec.file} ({precision}): argmax agrees with fp32 PyTorch "
                    f"at {agreement:.0%} of positions")

    generation_config = getattr(large_model, "generation_config", None)
    manifest = Manifest(
        graphs=graphs,
        vocab_size=vocab,
        context_length=ctx,
        eos_token_ids=_eos_ids(large_model.config, generation_config),
        bos_token_id=getattr(large_model.config, "bos_token_id", None),
        pad_token_id=getattr(large_model.config, "pad_token_id", None),
        tokenizer=tok_name,
        default_block_length=block_length,
        max_block_length=max_block_length,
        router_threshold=router_threshold,
        precision=precision,
        provenance={
            "large": {"source": large_src, "hash": _folder_hash(Path(large_src)) if large_src else ""},
            "small": {"source": tandem_src, "hash": _folder_hash(Path(tandem_src)) if tandem_src else ""},
            "draft": {"source": plain_src, "hash": _folder_hash(Path(plain_src)) if plain_src else ""},
            "graphs": {role: _sha256(out / spec.file) for role, spec in graphs.items()},
            "torch": torch.__version__,
        },
        validation=validation,
    )
    manifest.save(out)
    say(f"bundle written to {out} ({json.dumps({r: g.file for r, g in graphs.items()})})")
    return manifest
