"""Property-based tests of the C++ loop: random decoding parameters, block lengths, prompt
lengths near the context limit and EOS placement. Nothing crashes, every output is well
formed, and the greedy lossless modes (speed, vanilla) equal large."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.runtime import load

CONTEXT = 64
VOCAB = 300
FINISH = {"eos", "max_new_tokens", "length"}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def model(pair):
    return load(pair.bundle, threads=1)


prompts = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=CONTEXT - 1)
near_limit = st.integers(CONTEXT - 12, CONTEXT - 1).flatmap(
    lambda n: st.lists(st.integers(0, VOCAB - 1), min_size=n, max_size=n))
modes = st.sampled_from(["large", "tandem", "speed", "vanilla"])


def check_well_formed(result, prompt: list[int], max_new_tokens: int, eos: set[int]) -> None:
    ids = result.ids
    assert all(0 <= i < VOCAB for i in ids)
    assert len(ids) <= max_new_tokens
    assert len(prompt) + len(ids) <= CONTEXT
    assert result.finish_reason in FINISH
    # stops at the first EOS, and only there
    assert not any(i in eos for i in ids[:-1])
    if result.finish_reason == "eos":
        assert ids and ids[-1] in eos
    elif result.finish_reason == "max_new_tokens":
        assert len(ids) == max_new_tokens
    else:
        assert len(prompt) + len(ids) == CONTEXT
    assert result.stats["new_tokens"] == len(ids)


@SETTINGS
@given(prompt=st.one_of(prompts, near_limit), mode=modes, gamma=st.integers(1, 8),
       adaptive=st.booleans(), do_sample=st.booleans(),
       temperature=st.floats(0.05, 5.0), top_k=st.integers(0, VOCAB + 5), top_p=st.floats(0.01, 1.0),
       max_new_tokens=st.integers(0, 80), seed=st.integers(0, 2**64 - 1),
       eos=st.lists(st.integers(0, VOCAB - 1), max_size=3))
def test_random_parameters_give_well_formed_output(model, prompt, mode, gamma, adaptive, do_sample,
                                                   temperature, top_k, top_p, max_new_tokens, seed, eos):
    adaptive = adaptive and mode in ("speed", "vanilla")
    result = model.generate(prompt, mode=mode, block_length="auto" if adaptive else gamma,
                            max_block_length=gamma if adaptive else None, do_sample=do_sample,
                            temperature=temperature, top_k=top_k, top_p=top_p,
                            max_new_tokens=max_new_tokens, seed=seed, eos_token_id=eos or None)
    check_well_formed(result, prompt, max_new_tokens, set(eos or model._model.eos_token_ids))


@SETTINGS
@given(prompt=st.one_of(prompts, near_limit), mode=st.sampled_from(["speed", "vanilla"]),
       gamma=st.integers(1, 8), max_new_tokens=st.integers(1, 70))
def test_greedy_lossless_modes_equal_large(model, prompt, mode, gamma, max_new_tokens):
    base = model.generate(prompt, mode="large", max_new_tokens=max_new_tokens, ignore_eos=True)
    got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=max_new_tokens,
                         ignore_eos=True)
    # the tiny random models have no exact ties at this length (test_runtime_modes certifies it)
    assert got.ids == base.ids
    assert got.finish_reason == base.finish_reason


@SETTINGS
@given(prompt=prompts, mode=modes, gamma=st.integers(1, 8), position=st.integers(0, 40))
def test_eos_anywhere_stops_there(model, prompt, mode, gamma, position):
    """Declaring the token at `position` of the EOS-free output EOS cuts the output right after
    its first occurrence (lossless modes; tandem's blocks depend on the room, so only a cut)."""
    full = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=48, ignore_eos=True).ids
    if position >= len(full):
        return
    eos = full[position]
    got = model.generate(prompt, mode=mode, block_length=gamma, max_new_tokens=48, eos_token_id=eos)
    assert got.finish_reason == "eos" and got.ids[-1] == eos and eos not in got.ids[:-1]
    if mode != "tandem":
        assert got.ids == full[: full.index(eos) + 1]
