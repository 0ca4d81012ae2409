"""Shared fixtures: tiny random models and bundles exported from them (once per session)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@dataclass
class Pair:
    """A tiny M_L with a tandem M_S and a plain drafter, and the bundle exported from them."""

    large: object
    tandem: object
    plain: object
    bundle: Path


def make_pair(tmp: Path, arch: str = "llama", seed: int = 0, plain_is_large: bool = False) -> Pair:
    from tiny_models import tiny_large, tiny_tokenizer

    from tandem.export.bundle import export_bundle
    from tandem.train.model import create_drafter, create_drafter_config, create_tandem
    from tandem.train.router import Router, RouterConfig

    large = tiny_large(arch, seed=seed, num_layers=3)
    cfg = create_drafter_config(large.config, num_layers=1, hidden_size=32)
    tandem = create_tandem(large, cfg, router=True, seed=seed)
    plain = large if plain_is_large else create_drafter(large, cfg, seed=seed + 7)
    if not plain_is_large:
        plain.router = Router(RouterConfig(embed_dim=plain.config.hidden_size))
    tok = tiny_tokenizer(tmp / "tok")
    bundle = tmp / "bundle"
    export_bundle(large, bundle, tandem=tandem, plain=plain, tokenizer=tok, context_length=64,
                  max_block_length=8, progress=None)
    return Pair(large, tandem, plain, bundle)


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """Llama M_L (3 layers, GQA) + 1-layer tandem M_S with router + 1-layer plain drafter."""
    return make_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="session")
def self_draft_pair(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    """A bundle whose plain drafter is M_L itself: vanilla must accept every draft."""
    return make_pair(tmp_path_factory.mktemp("self"), arch="qwen2", seed=3, plain_is_large=True)
