"""Tandem M_S: layer map, block mask, step/cache equivalence, tandem equivalence, save/load."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_config, tiny_large, tiny_model

from tandem.errors import TrainingError
from tandem.train.model import (
    TandemSmall,
    block_mask,
    block_starts,
    create_drafter_config,
    create_tandem,
    empty_past,
    large_step,
    layer_map,
    plain_step,
)

ATOL = 1e-5
ARCH_CASES = [  # (arch, kv heads of M_L and M_S, tied embeddings)
    ("llama", 2, False),
    ("llama", 4, True),
    ("qwen2", 2, True),
    ("mistral", 1, False),
]


def make_pair(arch: str, kv_heads: int, tie: bool, assignment: str = "proportional") -> tuple:
    large = tiny_large(arch, num_layers=3, num_kv_heads=kv_heads, tie=tie, hidden_size=32)
    small_config = create_drafter_config(large.config, num_layers=2, hidden_size=32, num_heads=4,
                                         num_kv_heads=kv_heads)
    tandem = create_tandem(large, small_config, assignment, router=True, seed=1).eval()
    with torch.no_grad():  # random, non-trivial weights everywhere (projections and M_S)
        for param in tandem.parameters():
            if param.dim() == 2:
                param.normal_(0.0, 0.2)
    return large, tandem


def crop(past: list, length: int) -> list:
    return [(k[:, :, :length], v[:, :, :length]) for k, v in past]


# --------------------------------------------------------------------------- layer map and mask


def test_layer_map_round_half_up():
    assert layer_map("last", 12, 3) == [12, 12, 12]
    assert layer_map("proportional", 12, 3) == [4, 8, 12]
    assert layer_map("proportional", 3, 2) == [2, 3]  # 1.5 rounds up to 2 (Python's round gives 2 too)
    assert layer_map("proportional", 5, 2) == [3, 5]  # 2.5 -> 3 (Python's round gives 2)
    assert layer_map("proportional", 2, 4) == [1, 1, 2, 2]  # 0.5 -> 1, 1.5 -> 2
    with pytest.raises(TrainingError, match="proportional"):
        layer_map("first", 4, 2)


def test_layer_map_explicit_layers():
    assert layer_map("2", 4, 1) == [2]
    assert layer_map("2", 4, 3) == [2, 2, 2]  # one layer for all
    assert layer_map("1, 3", 4, 2) == [1, 3]
    assert layer_map("0", 4, 1) == [0]  # the embedding output is a valid source
    for bad in ("5", "1,2,3", "-1", "2,x"):
        with pytest.raises(TrainingError, match="layer"):
            layer_map(bad, 4, 2)


@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_block_mask_matches_brute_force(gamma):
    n = 10
    offsets = torch.tensor([0, 1, gamma - 1])
    mask = block_mask(block_starts(3, n, gamma, offsets))
    for b, o in enumerate(offsets.tolist()):
        for i in range(n):
            s = 0 if i < o else o + ((i - o) // gamma) * gamma  # block [o + kγ, o + (k+1)γ) or [0, o)
            for m in range(n):
                assert mask[b, i, m].item() == (m <= s - 1), (b, i, m)
                assert mask[b, i, n + m].item() == (s <= m <= i), (b, i, m)


# --------------------------------------------------------------------------- M_L step


@pytest.mark.parametrize("arch,kv_heads,tie", ARCH_CASES)
def test_large_step_matches_hf_forward(arch, kv_heads, tie):
    large = tiny_large(arch, num_layers=3, num_kv_heads=kv_heads, tie=tie, hidden_size=32)
    ids = torch.randint(0, 300, (1, 9))
    ref = large(ids, output_hidden_states=True)
    layers = [0, 2, 3]
    with torch.no_grad():
        logits, present, reps = large_step(large, ids, empty_past(large.config), layers)
        torch.testing.assert_close(logits, ref.logits, atol=ATOL, rtol=0)
        for rep, layer in zip(reps, layers, strict=True):
            torch.testing.assert_close(rep, ref.hidden_states[layer], atol=ATOL, rtol=0)
        # cached: prefix then two more blocks
        past = empty_past(large.config)
        for lo, hi in [(0, 4), (4, 5), (5, 9)]:
            logits, past, reps = large_step(large, ids[:, lo:hi], past, layers)
            torch.testing.assert_close(logits, ref.logits[:, lo:hi], atol=ATOL, rtol=0)
            torch.testing.assert_close(reps[1], ref.hidden_states[2][:, lo:hi], atol=ATOL, rtol=0)
            assert past[0][0].shape == (1, kv_heads, hi, 8)
        torch.testing.assert_close(present[0][0], past[0][0], atol=ATOL, rtol=0)


def test_plain_step_matches_hf_forward():
    model = tiny_large("qwen2")
    ids = torch.randint(0, 300, (1, 7))
    with torch.no_grad():
        ref = model(ids).logits
        first, past = plain_step(model, ids[:, :3], empty_past(model.config))
        second, past = plain_step(model, ids[:, 3:], past)
    torch.testing.assert_close(torch.cat([first, second], 1), ref, atol=ATOL, rtol=0)
    assert past[1][1].shape[2] == 7


# --------------------------------------------------------------------------- M_S step


@pytest.mark.parametrize("arch,kv_heads,tie", ARCH_CASES)
def test_step_without_memory_is_the_plain_model(arch, kv_heads, tie):
    """With m = 0 everywhere the hand-written attention must reproduce HF's own forward."""
    _, tandem = make_pair(arch, kv_heads, tie)
    ids = torch.randint(0, 300, (1, 6))
    no_memory = [torch.zeros(1, 0, 32) for _ in tandem.config.large_layers]
    with torch.no_grad():
        logits, present, score = tandem.step(ids, no_memory, empty_past(tandem.small.config))
        ref, ref_present = plain_step(tandem.small, ids, empty_past(tandem.small.config))
    torch.testing.assert_close(logits, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(present[1][0], ref_present[1][0], atol=ATOL, rtol=0)
    assert score.shape == (1, 6, 2) and ((score > 0) & (score < 1)).all()  # greedy, sampled


@pytest.mark.parametrize("arch,kv_heads,tie", ARCH_CASES[:2] + ARCH_CASES[3:])
def test_step_cached_equals_from_scratch(arch, kv_heads, tie):
    """Steps with memory chunks of 0, 1 and several rows equal one step over everything."""
    large, tandem = make_pair(arch, kv_heads, tie)
    n_layers = len(tandem.config.large_layers)
    memory = [torch.randn(1, 6, 32) for _ in range(n_layers)]
    ids = torch.randint(0, 300, (1, 5))
    # chunks: (memory rows, tokens); positions run memory-then-tokens within each step
    chunks = [(3, 1), (0, 2), (1, 1), (2, 1)]
    with torch.no_grad():
        past = empty_past(tandem.small.config)
        mem_at, tok_at, logits = 0, 0, []
        for m, t in chunks:
            out, past, score = tandem.step(ids[:, tok_at:tok_at + t],
                                           [x[:, mem_at:mem_at + m] for x in memory], past)
            logits.append(out)
            mem_at, tok_at = mem_at + m, tok_at + t
        assert past[0][0].shape[2] == 6 + 5 and score.shape == (1, 1, 2)
        # from scratch: the same sequence, fed as m-row memory steps + token steps at the same positions
        scratch = empty_past(tandem.small.config)
        mem_at, tok_at = 0, 0
        for i, (m, t) in enumerate(chunks):
            empty = [x[:, :0] for x in memory]
            _, scratch, _ = tandem.step(ids[:, :0], [x[:, mem_at:mem_at + m] for x in memory], scratch)
            out, scratch, _ = tandem.step(ids[:, tok_at:tok_at + t], empty, scratch)
            torch.testing.assert_close(out, logits[i], atol=ATOL, rtol=0)
            mem_at, tok_at = mem_at + m, tok_at + t
        torch.testing.assert_close(scratch[1][1], past[1][1], atol=ATOL, rtol=0)
        # and the last token recomputed with the whole prefix as one past, no cache reuse
        full, _, _ = tandem.step(ids[:, -1:], [x[:, :0] for x in memory], crop(past, 10))
        torch.testing.assert_close(full, logits[-1], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,kv_heads,tie", ARCH_CASES)
@pytest.mark.parametrize("one_token_at_a_time", [False, True])
def test_forward_train_equals_block_by_block_steps(arch, kv_heads, tie, one_token_at_a_time):
    """docs/METHOD.md §3.3: feeding step block by block reproduces the training-mode forward."""
    large, tandem = make_pair(arch, kv_heads, tie, "proportional" if kv_heads != 4 else "last")
    n, gamma, offset = 11, 3, 2
    ids = torch.randint(0, 300, (1, n))
    with torch.no_grad():
        _, _, reps = large_step(large, ids, empty_past(large.config), tandem.config.large_layers)
        starts = block_starts(1, n, gamma, torch.tensor([offset]))
        ref = tandem.forward_train(ids, reps, starts)
        bounds = sorted(set(starts[0].tolist())) + [n]
        past, covered, outputs = empty_past(tandem.small.config), 0, []
        for s, e in zip(bounds[:-1], bounds[1:], strict=True):
            past = crop(past, covered)  # rewind to what M_L had covered, then append its memory
            memory = [r[:, covered:s] for r in reps]
            pieces = [(s + k, s + k + 1) for k in range(e - s)] if one_token_at_a_time else [(s, e)]
            for k, (lo, hi) in enumerate(pieces):
                out, past, _ = tandem.step(ids[:, lo:hi], memory if k == 0 else [r[:, :0] for r in reps], past)
                outputs.append(out)
            covered = s
    torch.testing.assert_close(torch.cat(outputs, 1), ref, atol=ATOL, rtol=0)


def test_forward_train_batches_independent_offsets():
    large, tandem = make_pair("llama", 2, False)
    ids = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        _, _, reps = large_step(large, ids, empty_past(large.config, 2), tandem.config.large_layers)
        starts = block_starts(2, 8, 2, torch.tensor([0, 1]))
        both = tandem.forward_train(ids, reps, starts)
        second = tandem.forward_train(ids[1:], [r[1:] for r in reps], starts[1:])
    torch.testing.assert_close(both[1:], second, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- creation and persistence


def test_save_load_round_trip(tmp_path):
    large, tandem = make_pair("qwen2", 2, True, "last")
    tandem.save_pretrained(tmp_path)
    loaded = TandemSmall.from_pretrained(tmp_path)
    assert loaded.config == tandem.config
    ids = torch.randint(0, 300, (1, 4))
    memory = [torch.randn(1, 3, 32) for _ in tandem.config.large_layers]
    with torch.no_grad():
        a = tandem.step(ids, memory, empty_past(tandem.small.config))
        b = loaded.step(ids, memory, empty_past(loaded.small.config))
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)
    torch.testing.assert_close(a[2], b[2], atol=0, rtol=0)
    assert loaded.small.config.tie_word_embeddings


def test_drafter_copies_embeddings_when_widths_match():
    large = tiny_large("llama", num_layers=3, hidden_size=32)
    tandem = create_tandem(large, create_drafter_config(large.config, 1, 32), "last")
    assert torch.equal(tandem.small.get_input_embeddings().weight, large.get_input_embeddings().weight)
    assert torch.equal(tandem.small.lm_head.weight, large.lm_head.weight)
    assert tandem.config.layer_map == [3] and tandem.config.large_layers == [3]
    narrow = create_tandem(large, create_drafter_config(large.config, 2, 16, num_heads=2))
    assert narrow.projections[0].weight.shape == (16, 32)


def test_refuses_mismatched_vocab_and_unsupported_architecture():
    large = tiny_large("llama")
    with pytest.raises(TrainingError, match="vocab size 200 but M_L has 300"):
        create_tandem(large, tiny_model(tiny_config("llama", vocab_size=200)))
    gpt2 = tiny_config("llama")
    gpt2.model_type = "gpt2"
    with pytest.raises(TrainingError, match="supported architectures"):
        create_tandem(large, gpt2)
    with pytest.raises(TrainingError, match="not a tandem M_S folder"):
        TandemSmall.from_pretrained("/nonexistent")
