import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.cache_codec import (
    bytes_per_position,
    decode_logprobs,
    encode_logprobs,
    id_bits,
    pack_ids,
    unpack_ids,
)


def test_bytes_per_position_at_k128():
    assert bytes_per_position(128, 1024) == 297
    assert bytes_per_position(128, 128_256) == 409
    assert id_bits(1024) == 10 and id_bits(1025) == 11 and id_bits(2) == 1


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 200_000), k=st.integers(1, 40), t=st.integers(1, 6), seed=st.integers(0, 99))
def test_ids_round_trip_exactly(vocab, k, t, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (t, k), generator=g)
    ids[0, 0] = vocab - 1
    packed = pack_ids(ids, vocab)
    assert packed.dtype == torch.uint8 and packed.shape == (t, math.ceil(k * id_bits(vocab) / 8))
    assert torch.equal(unpack_ids(packed, k, vocab), ids)


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 5000), k=st.integers(1, 64), t=st.integers(1, 6),
       temp=st.floats(0.05, 20.0), seed=st.integers(0, 99))
def test_logprob_error_within_half_step(vocab, k, t, temp, seed):
    k = min(k, vocab)
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(t, vocab, generator=g, dtype=torch.float64) * temp, -1)
    values = lp.topk(k, -1).values.float()
    top1, step, codes = encode_logprobs(values)
    decoded = decode_logprobs(top1, step, codes)
    assert torch.equal(decoded[:, 0], values[:, 0])
    err = (decoded - values).abs()
    # Half a step, plus float32 rounding of top1 - code * step.
    bound = step.float().unsqueeze(-1) / 2 + 4 * torch.finfo(torch.float32).eps * values.abs().amax(-1, keepdim=True)
    assert (err <= bound).all()
    assert (step.float() * 255 >= (values[:, 0] - values[:, -1])).all()
