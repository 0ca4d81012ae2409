"""A Hugging Face model folder's `config.json`, for the exporter.

With transformers installed, `load_config` is `AutoConfig.from_pretrained` (every family's
defaults). Without it (the torch-free runtime install that builds the default model on first
use), it reads `config.json` itself into a `JsonConfig` carrying the attributes the graph
builder reads (`tandem.export.decoder`), for the Llama, Qwen2 and Mistral families; a key
whose default differs between families and that the file leaves out is refused, naming
transformers, rather than guessed. `config.json` files written by transformers carry every key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tandem.errors import ExportError

# defaults every supported family shares (transformers' LlamaConfig / Qwen2Config / MistralConfig)
_SHARED_DEFAULTS: dict[str, Any] = {
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": None,
    "eos_token_id": None,
    "pad_token_id": None,
    "head_dim": None,
    "num_key_value_heads": None,
    "rope_scaling": None,
    "layer_types": None,
}
_REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings")
# per family, the keys whose meaning the builder needs and that have family-specific defaults
_FAMILY_REQUIRED = {"llama": (), "qwen2": ("use_sliding_window",), "mistral": ("sliding_window",)}


class JsonConfig:
    """The attributes of a `config.json`, with the shared defaults above (`getattr` of an absent
    key raises AttributeError as on a transformers config)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update({**_SHARED_DEFAULTS, **values})
        params = values.get("rope_parameters")
        if not isinstance(params, dict):  # transformers 4 layout: rope_theta + rope_scaling
            params = {"rope_type": "default", "rope_theta": values.get("rope_theta", 10000.0),
                      **(values.get("rope_scaling") or {})}
            params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
        self.rope_parameters = params

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        return f"JsonConfig({self.__dict__.get('model_type')!r})"


def read_json_config(folder: str | Path) -> JsonConfig:
    """`folder/config.json` as a JsonConfig (no transformers)."""
    path = Path(folder) / "config.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ExportError(f"{path} is not a JSON object")
    family = values.get("model_type")
    missing = [k for k in (*_REQUIRED, *_FAMILY_REQUIRED.get(family, ())) if k not in values]
    if family in _FAMILY_REQUIRED and missing:
        raise ExportError(f"{path} leaves out {', '.join(missing)}, whose defaults only transformers knows: "
                          "pip install transformers (or write the keys into config.json)")
    return JsonConfig(values)


def load_config(folder: str | Path) -> Any:
    """The config of the Hugging Face folder `folder`: transformers' when it is installed, else
    a JsonConfig. ExportError when the file is unreadable."""
    try:
        from transformers import AutoConfig
    except ImportError:
        return read_json_config(folder)
    try:
        return AutoConfig.from_pretrained(folder)
    except (ValueError, OSError, KeyError) as exc:
        raise ExportError(f"cannot read {Path(folder) / 'config.json'}: {exc}") from exc
