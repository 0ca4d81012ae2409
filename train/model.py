"""The tandem M_S around an ordinary Hugging Face causal LM, and the M_L step functions.

Conventions (docs/CONTRACTS.md):
- ``x^(l)`` is entry ``l`` of M_L's ``output_hidden_states`` tuple; :func:`large_step` is the
  one function that computes it.
- M_S layer ``j`` (1-based) reads ``x^(ℓ(j))`` through its own projection ``W_T^(j)``; memory
  inputs are a list in ``large_layers`` order (sorted unique ``ℓ``).
- Absolute positions; one contiguous M_S KV cache. A step with past length ``P``, ``m``
  memory rows and ``t`` tokens puts memory at ``P..P+m-1`` and tokens at ``P+m..P+m+t-1``.

Attention is written by hand from the HF submodules (q/k/v/o projections, norms, MLP,
rotary), with explicit boolean masks, so that training, the PyTorch reference and the
exported step graph all run exactly the same math.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    DynamicCache,
    PretrainedConfig,
    PreTrainedModel,
)

from tandem.errors import TandemError, TrainingError
from tandem.export.checkpoint import DRAFT_VOCAB_FILE, read_draft_vocab
from tandem.train.router import Router, RouterConfig

KV = tuple[Tensor, Tensor]  # (key, value), each (1, h_kv, P, dh)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
LAYER_ASSIGNMENTS = ("last", "proportional")
TANDEM_CONFIG_FILE = "tandem_config.json"
TANDEM_WEIGHTS_FILE = "tandem.safetensors"


# --------------------------------------------------------------------------- checks


def check_supported(config: PretrainedConfig, role: str, error: type[TandemError] = TrainingError) -> None:
    """Raise ``error`` unless ``config`` is an architecture whose layers we can drive by hand."""
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise error(
            f"{role} is a {config.model_type!r} model; supported architectures are "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}. Pick a model of one of these families"
        )


def check_pair(
    large_config: PretrainedConfig,
    small_config: PretrainedConfig,
    error: type[TandemError] = TrainingError,
) -> None:
    """Raise ``error`` unless M_L and M_S are supported and share one vocabulary."""
    check_supported(large_config, "M_L", error)
    check_supported(small_config, "M_S", error)
    if large_config.vocab_size != small_config.vocab_size:
        raise error(
            f"M_S has vocab size {small_config.vocab_size} but M_L has {large_config.vocab_size}; "
            "both must use M_L's tokenizer (build M_S with create_drafter_config(large.config, ...))"
        )


# --------------------------------------------------------------------------- layer map


def layer_map(assignment: str, num_large_layers: int, num_small_layers: int) -> list[int]:
    """``[ℓ(1), ..., ℓ(L_S)]`` for ``last``, ``proportional`` (round half up), or an explicit
    comma-separated list of M_L layers (``0`` = embedding output .. ``L_L``), one per M_S
    layer, or a single layer for all of them (e.g. ``"2"`` or ``"2,4"``)."""
    if assignment == "last":
        return [num_large_layers] * num_small_layers
    if assignment == "proportional":
        # floor(j * L_L / L_S + 0.5) in integer arithmetic: exact round half up.
        return [(2 * j * num_large_layers + num_small_layers) // (2 * num_small_layers)
                for j in range(1, num_small_layers + 1)]
    parts = [part.strip() for part in assignment.split(",")]
    if not all(part.isdigit() for part in parts):
        raise TrainingError(f"unknown layer assignment {assignment!r}; use one of {', '.join(LAYER_ASSIGNMENTS)} "
                            f"or M_L layer numbers such as '2' or '2,4'")
    layers = [int(part) for part in parts]
    if len(layers) == 1:
        layers *= num_small_layers
    if len(layers) != num_small_layers or max(layers) > num_large_layers:
        raise TrainingError(f"layer assignment {assignment!r} must name one M_L layer (0..{num_large_layers}) "
                            f"per M_S layer ({num_small_layers}), or a single layer for all")
    return layers


# --------------------------------------------------------------------------- HF steps


def empty_past(config: PretrainedConfig, batch: int = 1, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> list[KV]:
    """A zero-length KV cache ``(batch, h_kv, 0, dh)`` per layer of a model with ``config``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (batch, config.num_key_value_heads, 0, head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(config.num_hidden_layers)]


