"""Draft acceptance for speculative decoding: against direct float64 computations and simulation."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.speculative import (
    AcceptanceTally,
    acceptance_per_position,
    expected_tokens_per_call,
    tokens_per_call,
)


def logits(seed: int, shape=(2, 5, 7), scale: float = 2.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_acceptance_is_sum_of_minima_in_float64():
    q, p = logits(0).double(), logits(1).double()
    expected = torch.minimum(p.softmax(-1), q.softmax(-1)).sum(-1)
    torch.testing.assert_close(acceptance_per_position(q.float(), p.float()).double(), expected, rtol=1e-5, atol=1e-6)
    tvd = 0.5 * (p.softmax(-1) - q.softmax(-1)).abs().sum(-1)
    torch.testing.assert_close(expected, 1 - tvd)


def test_acceptance_matches_speculative_sampling_by_simulation():
    """Draw x ~ q, accept with min(1, p/q): the acceptance frequency is Σ min(p, q)."""
    q, p = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.2, 0.6])
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(q, 200_000, replacement=True, generator=g)
    accepted = torch.rand(x.shape, generator=g) < (p[x] / q[x]).clamp(max=1)
    alpha = acceptance_per_position(q.log()[None, None], p.log()[None, None])
    assert abs(float(accepted.float().mean()) - float(alpha)) < 0.005
    assert float(alpha) == pytest.approx(0.2 + 0.2 + 0.2)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 3.0))
def test_acceptance_properties(seed, temperature):
    q, p = logits(seed), logits(seed + 1)
    a = acceptance_per_position(q, p, temperature)
    assert ((a >= 0) & (a <= 1 + 1e-6)).all()
    torch.testing.assert_close(a, acceptance_per_position(p, q, temperature))  # symmetric
    torch.testing.assert_close(acceptance_per_position(q, q, temperature), torch.ones_like(a))  # 1 iff equal
    assert (acceptance_per_position(q, q + 5.0, temperature) > 1 - 1e-5).all()  # shift invariant


def test_greedy_acceptance_is_argmax_agreement():
    q, p = logits(2), logits(3)
    expected = (q.argmax(-1) == p.argmax(-1)).float()
    torch.testing.assert_close(acceptance_per_position(q, p, greedy=True), expected)


def test_padded_target_vocabulary_counts_as_unproposed_tokens():
    q = torch.zeros(1, 1, 2)
    p = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]])  # two extra target-only entries
    assert float(acceptance_per_position(q, p)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="share the target's vocabulary"):
        acceptance_per_position(p, q)


def test_tokens_per_call_against_a_direct_sum_and_the_closed_form():
    g = torch.Generator().manual_seed(4)
    alpha = torch.rand(3, 9, generator=g, dtype=torch.float64)
    lengths = [9, 6, 2]
    mask = torch.arange(9)[None] < torch.tensor(lengths)[:, None]
    gamma = 3
    got = tokens_per_call(alpha, mask, gamma)
    for b, n in enumerate(lengths):
        for t in range(n):
            direct, run = 1.0, 1.0
            for k in range(gamma):
                run *= float(alpha[b, t + k]) if t + k < n else 0.0
                direct += run
            assert float(got[b, t]) == pytest.approx(direct, rel=1e-5)
    constant = torch.full((1, 40), 0.7)
    assert float(tokens_per_call(constant, torch.ones(1, 40, dtype=torch.bool), 4)[0, 0]) == pytest.approx(
        expected_tokens_per_call(0.7, 4), rel=1e-5)
    assert expected_tokens_per_call(1.0, 4) == 5.0 and expected_tokens_per_call(0.0, 4) == 1.0


def test_tally_averages_over_masked_positions_only():
    q, p = logits(5), logits(6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    tally = AcceptanceTally(gamma=2)
    tally.update(q, p, mask)
    result = tally.result()
    assert result["positions"] == 8
    assert result["sampled"]["acceptance"] == pytest.approx(float(acceptance_per_position(q, p)[mask].mean()), rel=1e-5)
    assert 1.0 <= result["greedy"]["tokens_per_call"] <= 3.0


def test_speculate_command_prints_acceptance_json(tmp_path, text_dir, tokenizer_dir, teacher_dir, capsys):
    from lit_distill.cli import main

    main(["speculate", "--target", str(teacher_dir), "--draft", str(teacher_dir), "--data", str(text_dir / "val.txt"),
          "--tokenizer", str(tokenizer_dir), "--gamma", "3", "--max-length", "32", "--limit", "1"])
    result = json.loads(capsys.readouterr().out)
    assert result["positions"] > 0
    for mode in ("sampled", "greedy"):  # a model as its own draft: every token accepted
        assert result[mode]["acceptance"] == pytest.approx(1.0, abs=1e-5)
        assert result[mode]["tokens_per_call"] <= 4.0


def test_speculate_rejects_a_bad_gamma(capsys, text_dir, teacher_dir):
    from lit_distill.cli import main

    with pytest.raises(SystemExit):
        main(["speculate", "--target", str(teacher_dir), "--draft", str(teacher_dir), "--data",
              str(text_dir / "val.txt"), "--gamma", "0"])
    assert "--gamma: must be >= 1" in capsys.readouterr().err


def test_speculate_loads_both_models_on_the_device_and_in_the_dtype_asked(tmp_path, text_dir, tokenizer_dir,
                                                                           teacher_dir, capsys):
    from lit_distill.cli import main

    common = ["speculate", "--target", str(teacher_dir), "--draft", str(teacher_dir), "--data",
              str(text_dir / "val.txt"), "--tokenizer", str(tokenizer_dir), "--max-length", "32", "--limit", "1"]
    main([*common, "--device", "cpu", "--dtype", "bfloat16"])
    result = json.loads(capsys.readouterr().out)
    assert result["sampled"]["acceptance"] == pytest.approx(1.0, abs=1e-3)  # the same bf16 model on both sides
    with pytest.raises(SystemExit):
        main([*common, "--dtype", "float13"])
    assert "speculate --dtype" in capsys.readouterr().err
