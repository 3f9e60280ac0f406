import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from lit_distill.cache import TeacherCache, sparse_teacher, write_split
from lit_distill.cache_codec import (
    bytes_per_position,
    decode_knots,
    decode_logprobs,
    encode_knots,
    encode_logprobs,
    id_bits,
    knot_ranks,
    num_knots,
    pack_ids,
    unpack_ids,
)
from lit_distill.losses import sparse_forward_kl

F16_REL = 2.0**-11  # float16's relative rounding error (round to nearest)
F16_SUB = 2.0**-25  # ... and its absolute one among subnormals (below 2**-14)
F32_EPS = torch.finfo(torch.float32).eps


def test_bytes_per_position_at_k128():
    assert bytes_per_position(128, 1024) == 297
    assert bytes_per_position(128, 128_256) == 409
    # knots: 272 B of 17-bit ids + float16 top-1, step and tail + 22 uint8 codes
    assert bytes_per_position(128, 128_256, "knots") == 300 and num_knots(128) == 22
    assert bytes_per_position(128, 1024, "knots") == 160 + 6 + 22
    assert id_bits(1024) == 10 and id_bits(1025) == 11 and id_bits(2) == 1
    with pytest.raises(ValueError, match="knots"):
        bytes_per_position(128, 1024, "float16")


def test_knot_ranks_start_dense_and_end_at_k():
    assert knot_ranks(128)[:11] == tuple(range(2, 13)) and knot_ranks(128)[-1] == 128
    for k in (1, 2, 16, 17, 18, 64, 128, 1000, 4096):
        ranks = knot_ranks(k)
        assert len(ranks) == num_knots(k) and all(a < b for a, b in zip(ranks, ranks[1:], strict=False))
        assert not ranks or (ranks[0] == 2 and ranks[-1] == k)
    assert knot_ranks(17) == tuple(range(2, 18))  # k <= 17: every rank is a knot


def _reference_pack(ids: torch.Tensor, bits: int) -> list[list[int]]:
    """The format's definition: bit j of id i is bit i*b + j of the row, least significant bit first."""
    rows = []
    for row in ids.tolist():
        value = sum(int(x) << (i * bits) for i, x in enumerate(row))
        rows.append(list(value.to_bytes(math.ceil(len(row) * bits / 8), "little")))
    return rows


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 200_000), k=st.integers(1, 40), t=st.integers(1, 6), seed=st.integers(0, 99))
def test_ids_round_trip_exactly_in_the_version_2_bit_layout(vocab, k, t, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (t, k), generator=g)
    ids[0, 0] = vocab - 1
    packed = pack_ids(ids, vocab)
    assert packed.dtype == torch.uint8 and packed.shape == (t, math.ceil(k * id_bits(vocab) / 8))
    assert packed.tolist() == _reference_pack(ids, id_bits(vocab))  # version-2 caches still read
    assert torch.equal(unpack_ids(packed, k, vocab), ids)


def _sorted_logprobs(t: int, vocab: int, k: int, temp: float, seed: int) -> torch.Tensor:
    """``[t, k]`` float64 top-k log-probs of random logits scaled by ``temp`` (peakedness)."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(t, vocab, generator=g, dtype=torch.float64) * temp, -1)
    return lp.topk(k, -1).values


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 5000), k=st.integers(1, 64), t=st.integers(1, 6),
       temp=st.floats(0.05, 20.0), seed=st.integers(0, 99))
def test_logprob_error_within_half_step(vocab, k, t, temp, seed):
    k = min(k, vocab)
    values = _sorted_logprobs(t, vocab, k, temp, seed).float()
    top1, step, codes = encode_logprobs(values)
    decoded = decode_logprobs(top1, step, codes)
    assert torch.equal(decoded[:, 0], values[:, 0])
    err = (decoded - values).abs()
    # Half a step, plus float32 rounding of top1 - code * step.
    bound = step.float().unsqueeze(-1) / 2 + 4 * F32_EPS * values.abs().amax(-1, keepdim=True)
    assert (err <= bound).all()
    assert (step.float() * 255 >= (values[:, 0] - values[:, -1])).all()


def knots_bound(values: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The derived error bound ``[T, k]`` of :func:`decode_knots` against float64 log-probs ``values``:
    ``s / 2 + |t - lp_1|`` at knots, plus the true drop across the knot interval between them,
    plus float32 arithmetic."""
    t, k = values.shape
    s = step.double().unsqueeze(-1)
    top1_rounding = values[:, :1].abs() * F16_REL + F16_SUB
    bound = (s / 2 + top1_rounding).expand(t, k).clone()
    knots = [1, *knot_ranks(k)]
    for a, b in zip(knots, knots[1:], strict=False):
        bound[:, a:b - 1] += (values[:, a - 1] - values[:, b - 1]).unsqueeze(-1)
    return bound + 8 * F32_EPS * values[:, -1:].abs()