@functools.cache
def _cache_keyword(model_type: type) -> str:
    """The forward keyword of the KV cache: ``cache`` in transformers 5, ``past_key_values``
    before. A keyword the model does not name would vanish into ``**kwargs`` and the step would
    silently run without its past, so anything else is refused."""
    names = inspect.signature(model_type.forward).parameters
    for keyword in ("cache", "past_key_values"):
        if keyword in names:
            return keyword
    raise TrainingError(f"{model_type.__name__}.forward takes neither `cache` nor `past_key_values`; this "
                        "transformers version is not supported (see pyproject.toml)")


def _hf_step(model: PreTrainedModel, input_ids: Tensor, past: list[KV],
             output_hidden_states: bool) -> tuple[Tensor, list[KV], tuple[Tensor, ...] | None]:
    """One HF forward over ``input_ids (B, T)`` after ``past``; tokens at positions ``P..P+T-1``."""
    cache = DynamicCache()
    for i, (k, v) in enumerate(past):
        cache.update(k, v, i)
    start = past[0][0].shape[2]
    position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    out = model(input_ids=input_ids, position_ids=position_ids, use_cache=True,
                output_hidden_states=output_hidden_states, **{_cache_keyword(type(model)): cache})
    present = [(layer.keys, layer.values) for layer in cache.layers]  # each (B, h_kv, P+T, dh)
    return out.logits, present, out.hidden_states


def large_step(large: PreTrainedModel, input_ids: Tensor, past: list[KV],
               layers: list[int]) -> tuple[Tensor, list[KV], list[Tensor]]:
    """M_L block step: logits ``(B, T, V)``, present K/V ``(B, h_kv, P+T, dh)`` and the
    representations ``x^(l)`` ``(B, T, d_L)`` for each ``l`` in ``layers``, in that order."""
    logits, present, hidden = _hf_step(large, input_ids, past, output_hidden_states=True)
    return logits, present, [hidden[layer] for layer in layers]


def plain_step(model: PreTrainedModel, input_ids: Tensor, past: list[KV]) -> tuple[Tensor, list[KV]]:
    """An ordinary causal-LM step (the vanilla drafter): logits ``(B, T, V)`` and present K/V.
    A drafter with a draft vocabulary (:func:`set_draft_vocab`) has -inf (probability 0) outside it."""
    logits, present, _ = _hf_step(model, input_ids, past, output_hidden_states=False)
    ids = draft_ids(model)
    if ids is not None:
        logits = torch.full_like(logits, float("-inf")).index_copy(-1, ids, logits[..., ids])
    return logits, present


# --------------------------------------------------------------------------- plain drafter's draft vocabulary


def _draft_index(draft_vocab: list[int] | None, vocab_size: int) -> tuple[Tensor | None, Tensor | None]:
    """A draft vocabulary's token id per logit column, and each token id's column (-1: a token
    the drafter never proposes); (None, None) without one."""
    if not draft_vocab:
        return None, None
    ids = torch.tensor(draft_vocab, dtype=torch.long)
    column = torch.full((vocab_size,), -1, dtype=torch.long)
    column[ids] = torch.arange(len(ids))
    return ids, column


def draft_ids(model: nn.Module) -> Tensor | None:
    """The draft vocabulary of a drafter (TandemSmall, or a plain drafter given one by
    :func:`set_draft_vocab`): token id per logit column; None when it drafts from all V."""
    return getattr(model, "draft_ids", None)


def set_draft_vocab(model: PreTrainedModel, draft_vocab: list[int] | None) -> PreTrainedModel:
    """Give the plain drafter ``model`` a reduced draft vocabulary (ascending token ids, see
    :func:`draft_vocabulary`; None: the whole vocabulary) and return it.

    It then proposes only those tokens: :func:`plain_step` gives -inf elsewhere and
    :func:`plain_columns` computes the head's rows of those tokens only. Held as the buffers
    ``draft_ids`` / ``column_of_token`` (as in :class:`TandemSmall`), outside the model's weights;
    :func:`save_plain_drafter` writes them to ``draft_vocab.json``.
    """
    ids, column = _draft_index(check_draft_vocab(draft_vocab, model.config.vocab_size), model.config.vocab_size)
    device = model.get_input_embeddings().weight.device
    model.register_buffer("draft_ids", None if ids is None else ids.to(device), persistent=False)
    model.register_buffer("column_of_token", None if column is None else column.to(device), persistent=False)
    return model


