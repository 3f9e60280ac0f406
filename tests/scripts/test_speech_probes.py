"""The probe and metric helpers of scripts/speech_probes.py (used by scripts/experiment_speech.py) against direct float64 references."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "speech_probes.py"



def test_text_ids_roundtrip_and_greedy_ctc(exp):
    ids = exp.text_to_ids("Don't  stop, NOW.")
    assert exp.ids_to_text(ids) == "don't stop now"
    a, b = exp.text_to_ids("a")[0], exp.text_to_ids("b")[0]
    # repeats collapse, a blank separates a genuine double letter
    assert exp.greedy_ctc([0, a, a, 0, a, b, b, 0]) == [a, a, b]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=7), st.lists(st.integers(0, 3), max_size=7))
def test_edit_distance_matches_recursive_definition(exp, x, y):
    @functools.cache
    def ref(i: int, j: int) -> int:
        if i == 0 or j == 0:
            return i + j
        return min(ref(i - 1, j) + 1, ref(i, j - 1) + 1, ref(i - 1, j - 1) + (x[i - 1] != y[j - 1]))

    assert exp.edit_distance(x, y) == ref(len(x), len(y))


def test_ridge_probe_solves_the_normal_equations(exp):
    g = torch.Generator().manual_seed(0)
    vocab, dim, lam = 6, 3, 0.7
    tokens = [torch.randint(vocab, (n,), generator=g) for n in (9, 14, 5)]
    feats = [torch.randn(len(t), dim, generator=g) for t in tokens]
    weights, mean = exp.fit_ridge_probe(tokens, feats, vocab, lam=lam)
    x = torch.nn.functional.one_hot(torch.cat(tokens), vocab).double()
    y = torch.cat(feats).double()
    direct = torch.linalg.solve(x.T @ x + lam * torch.eye(vocab, dtype=torch.float64), x.T @ (y - y.mean(0)))
    torch.testing.assert_close(weights, direct)
    torch.testing.assert_close(mean, y.mean(0))
    # R^2 against the direct formula on new data
    held = [torch.randint(vocab, (11,), generator=g)]
    held_y = [torch.randn(11, dim, generator=g)]
    pred = y.mean(0) + torch.nn.functional.one_hot(held[0], vocab).double() @ direct
    hy = held_y[0].double()
    expected = 1 - ((hy - pred) ** 2).sum() / ((hy - hy.mean(0)) ** 2).sum()
    assert exp.ridge_r2(weights, mean, held, held_y) == pytest.approx(float(expected), rel=1e-12)


def test_ridge_probe_recovers_token_determined_features(exp):
    g = torch.Generator().manual_seed(1)
    table = torch.randn(4, 2, generator=g)
    tokens = [torch.randint(4, (200,), generator=g)]
    weights, mean = exp.fit_ridge_probe(tokens, [table[tokens[0]]], 4, lam=1e-9)
    assert exp.ridge_r2(weights, mean, tokens, [table[tokens[0]]]) == pytest.approx(1.0, abs=1e-6)


def test_codebook_stats(exp):
    stats = exp.codebook_stats([torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])], vocab=8)
    assert stats["usage"] == pytest.approx(3 / 8)
    assert stats["perplexity"] == pytest.approx(3.0)  # uniform over 3 used entries
    skewed = exp.codebook_stats([torch.tensor([0, 0, 0, 1])], vocab=2)
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    assert skewed["perplexity"] == pytest.approx(math.exp(float(-(p * p.log()).sum())))


def test_ctc_probe_evaluation_reads_a_token_to_character_code(exp):
    # token k + 1 always sounds like character k + 1, token 0 is silence; the probe that says so
    # (trained by fit: tests/configs/test_speech_ctc_configs.py, tests/scripts/test_experiment_speech.py)
    g = torch.Generator().manual_seed(0)
    targets, tokens = [], []
    for _ in range(12):
        chars = torch.randint(1, 6, (5,), generator=g).tolist()
        seq = []
        for c in chars:
            seq += [c] * 2 + [0]
        targets.append(chars)
        tokens.append(torch.tensor(seq))
    table = torch.zeros(6, 29)
    table[torch.arange(6), torch.arange(6)] = 6.0
    result = exp.eval_ctc_probe(table, tokens, targets)
    assert result["ctc_cer"] == 0.0
    assert 0 < result["ctc_nats_per_char"] < 0.3
    # its nats/char is the summed CTC loss of the probe's logits over the characters
    tok, tok_len = exp.pad_sequences(tokens)
    tgt, tgt_len = exp.pad_sequences([torch.tensor(t) for t in targets])
    log_probs = table[tok].double().log_softmax(-1).transpose(0, 1)
    direct = torch.nn.functional.ctc_loss(log_probs, tgt, tok_len, tgt_len, blank=0, reduction="sum")
    # the probe runs in float32: per frame log-softmax rounding is ~1e-7 nats, ~3 frames per character
    assert result["ctc_nats_per_char"] == pytest.approx(float(direct) / 60, abs=1e-6)
    # random tokens carry nothing: the untrained (all-zero) probe emits blanks only
    assert exp.eval_ctc_probe(torch.zeros(6, 29), tokens, targets)["ctc_cer"] == 1.0


def test_stretch_and_interpolate_frames(exp):
    assert exp.stretch_tokens(torch.tensor([4, 5, 6]), 6).tolist() == [4, 4, 5, 5, 6, 6]
    feats = torch.arange(4, dtype=torch.float32)[:, None].repeat(1, 2)
    out = exp.interpolate_frames(feats, 8)
    assert out.shape == (8, 2) and out[0, 0] == 0 and out[-1, 0] == 3
    assert torch.all(out[1:, 0] >= out[:-1, 0])