@settings(max_examples=60, deadline=None)
@given(vocab=st.integers(2, 5000), k=st.integers(1, 200), t=st.integers(1, 6),
       temp=st.floats(0.05, 30.0), seed=st.integers(0, 99))
def test_knots_decode_sorted_below_the_top1_within_the_derived_bound(vocab, k, t, temp, seed):
    k = min(k, vocab)
    values = _sorted_logprobs(t, vocab, k, temp, seed)
    top1, step, codes = encode_knots(values.float())
    assert top1.dtype == step.dtype == torch.float16 and codes.shape == (t, num_knots(k))
    decoded = decode_knots(top1, step, codes, k)
    assert decoded.dtype == torch.float32 and decoded.shape == (t, k)
    assert torch.equal(decoded[:, 0], top1.float())
    assert (decoded[:, 1:] <= decoded[:, :-1]).all() and (decoded <= decoded[:, :1]).all()
    assert ((decoded.double() - values).abs() <= knots_bound(values, step)).all()
    ranks = torch.tensor([1, *knot_ranks(k)]) - 1  # at knots: half a step (+ the float16 top-1)
    at_knots = (decoded.double() - values)[:, ranks].abs()
    assert (at_knots <= step.double().unsqueeze(-1) / 2 + values[:, :1].abs() * F16_REL + F16_SUB + 1e-5).all()


def test_knots_store_minus_infinity_as_probability_zero():
    values = torch.tensor([[-0.1, -2.0, *[-5.0] * 20, -math.inf, -math.inf]])
    top1, step, codes = encode_knots(values)
    decoded = decode_knots(top1, step, codes, values.shape[1])
    assert torch.isfinite(decoded).all() and decoded[0, -1].exp() == 0
    assert (decoded[:, 1:] <= decoded[:, :-1]).all()