def plain_columns(model: PreTrainedModel, input_ids: Tensor) -> Tensor:
    """Training-mode logits of a plain drafter over its columns: ``(B, N, len(draft_ids))`` with a
    draft vocabulary (only those rows of the head are computed: it costs N rows instead of V),
    ``(B, N, V)`` without one."""
    ids = draft_ids(model)
    if ids is None:
        return model(input_ids=input_ids).logits
    hidden = model.model(input_ids=input_ids).last_hidden_state  # (B, N, d_S)
    return torch.nn.functional.linear(hidden, model.get_output_embeddings().weight[ids])


def plain_router_score(model: PreTrainedModel, router: Router, logits: Tensor) -> Tensor:
    """The router score ``(B, t)`` of a plain drafter's logits ``(B, t, V)``: over the draft
    vocabulary's columns and their embeddings when it has one (as :meth:`TandemSmall.step`)."""
    embed = model.get_input_embeddings().weight
    ids = draft_ids(model)
    return router(logits, embed) if ids is None else router(logits[..., ids], embed[ids])


def save_plain_drafter(model: PreTrainedModel, folder: str | Path) -> None:
    """``model.save_pretrained(folder)`` plus its draft vocabulary as ``draft_vocab.json``
    (``{"draft_vocab": [ids]}``; a stale one is removed when the drafter has none)."""
    folder = Path(folder)
    model.save_pretrained(folder)
    ids = draft_ids(model)
    path = folder / DRAFT_VOCAB_FILE
    if ids is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps({"draft_vocab": ids.tolist()}))


def load_plain_drafter(folder: str | Path) -> PreTrainedModel:
    """A plain drafter folder (a Hugging Face causal LM, plus ``draft_vocab.json`` when it has a
    draft vocabulary) as an eval-mode float32 model; a TrainingError for a damaged vocabulary file."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise TrainingError(f"{folder} is not a drafter folder (no config.json); train one with `tandem train`")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    vocab = read_draft_vocab(folder, model.config.vocab_size, TrainingError)
    return set_draft_vocab(model, vocab).eval()


# --------------------------------------------------------------------------- creation


def create_drafter_config(
    large_config: PretrainedConfig,
    num_layers: int,
    hidden_size: int,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
) -> PretrainedConfig:
    """A shallow M_S config of M_L's family with M_L's vocabulary, special tokens and rotary.

    Defaults: M_L's head width (``num_heads = hidden_size // head_dim_L``), no GQA, and an
    MLP ``intermediate_size`` in M_L's ratio to the width.
    """
    check_supported(large_config, "M_L")
    large_head_dim = getattr(large_config, "head_dim", None) or (
        large_config.hidden_size // large_config.num_attention_heads)
    num_heads = num_heads or max(1, hidden_size // large_head_dim)
    num_kv_heads = num_kv_heads or num_heads
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise TrainingError(
            f"M_S hidden size {hidden_size} with {num_heads} heads and {num_kv_heads} KV heads: the width "
            "must be divisible by the head count and the head count by the KV head count"
        )
    ratio = large_config.intermediate_size / large_config.hidden_size
    values = large_config.to_dict()
    values.update(
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        intermediate_size=intermediate_size or max(1, round(ratio * hidden_size)),
    )
    if "layer_types" in values:
        values["layer_types"] = None  # re-derived from num_hidden_layers by the config class
    values.pop("architectures", None)
    return type(large_config).from_dict(values)


INIT_LOGIT_SCALE = 10.0  # κ: a fresh drafter's logits are κ-sized (see create_drafter)


@dataclass
class LargeParts:
    """What a drafter takes from M_L besides its config: the token embedding and the LM head
    (``(V, d_L)`` each; the same tensor when M_L ties them). Read from a folder without
    loading M_L's layers, so training from precomputed representations never holds M_L."""

    config: PretrainedConfig
    embedding: Tensor
    head: Tensor

    @classmethod
    def of(cls, large: PreTrainedModel | LargeParts) -> LargeParts:
        if isinstance(large, LargeParts):
            return large
        return cls(large.config, large.get_input_embeddings().weight.detach(),
                   large.get_output_embeddings().weight.detach())

    @classmethod
    def from_folder(cls, folder: str | Path) -> LargeParts:
        """Config, embedding and head of the Hugging Face folder ``folder`` (tensors read one by one)."""
        from tandem.export.checkpoint import Checkpoint
        from tandem.export.decoder import EMBED, DecoderShape, lm_head_name

        ckpt = Checkpoint.from_folder(folder, "M_L")
        try:
            check_supported(ckpt.config, "M_L")
            names = ckpt.tensors.names()
            embedding = torch.from_numpy(ckpt.tensors.get(EMBED).astype("float32", copy=False))
            head_name = lm_head_name(DecoderShape.of(ckpt.config, "M_L"), names)
            head = embedding if head_name == EMBED else torch.from_numpy(ckpt.tensors.get(head_name))
        finally:
            ckpt.close()
        return cls(ckpt.config, embedding, head)


