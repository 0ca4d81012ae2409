"""What the graph builder and the validation reference need to know about one decoder: its
shape, the Hugging Face tensor names of its parts, and its rotary tables.

Supported: the Llama, Qwen2 and Mistral families (GQA or MHA, tied or untied embeddings,
biases where the checkpoint has them, sliding windows, static RoPE scalings).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tandem.errors import ExportError

SUPPORTED = {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
GQA_HEAD_MULTIPLE = 16  # ONNX Runtime's GroupQueryAttention needs head_size % 16 == 0


def rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type") or params.get("type") or "default")


def sliding_windows(config: Any) -> list[int | None]:
    """Per layer, the sliding-window size Hugging Face applies (None: full attention)."""
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    types = getattr(config, "layer_types", None) or ["sliding_attention"] * config.num_hidden_layers
    return [window if window and kind == "sliding_attention" else None for kind in types]


@dataclass(frozen=True)
class DecoderShape:
    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_eps: float
    tie_embeddings: bool
    windows: tuple[int | None, ...]

    @staticmethod
    def of(config: Any, role: str = "M_L") -> DecoderShape:
        """The shape of a Hugging Face config; ExportError for what the builder cannot build."""
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED:
            raise ExportError(f"{role} is a {model_type!r} model; tandem builds {', '.join(SUPPORTED)} "
                              "decoders. Convert the model to one of these families")
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ExportError(f"{role} uses the activation {act!r}; the graph builder supports silu")
        if rope_type(config) not in STATIC_ROPE:
            raise ExportError(f"{role} uses RoPE scaling {rope_type(config)!r}, which changes with the "
                              f"sequence length; supported: {', '.join(STATIC_ROPE)}")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        if head_dim % GQA_HEAD_MULTIPLE:
            raise ExportError(f"{role} has head_dim {head_dim}; ONNX Runtime's GroupQueryAttention needs a "
                              f"multiple of {GQA_HEAD_MULTIPLE} (use fewer, wider heads)")
        return DecoderShape(
            model_type=model_type,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate_size=config.intermediate_size,
            vocab_size=config.vocab_size,
            rms_eps=float(config.rms_norm_eps),
            tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            windows=tuple(sliding_windows(config)),
        )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def scale(self) -> float:
        return float(self.head_dim) ** -0.5


# Hugging Face tensor names of the parts the builder reads.
EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"


def layer_name(i: int, part: str) -> str:
    """`model.layers.{i}.{part}`: part like `self_attn.q_proj.weight`."""
    return f"model.layers.{i}.{part}"


QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")


def lm_head_name(shape: DecoderShape, names: set[str]) -> str:
    if shape.tie_embeddings or LM_HEAD not in names:
        return EMBED
    return LM_HEAD


def rope_tables(config: Any, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin `[length, head_dim / 2]` float32 for positions 0..length-1, from the inverse
    frequencies and attention scaling of the family's own Hugging Face rotary module (so
    every static RoPE scaling matches). The angles are float32 products as in Hugging Face;
    cos and sin are rounded from float64, so the tables are the same on every machine."""
    prefix = SUPPORTED[config.model_type]
    try:
        module = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    except ImportError:  # no transformers / torch (the runtime install): the same formula in numpy
        inv_freq, scale = _numpy_inv_freq(config)
    else:
        rotary = getattr(module, f"{prefix}RotaryEmbedding")(config)
        inv_freq, scale = rotary.inv_freq.float().numpy(), float(rotary.attention_scaling)
    angles = np.arange(length, dtype=np.float32)[:, None] * inv_freq[None, :]  # float32, as HF
    cos = (np.cos(angles.astype(np.float64)) * scale).astype(np.float32)
    sin = (np.sin(angles.astype(np.float64)) * scale).astype(np.float32)
    return cos, sin


def _numpy_inv_freq(config: Any) -> tuple[np.ndarray, float]:
    """Hugging Face's default / linear RoPE inverse frequencies in float32 numpy, and the
    attention scaling (1). torch's vectorized pow rounds differently in the last bits (up to 2
    ulp), so tables built without torch can differ from the ones built with it by that much."""
    kind = rope_type(config)
    if kind not in ("default", "linear"):
        raise ExportError(f"RoPE scaling {kind!r}: building its tables needs transformers and torch "
                          "(pip install 'tandem-runtime[torch]')")
    params = getattr(config, "rope_parameters", None) or {}
    theta = float(params.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * float(params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))))
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    if kind == "linear":
        inv_freq = (inv_freq / np.float32(params["factor"])).astype(np.float32)
    return inv_freq, 1.0