def _peaked_logits(n: int, vocab: int, seed: int) -> torch.Tensor:
    """``[n, V]`` logits shaped like a language model's: a Gaussian bulk plus a few boosted tokens."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g) * 2.0
    boosted = torch.randint(0, vocab, (n, 40), generator=g)
    amplitude = torch.empty(n, 1).uniform_(5, 30, generator=g)
    return logits.scatter_add(1, boosted, torch.rand(n, 40, generator=g) ** 3 * amplitude)


def test_sparse_kl_from_knots_matches_float16_within_the_bound():
    n, vocab, k = 64, 4096, 128
    ids, log_p, tail = sparse_teacher(_peaked_logits(n, vocab, 0), k, 1.0)
    top1, step, codes = encode_knots(log_p)
    decoded, tail16 = decode_knots(top1, step, codes, k), tail.to(torch.float16).float()
    student = torch.randn(n, vocab, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def value_and_grad(lp, t):
        loss = sparse_forward_kl(student, ids, lp, t)
        return loss.detach(), torch.autograd.grad(loss, student)[0]

    v16, g16 = value_and_grad(log_p.to(torch.float16).float(), tail)
    vk, gk = value_and_grad(decoded, tail16)
    # Per position, f(x) = e^x (x - log q) changes by at most max|f'| |dx| over the interval between
    # the two log-probs: e^{max x} (|x - log q| + 1) at its ends; the tail term likewise.
    log_q = torch.log_softmax(student.detach(), -1).gather(1, ids)
    x16, xk = log_p.to(torch.float16).float().double(), decoded.double()
    hi, dx = torch.maximum(x16, xk), (x16 - xk).abs()
    slope = hi.exp() * torch.maximum((x16 - log_q + 1).abs(), (xk - log_q + 1).abs())
    dtail = (tail.double() - tail16.double()).abs()
    log_q_tail = torch.log_softmax(student.detach(), -1).scatter(1, ids, -math.inf).logsumexp(-1).double()
    tail_slope = torch.maximum((tail.double().log() - log_q_tail + 1).abs(),
                               (tail16.double().log() - log_q_tail + 1).abs())
    value_bound = ((slope * dx).sum(-1) + tail_slope * dtail).mean()
    assert (vk - v16).abs() <= value_bound + 1e-6
    # The gradient (M q - p on the top k, M = Σp + tail) moves by at most |ΔM| + Σ|Δp| + |Δtail| per
    # position in L1 (over positions: the mean), so the L1 norm of its change is at most that.
    dp = (xk.exp() - x16.exp()).abs()
    grad_bound = (2 * (dp.sum(-1) + dtail)).mean()
    assert (gk - g16).abs().sum() <= grad_bound + 1e-6
    assert 0 < (vk - v16).abs() and (gk - g16).abs().sum() > 0  # the codec is lossy: the bounds bind


@pytest.mark.parametrize(("encoding", "per_position"), [("knots", 300), ("compact", 409), ("float16", 772)])
def test_on_disk_size_at_an_llm_vocabulary(tmp_path, encoding, per_position):
    vocab, k, lengths = 128_256, 128, [5, 7, 4]
    dataset = [{"input_ids": torch.zeros(n, dtype=torch.long), "row": i} for i, n in enumerate(lengths)]
    logits = _peaked_logits(len(lengths) * max(lengths), vocab, 2).reshape(len(lengths), max(lengths), vocab)

    def run_teacher(batch):
        return logits[batch["rows"]]

    def collate(samples):
        return {"rows": torch.tensor([sample["row"] for sample in samples])}

    split = tmp_path / "train"
    assert write_split(run_teacher, dataset, collate, split, top_k=k, samples_per_shard=8, batch_size=2,
                       vocab_size=vocab, data_vocab_size=None, tokenizer_fp=None, teacher="random",
                       logprob_dtype=encoding, progress=False)
    if encoding != "float16":
        assert bytes_per_position(k, vocab, encoding) == per_position
    version = json.loads((split / "manifest.json").read_text())["version"]
    assert version == {"knots": 4, "compact": 2, "float16": 1}[encoding]  # knots: readers of 1-3 refuse it
    shard = next(split.glob("shard-*.safetensors"))
    header = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
    with safe_open(str(shard), "pt") as handle:
        per_shard = sum(handle.get_tensor(name).nbytes for name in ("lengths", "sample_index", "knot_ranks")
                        if name in handle.keys())
    assert shard.stat().st_size - header - per_shard == per_position * sum(lengths)
    cache = TeacherCache(split)
    for i, n in enumerate(lengths):
        ids, lp, tail = cache[i]
        true_ids, true_lp, true_tail = sparse_teacher(logits[i, :n], k, 1.0)
        assert torch.equal(ids, true_ids) and tail.dtype == torch.float32
        assert ((tail - true_tail).abs() <= F16_REL * true_tail + F16_SUB).all()
        if encoding == "knots":
            _, step, _ = encode_knots(true_lp)
            assert ((lp.double() - true_lp.double()).abs() <= knots_bound(true_lp.double(), step) + 1e-6).all()