def create_drafter(large: PreTrainedModel | LargeParts, config: PretrainedConfig, copy_embeddings: bool = True,
                   seed: int = 0, freeze_shared: bool = False) -> PreTrainedModel:
    """A randomly initialised M_S; input/output embeddings copied from M_L when widths match.

    With M_L's embeddings, a fresh drafter's residual stream is its input token's embedding,
    and a trained head scores that token far above the rest: the first loss would be several
    times ln V (36.7 vs 10.8 on SmolLM2-135M). So the final norm's gain then starts at
    ``κ / (sqrt(d) · rms row norm of the head)`` with κ = ``INIT_LOGIT_SCALE``: logits are
    O(κ), the first loss stays near ln V (10.63 at κ = 10 on SmolLM2), and the drafter
    learns much faster than at κ = 1 (CE 4.7 vs 6.7 after 100 steps there).

    ``freeze_shared``: the copied embedding and head are M_L's and stay frozen (not trained;
    the exporter stores them once, shared with M_L's graph).
    """
    parts = LargeParts.of(large)
    check_pair(parts.config, config)
    torch.manual_seed(seed)
    small = AutoModelForCausalLM.from_config(config)
    shared = copy_embeddings and config.hidden_size == parts.config.hidden_size
    if freeze_shared and not shared:
        raise TrainingError(f"a shared-head drafter needs M_L's width ({parts.config.hidden_size}), "
                            f"not {config.hidden_size}")
    if shared:
        with torch.no_grad():
            small.get_input_embeddings().weight.copy_(parts.embedding)
            if not config.tie_word_embeddings:
                small.get_output_embeddings().weight.copy_(parts.head)
            head = small.get_output_embeddings().weight.float()
            rms_row = head.pow(2).sum(-1).mean().sqrt()
            gain = INIT_LOGIT_SCALE / (math.sqrt(config.hidden_size) * rms_row)
            small.model.norm.weight.fill_(float(gain))
    small = small.float()
    if freeze_shared:
        small.get_input_embeddings().weight.requires_grad_(False)
        small.get_output_embeddings().weight.requires_grad_(False)
    return small


def frozen_parameter_names(model: nn.Module) -> list[str]:
    """Names (``state_dict`` keys) of ``model``'s frozen parameters: M_L's shared embedding and head."""
    return [name for name, p in model.named_parameters() if not p.requires_grad]


@dataclass
class TandemConfig:
    """How M_S reads M_L. ``layer_map[j-1] = ℓ(j)``; ``large_layers`` = sorted unique ``ℓ``."""

    layer_assignment: str
    layer_map: list[int]
    large_layers: list[int]
    large_hidden_size: int
    large_num_layers: int
    vocab_size: int
    router: RouterConfig | None = None
    # a reduced draft vocabulary: ascending token ids the drafter may propose (None: all);
    # its distribution is 0 elsewhere, so speculative decoding stays exact
    draft_vocab: list[int] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = TANDEM_CONFIG_FILE, drop_router: bool = False) -> TandemConfig:
        """The config written by :meth:`to_json`. An older single router raises
        :class:`tandem.train.router.OldRouterError` unless ``drop_router`` (then, as any router
        with ``drop_router``, it is left out: ``router`` is None)."""
        values = json.loads(text)
        router = values.pop("router", None)
        if drop_router or not router:
            return cls(**values, router=None)
        return cls(**values, router=RouterConfig.from_dict(router, f'{where} ("router")'))


