"""Per-architecture facts the exporter needs: one small entry per supported family.

The families are `tandem.train.model.SUPPORTED_MODEL_TYPES` (the tandem attention drives
their layers by hand). Adding one = support there, plus a tiny fixture in
tests/tiny_models.py and an entry in tests/test_foundation.py's ARCHS
(`test_every_supported_arch_has_a_fixture` fails otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tandem.errors import ExportError
from tandem.train.model import SUPPORTED_MODEL_TYPES


@dataclass(frozen=True)
class Arch:
    model_type: str

    def dims(self, config: Any) -> dict[str, int]:
        """Graph dims from a Hugging Face config."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return {
            "num_layers": config.num_hidden_layers,
            "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
            "head_dim": head_dim,
            "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size,
        }


SUPPORTED: dict[str, Arch] = {name: Arch(name) for name in SUPPORTED_MODEL_TYPES}


def arch_of(model: Any) -> Arch:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED:
        raise ExportError(
            f"unsupported architecture {model_type!r}: tandem exports {sorted(SUPPORTED)}; "
            "convert the model to one of these families or add an entry in export/arch.py"
        )
    return SUPPORTED[model_type]
