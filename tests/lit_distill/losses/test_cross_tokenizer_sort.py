"""ULD's CPU sort path: numpy's order over row blocks in torch's threads gives torch.sort's values and gradient."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def torch_threads():
    """Set torch's intra-op thread count for one test (the numpy sort splits its rows over them)."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grad", [True, False])
def test_numpy_sort_equals_torch_sort(dtype, grad, threads, torch_threads):
    """The CPU path's numpy order gives torch.sort's values and, through gather, its gradient,
    whether its rows sort in one thread or in uneven blocks over three."""
    from lit_distill.losses.cross_tokenizer import _sort_descending

    torch_threads(threads)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 257, generator=gen, dtype=dtype) * 4
    weights = torch.randn(3, 5, 257, generator=gen, dtype=dtype)
    ours_in = logits.clone().requires_grad_(grad)
    ref_in = logits.clone().requires_grad_(grad)
    ours = _sort_descending(torch.softmax(ours_in, -1))
    ref = torch.softmax(ref_in, -1).sort(dim=-1, descending=True).values
    assert ours.dtype == dtype and ours.shape == ref.shape and ours.requires_grad == grad
    assert torch.equal(ours, ref)
    if grad:
        (ours * weights).sum().backward()
        (ref * weights).sum().backward()
        assert torch.equal(ours_in.grad, ref_in.grad)


def test_numpy_sort_orders_ties_and_zeros_like_a_stable_descending_sort():
    """Equal probabilities (underflowed zeros, masked entries) keep their index order, so the
    float32 packed keys give a valid order, the values of torch.sort, and a gradient that sums
    like torch.sort's."""
    from lit_distill.losses.cross_tokenizer import _sort_descending

    probs = torch.tensor([[0.25, 0.0, 0.25, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]], requires_grad=True)
    ours = _sort_descending(probs)
    assert torch.equal(ours, probs.detach().sort(dim=-1, descending=True).values)
    ours.backward(torch.arange(5.0).expand(2, 5))
    assert torch.equal(probs.grad, torch.tensor([[1.0, 3.0, 2.0, 0.0, 4.0], [1.0, 2.0, 0.0, 3.0, 4.0]]))