def create_tandem(
    large: PreTrainedModel | LargeParts,
    small_or_config: PreTrainedModel | PretrainedConfig,
    layer_assignment: str = "proportional",
    router: RouterConfig | bool = False,
    copy_embeddings: bool = True,
    seed: int = 0,
    draft_vocab: list[int] | None = None,
) -> TandemSmall:
    """Wrap M_S (a model, or a config to instantiate) for M_L with fresh random projections.

    ``router=True`` adds a router with default settings. ``draft_vocab``: the token ids the
    drafter may propose (see :func:`draft_vocabulary`); None for all.
    """
    if isinstance(small_or_config, PreTrainedModel):
        small = small_or_config
        check_pair(large.config, small.config)
    else:
        small = create_drafter(large, small_or_config, copy_embeddings=copy_embeddings, seed=seed)
    lmap = layer_map(layer_assignment, large.config.num_hidden_layers, small.config.num_hidden_layers)
    if router is True:
        router = RouterConfig(embed_dim=small.config.hidden_size)
    config = TandemConfig(
        layer_assignment=layer_assignment,
        layer_map=lmap,
        large_layers=sorted(set(lmap)),
        large_hidden_size=large.config.hidden_size,
        large_num_layers=large.config.num_hidden_layers,
        vocab_size=large.config.vocab_size,
        router=router or None,
        draft_vocab=check_draft_vocab(draft_vocab, large.config.vocab_size),
    )
    torch.manual_seed(seed + 1)
    return TandemSmall(small, config)


def draft_vocabulary(stream: Tensor, size: int, vocab_size: int, always: list[int] | None = None) -> list[int]:
    """The ``size`` most frequent token ids of ``stream`` plus ``always`` (e.g. EOS), ascending.

    Ties are broken by the smaller id, so the set is a function of the data alone.
    """
    if size < 2:
        raise TrainingError(f"a draft vocabulary of {size} tokens cannot propose anything useful; use at least 2")
    if size >= vocab_size:
        raise TrainingError(f"--draft-vocab {size} is not below M_L's vocabulary ({vocab_size}); omit it to draft "
                            "from the whole vocabulary")
    counts = torch.bincount(stream.flatten(), minlength=vocab_size)[:vocab_size]
    keep = {int(i) for i in always or []}
    order = torch.sort(counts, descending=True, stable=True).indices  # equal counts: smaller id first
    for token in order.tolist():
        if len(keep) >= size:
            break
        keep.add(token)
    return sorted(keep)


def check_draft_vocab(vocab: list[int] | None, vocab_size: int) -> list[int] | None:
    """``vocab`` as sorted unique ids in range, or None for the whole vocabulary."""
    if not vocab:
        return None
    ids = sorted({int(i) for i in vocab})
    if ids[0] < 0 or ids[-1] >= vocab_size:
        raise TrainingError(f"draft vocabulary ids must lie in 0..{vocab_size - 1}")
    if len(ids) < 2:  # the bundle reader refuses fewer (a drafter that can propose one token only)
        raise TrainingError(f"a draft vocabulary needs at least 2 token ids, got {ids}")
    return ids


# --------------------------------------------------------------------------- block mask


def block_starts(batch: int, length: int, block_length: int, offsets: Tensor | None = None) -> Tensor:
    """Start ``s(i)`` of the block holding each position: ``(B, N)`` long.

    Blocks are ``[o + bγ, o + (b+1)γ)`` with ``o = offsets[b]`` (0 when None); positions
    before ``o`` form a first, shorter block starting at 0.
    """
    pos = torch.arange(length).expand(batch, length)  # (B, N)
    o = torch.zeros(batch, 1, dtype=torch.long) if offsets is None else offsets.view(batch, 1).long()
    starts = o + torch.div(pos - o, block_length, rounding_mode="floor") * block_length
    return torch.where(pos < o, torch.zeros_like(pos), starts)


def variable_block_starts(batch: int, length: int, max_length: int, generator: torch.Generator) -> Tensor:
    """Block starts ``(B, N)`` of blocks whose lengths are drawn uniformly from ``1..max_length``,
    independently per block and per row (the first block starts at 0)."""
    lengths = torch.randint(1, max_length + 1, (batch, length), generator=generator)
    first = torch.cumsum(lengths, dim=1) - lengths  # (B, N): start of the b-th block, ascending
    pos = torch.arange(length).expand(batch, length).contiguous()
    index = torch.searchsorted(first, pos, right=True) - 1  # the block holding each position
    return first.gather(1, index)


def block_mask(starts: Tensor) -> Tensor:
    """Training-mode mask ``(B, N, 2N)`` from block starts ``(B, N)``.

    Keys ``[:N]`` are memory at positions ``0..N-1`` (visible when ``m <= s(i) - 1``), keys
    ``[N:]`` are M_S's own at ``0..N-1`` (visible when ``s(i) <= m <= i``).
    """
    n = starts.shape[1]
    key_pos = torch.arange(n, device=starts.device)  # (N,)
    query_pos = key_pos.view(1, n, 1)
    s = starts.unsqueeze(-1)  # (B, N, 1)
    memory = key_pos < s  # (B, N, N)
    own = (key_pos >= s) & (key_pos <= query_pos)  # (B, N, N)
    return torch.cat([memory, own], dim=-1)


# --------------------------------------------------------------------------- tandem M_S


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x ``(B, h, n, dh)``, cos/sin ``(B, n, dh)``."""
    return x * cos.unsqueeze(1) + _rotate_half(x) * sin.unsqueeze(1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, n, heads * dh)`` -> ``(B, heads, n, dh)``."""
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def _repeat_kv(x: Tensor, groups: int) -> Tensor:
    """GQA: ``(B, h_kv, n, dh)`` -> ``(B, h_kv * groups, n, dh)``, each KV head repeated in place."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x.unsqueeze(2).expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def _sliding_windows(config: PretrainedConfig) -> list[int | None]:
    """Per layer, the sliding-window size HF applies (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
    return [window if window and kind == "sliding_attention" else None for kind in types]


class TandemSmall(nn.Module):
    """M_S plus one projection ``W_T^(j)`` (d_L -> d_S) per layer and an optional router.

    Invariant: position ``m`` of layer ``j``'s keys/values holds memory K/V (from
    ``W_T^(j) x_m^(ℓ(j))`` through layer ``j``'s input norm, k/v projections and rotary at
    ``m``) once M_L has covered ``m``, and M_S's own K/V otherwise. Queries always come from
    M_S's own residual stream; MLPs, norms and the head are M_S's ordinary computation.
    """

    def __init__(self, small: PreTrainedModel, config: TandemConfig) -> None:
        super().__init__()
        check_supported(small.config, "M_S")
        if len(config.layer_map) != small.config.num_hidden_layers:
            raise TrainingError(
                f"tandem config maps {len(config.layer_map)} M_S layers but M_S has "
                f"{small.config.num_hidden_layers}; recreate it with create_tandem"
            )
        self.config = config
        self.small = small
        self.projections = nn.ModuleList(
            nn.Linear(config.large_hidden_size, small.config.hidden_size, bias=False)
            for _ in config.layer_map
        )
        self.router = Router(config.router) if config.router else None
        self._memory_index = [config.large_layers.index(layer) for layer in config.layer_map]
        self._windows = _sliding_windows(small.config)
        # A draft vocabulary's token id per logit column, and each token id's column (-1: a token
        # the drafter never proposes); None without one. Derived from the config, not saved.
        ids, column = _draft_index(config.draft_vocab, config.vocab_size)
        self.register_buffer("draft_ids", ids, persistent=False)
        self.register_buffer("column_of_token", column, persistent=False)

    def _forward(self, input_ids: Tensor, token_pos: Tensor, memory: list[Tensor], memory_pos: Tensor,
                 mask: Tensor, past: list[KV] | None, columns_only: bool = False) -> tuple[Tensor, list[KV]]:
        """Layers + head. Keys per layer are ``[past, memory, own]`` at positions
        ``key_pos = [0..P-1, memory_pos, token_pos]``; ``mask (B, n, keys)`` is True where
        visible. Returns logits ``(B, n, V)`` (``(B, n, N)`` over the draft vocabulary's columns
        with ``columns_only``) and per-layer ``(k, v)`` over all keys."""
        cfg = self.small.config
        groups = cfg.num_attention_heads // cfg.num_key_value_heads
        backbone = self.small.model
        y = backbone.embed_tokens(input_ids)  # (B, n, d_S)
        cos, sin = backbone.rotary_emb(y, token_pos.unsqueeze(0))  # (1, n, dh)
        mem_cos, mem_sin = backbone.rotary_emb(y, memory_pos.unsqueeze(0))  # (1, m, dh)
        past_len = 0 if past is None else past[0][0].shape[2]
        key_pos = torch.cat([torch.arange(past_len, device=token_pos.device), memory_pos, token_pos])
        distance = token_pos.view(-1, 1) - key_pos.view(1, -1)  # (n, keys)
        batch, n = input_ids.shape
        present: list[KV] = []
        for j, layer in enumerate(backbone.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(y)
            q = _split_heads(attn.q_proj(h), cfg.num_attention_heads)  # (B, nh, n, dh)
            k = _split_heads(attn.k_proj(h), cfg.num_key_value_heads)  # (B, h_kv, n, dh)
            v = _split_heads(attn.v_proj(h), cfg.num_key_value_heads)
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)

            mem = layer.input_layernorm(self.projections[j](memory[self._memory_index[j]]))  # (B, m, d_S)
            mem_k = _split_heads(attn.k_proj(mem), cfg.num_key_value_heads)  # (B, h_kv, m, dh)
            mem_v = _split_heads(attn.v_proj(mem), cfg.num_key_value_heads)
            mem_k = _rotary(mem_k, mem_cos, mem_sin)  # (B, h_kv, m, dh)

            keys = [mem_k, k] if past is None else [past[j][0], mem_k, k]
            values = [mem_v, v] if past is None else [past[j][1], mem_v, v]
            keys_all, values_all = torch.cat(keys, dim=2), torch.cat(values, dim=2)  # (B, h_kv, keys, dh)
            present.append((keys_all, values_all))

            visible = mask if self._windows[j] is None else mask & (distance < self._windows[j])
            k_rep, v_rep = _repeat_kv(keys_all, groups), _repeat_kv(values_all, groups)  # (B, nh, keys, dh)
            scores = (q @ k_rep.transpose(-1, -2)) * attn.scaling  # (B, nh, n, keys)
            scores = scores.masked_fill(~visible.unsqueeze(1), float("-inf"))
            out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v_rep  # (B, nh, n, dh)
            y = y + attn.o_proj(out.transpose(1, 2).reshape(batch, n, q.shape[1] * q.shape[3]))
            y = y + layer.mlp(layer.post_attention_layernorm(y))
        hidden = backbone.norm(y)
        if columns_only and self.draft_ids is not None:  # only the draft vocabulary's head rows
            return torch.nn.functional.linear(hidden, self.small.lm_head.weight[self.draft_ids]), present  # (B, n, N)
        return self.small.lm_head(hidden), present  # (B, n, V)

    def step(self, input_ids: Tensor, memory: list[Tensor],
             past: list[KV]) -> tuple[Tensor, list[KV], Tensor | None]:
        """Append ``m`` memory rows then ``t`` tokens after ``past`` (length ``P``).

        input_ids ``(1, t)`` (``t = 0``: memory only); memory: ``(1, m, d_L)`` per ``large_layers`` entry; past: ``(k, v)``
        ``(1, h_kv, P, dh)`` per layer. Returns logits ``(1, t, V)`` (-inf outside a draft vocabulary), present
        ``(1, h_kv, P+m+t, dh)`` and the router scores ``(1, t, 2)`` (greedy, sampled; None without
        routers).
        """
        past_len = past[0][0].shape[2]
        m, t = memory[0].shape[1], input_ids.shape[1]
        device = input_ids.device
        memory_pos = torch.arange(past_len, past_len + m, device=device)
        token_pos = torch.arange(past_len + m, past_len + m + t, device=device)
        key_pos = torch.arange(past_len + m + t, device=device)
        mask = (key_pos.view(1, -1) <= token_pos.view(-1, 1)).unsqueeze(0)  # (1, t, P+m+t)
        logits, present = self._forward(input_ids, token_pos, memory, memory_pos, mask, past)
        embed = self.small.get_input_embeddings().weight
        ids = self.draft_ids
        if ids is not None:  # the drafter proposes only its draft vocabulary: -inf (probability 0) elsewhere
            draft = logits[..., ids]
            score = None if self.router is None else self.router(draft, embed[ids])
            return torch.full_like(logits, float("-inf")).index_copy(-1, ids, draft), present, score
        score = None if self.router is None else self.router(logits, embed)
        return logits, present, score

    def forward_train(self, input_ids: Tensor, reps: list[Tensor], block_starts: Tensor) -> Tensor:
        """Training-mode forward: logits ``(B, N, V)``.

        input_ids ``(B, N)``; reps: ``(B, N, d_L)`` per ``large_layers`` entry (M_L's
        representations of the same positions); block_starts ``(B, N)``: ``s(i)``, see
        :func:`block_starts`. Query ``i`` sees memory at ``m <= s(i) - 1`` and own keys at
        ``s(i) <= m <= i``.
        """
        logits = self.forward_columns(input_ids, reps, block_starts)
        if self.draft_ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self.config.vocab_size), float("-inf"))
        return full.index_copy(-1, self.draft_ids, logits)

    def forward_columns(self, input_ids: Tensor, reps: list[Tensor], block_starts: Tensor) -> Tensor:
        """:meth:`forward_train` over the draft vocabulary only: logits ``(B, N, len(draft_ids))``
        (the same as forward_train without a draft vocabulary). Training uses this: the head
        costs N rows instead of V."""
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        logits, _ = self._forward(input_ids, pos, reps, pos, block_mask(block_starts), None, columns_only=True)
        return logits

    def save_pretrained(self, folder: str | Path) -> None:
        """M_S as an HF folder, plus ``tandem_config.json`` and ``tandem.safetensors``."""
        self.small.save_pretrained(folder)
        self.save_tandem_files(folder)

    def save_tandem_files(self, folder: str | Path) -> None:
        """Write ``tandem_config.json`` and ``tandem.safetensors`` (``W_T`` and the routers), each
        replaced atomically; alone, after refitting the routers of a saved M_S (whose HF weights
        stay as they are)."""
        folder = Path(folder)
        tensors = {f"projections.{j}.weight": p.weight for j, p in enumerate(self.projections)}
        if self.router is not None:
            tensors.update({f"router.{k}": v for k, v in self.router.state_dict().items()})
        weights = folder / TANDEM_WEIGHTS_FILE
        tmp = weights.with_suffix(".safetensors.tmp")
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp)
        tmp.replace(weights)
        config = folder / TANDEM_CONFIG_FILE
        tmp = config.with_suffix(".json.tmp")
        tmp.write_text(self.config.to_json())
        tmp.replace(config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, drop_router: bool = False) -> TandemSmall:
        """Load a folder written by :meth:`save_pretrained`. Its routers must be of the current
        layout (:class:`tandem.train.router.OldRouterError` otherwise); ``drop_router`` loads the
        drafter without them (to refit them, or where they are not used)."""
        folder = Path(folder)
        missing = [name for name in ("config.json", TANDEM_CONFIG_FILE, TANDEM_WEIGHTS_FILE)
                   if not (folder / name).exists()]
        if missing:
            raise TrainingError(
                f"{folder} is not a tandem M_S folder (missing {', '.join(missing)}); "
                "write one with TandemSmall.save_pretrained or `tandem train --mode tandem`"
            )
        check_supported(AutoConfig.from_pretrained(folder), "M_S")
        small = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        config = TandemConfig.from_json((folder / TANDEM_CONFIG_FILE).read_text(), str(folder / TANDEM_CONFIG_FILE),
                                        drop_router=drop_router)
        model = cls(small, config)
        tensors = load_file(folder / TANDEM_WEIGHTS_FILE)
        if drop_router:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("router.")}
        extra = model.load_state_dict(tensors, strict=False)
        wrong = [k for k in extra.missing_keys if not k.startswith("small.")] + extra.unexpected_keys
        if wrong:
            raise TrainingError(f"{folder / TANDEM_WEIGHTS_FILE} does not match its config: {wrong}")
        return model.eval()


def drafter_logits(model: TandemSmall | PreTrainedModel, input_ids: Tensor, reps: list[Tensor],
                   starts: Tensor) -> Tensor:
    """Training-mode logits ``(B, N, V)`` of a tandem M_S (block mask from ``starts``) or a plain LM
    (-inf outside a draft vocabulary)."""
    if isinstance(model, TandemSmall):
        return model.forward_train(input_ids, reps, starts)
    logits = plain_columns(model, input_ids)
    ids = draft_ids(model)
    if ids is None:
        return logits
    full = logits.new_full((*logits.shape[:-1], model.config.vocab_size), float("-inf"))
    return full.index_copy(-1, ids, logits)


def create_lm_config(arch: str, vocab_size: int, num_layers: int, hidden_size: int, num_heads: int,
                     num_kv_heads: int | None = None, intermediate_size: int | None = None,
                     max_positions: int = 2048, eos_id: int | None = None) -> PretrainedConfig:
    """A from-scratch causal-LM config of ``arch`` (``llama``, ``qwen2`` or ``mistral``)."""
    if arch not in SUPPORTED_MODEL_TYPES:
        raise TrainingError(f"unknown architecture {arch!r}; use one of {', '.join(SUPPORTED_MODEL_TYPES)}")
    if hidden_size % num_heads or num_heads % (num_kv_heads or num_heads):
        raise TrainingError(f"hidden size {hidden_size} must be divisible by {num_heads} heads, "
                            f"and the heads by the {num_kv_heads} KV heads")
    return AutoConfig.for_model(
        arch, vocab_size=vocab_size, num_hidden_layers=num_layers, hidden_size=hidden_size,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads or num_heads,
        head_dim=hidden_size // num_heads, intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_positions, tie_word_embeddings=False,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
