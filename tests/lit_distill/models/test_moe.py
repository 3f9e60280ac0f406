"""Sparse upcycling: equivalence at init, routing, capacity dropping, the auxiliary loss."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lit_distill.errors import ConfigError
from lit_distill.models.moe import MoEFeedForward, decoder_layers, moe_aux_loss, moe_layers, upcycle


def tiny_llama(layers: int = 4, hidden: int = 16, seed: int = 0) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model("llama", vocab_size=50, hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                                  max_position_embeddings=32)
    return AutoModelForCausalLM.from_config(config).double().eval()


def reference_moe(layer: MoEFeedForward, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token float64 reference: top-k, renormalised gates, slot-major capacity, aux loss.

    Follows the layer's options: ``min_capacity``, gates renormalised over the kept slots or over
    all k, aux loss over first choices (DeepSpeed) or over all slots.
    """
    tokens = x.reshape(-1, x.shape[-1]).double()
    num_tokens, num_experts, k = tokens.shape[0], layer.num_experts, layer.top_k
    capacity = num_tokens if layer.capacity_factor is None else \
        max(math.ceil(layer.capacity_factor * num_tokens * k / num_experts), layer.min_capacity)
    probs = torch.softmax(tokens @ layer.router.weight.double().t(), dim=-1)
    choices = [torch.argsort(probs[t], descending=True)[:k].tolist() for t in range(num_tokens)]
    load = [0] * num_experts
    kept = [[False] * k for _ in range(num_tokens)]
    for slot in range(k):
        for t in range(num_tokens):
            e = choices[t][slot]
            if load[e] < capacity:
                load[e] += 1
                kept[t][slot] = True
    out = torch.zeros_like(tokens)
    for t in range(num_tokens):
        if layer.renormalize_after_drop:
            total = sum(probs[t, e] for slot, e in enumerate(choices[t]) if kept[t][slot])
        else:
            total = sum(probs[t, e] for e in choices[t])
        for slot, e in enumerate(choices[t]):
            if kept[t][slot]:
                out[t] += probs[t, e] / total * layer.experts[e].double()(tokens[t : t + 1])[0]
    counted = [c[:1] for c in choices] if layer.aux_loss_kind == "top1" else choices
    frac = torch.tensor([sum(c.count(e) for c in counted) for e in range(num_experts)], dtype=torch.float64)
    aux = num_experts * (frac / sum(len(c) for c in counted) * probs.mean(0)).sum()
    return out.reshape(x.shape), aux


def distinct_moe(num_experts=4, top_k=2, capacity_factor=1.5, hidden=8, seed=0, **options) -> MoEFeedForward:
    torch.manual_seed(seed)
    experts = [nn.Sequential(nn.Linear(hidden, 16), nn.GELU(), nn.Linear(16, hidden)) for _ in range(num_experts)]
    layer = MoEFeedForward(experts, hidden, top_k, capacity_factor, router_std=1.0, **options)
    return layer.double()


def test_upcycled_model_equals_dense_at_init_when_nothing_is_dropped():
    dense = tiny_llama()
    ids = torch.randint(0, 50, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
        moe = upcycle(dense, every=2, num_experts=4, top_k=2, capacity_factor=2.0)  # 2.0 = E/k: capacity T
        got = moe(input_ids=ids).logits
    layers = decoder_layers(moe)
    assert [isinstance(layer.mlp, MoEFeedForward) for layer in layers] == [True, False, True, False]
    assert all(float(m.dropped_fraction) == 0.0 for m in moe_layers(moe))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_upcycled_model_default_capacity_matches_dense_only_where_nothing_dropped():
    dense = tiny_llama(layers=2)
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = dense(input_ids=ids).logits
        moe = upcycle(dense, every=1, num_experts=4, top_k=2, capacity_factor=0.5)
        got = moe(input_ids=ids).logits
    # capacity 0.5 * 64 * 2 / 4 = 16 of 128 slots per expert: tokens are dropped, the output changes
    assert all(float(m.dropped_fraction) > 0 for m in moe_layers(moe))
    assert (got - expected).abs().max() > 1e-6


OPTIONS = [
    {},  # DeepSpeed's defaults: top-1 aux, gates renormalised after drops, min_capacity 4
    {"aux_loss": "all_slots", "renormalize_after_drop": False, "min_capacity": 0},  # the earlier behaviour
    {"min_capacity": 1},
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("capacity_factor", [None, 1.5, 0.5, 0.25])
@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_layer_matches_token_by_token_reference(capacity_factor, top_k, options):
    layer = distinct_moe(top_k=top_k, capacity_factor=capacity_factor, **options)
    x = torch.randn(2, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected, aux = reference_moe(layer, x)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.aux_loss, aux, rtol=1e-12, atol=0)


def test_capacity_drops_overflow_tokens_first_choice_first():
    hidden, num_tokens = 4, 10
    experts = [nn.Linear(hidden, hidden) for _ in range(4)]
    layer = MoEFeedForward(experts, hidden, top_k=2, capacity_factor=1.0).double()
    with torch.no_grad():  # every token prefers expert 0, then expert 1
        layer.router.weight.zero_()
        layer.router.weight[0, 0], layer.router.weight[1, 0] = 3.0, 2.0
    x = torch.zeros(num_tokens, hidden, dtype=torch.float64)
    x[:, 0] = 1.0
    x[:, 1:] = torch.randn(num_tokens, hidden - 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    probs, chosen, gates, kept = layer.route(x)
    capacity = layer.capacity(num_tokens)  # ceil(1.0 * 10 * 2 / 4) = 5
    assert capacity == 5
    assert (chosen[:, 0] == 0).all() and (chosen[:, 1] == 1).all()
    assert kept[:capacity].all() and not kept[capacity:].any()
    out = layer(x)
    assert (out[capacity:] == 0).all()  # every slot of these tokens overflowed: zero FFN output
    manual = gates[:capacity, :1] * experts[0](x[:capacity]) + gates[:capacity, 1:] * experts[1](x[:capacity])
    torch.testing.assert_close(out[:capacity], manual, rtol=0, atol=1e-12)
    assert float(layer.dropped_fraction) == pytest.approx(0.5)


@settings(max_examples=25, deadline=None)
@given(tokens=st.integers(1, 12), experts=st.integers(1, 6), data=st.data())
def test_gates_are_renormalised_top_k(tokens, experts, data):
    top_k = data.draw(st.integers(1, experts))
    layer = distinct_moe(num_experts=experts, top_k=top_k, capacity_factor=None, seed=tokens)
    x = torch.randn(tokens, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(experts))
    probs, chosen, gates, kept = layer.route(x)
    torch.testing.assert_close(gates.sum(-1), torch.ones(tokens, dtype=gates.dtype))
    assert kept.all()
    best = probs.topk(top_k, dim=-1).values
    torch.testing.assert_close(probs.gather(1, chosen), best)
    layer(x)
    assert 0.0 <= float(layer.aux_loss) <= experts + 1e-6  # E * sum_e f_e P_e, both fractions


def test_aux_loss_is_one_when_balanced_and_reaches_the_router():
    layer = distinct_moe(num_experts=2, top_k=1, capacity_factor=None)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0, 0], layer.router.weight[1, 0] = 1.0, -1.0
    x = torch.zeros(4, 8, dtype=torch.float64)
    x[:, 0] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # half the tokens to each expert, mirrored probs
    layer(x)
    assert float(layer.aux_loss) == pytest.approx(1.0, abs=1e-6)
    layer.aux_loss.backward()
    assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_model_aux_loss_is_the_mean_over_moe_layers_and_none_for_dense():
    dense = tiny_llama(layers=4)
    assert moe_aux_loss(dense) is None
    moe = upcycle(dense, every=2)
    moe(input_ids=torch.randint(0, 50, (2, 5)))
    values = [m.aux_loss for m in moe_layers(moe)]
    assert len(values) == 2
    torch.testing.assert_close(moe_aux_loss(moe), (values[0] + values[1]) / 2)


def test_upcycle_rejects_bad_settings():
    with pytest.raises(ConfigError, match="top_k"):
        upcycle(tiny_llama(layers=2), num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="every"):
        upcycle(tiny_llama(layers=2), every=0)
    with pytest.raises(ConfigError, match="no decoder layers"):
        upcycle(nn.Sequential(nn.Linear(2, 2)))
    model = upcycle(tiny_llama(layers=2))
    with pytest.raises(ConfigError, match="already"):
        upcycle(model)


def test_renormalised_gates_sum_to_one_over_kept_slots_and_min_capacity_binds():
    layer = distinct_moe(top_k=2, capacity_factor=0.25, min_capacity=3)
    tokens = torch.randn(18, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, experts, gates, kept = layer.route(tokens)
    assert layer.capacity(18) == 3  # ceil(0.25 * 18 * 2 / 4) = 3; min_capacity 3
    assert layer.capacity(4) == 3  # ceil(0.5) = 1 < min_capacity
    some = kept.any(-1)
    torch.testing.assert_close((gates * kept)[some].sum(-1), torch.ones(int(some.sum()), dtype=torch.float64))
    assert not kept.all()  # drops happened


def test_router_jitter_only_in_training():
    layer = distinct_moe(top_k=2, capacity_factor=None, router_jitter=0.5)
    x = torch.randn(3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    plain = distinct_moe(top_k=2, capacity_factor=None)
    layer.eval(), plain.eval()
    torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=0)  # eval: no noise
    layer.train()
    torch.manual_seed(0)
    first = layer.route(x.reshape(-1, 8))[0]
    assert not torch.allclose(first, plain.route(x.reshape(-1, 8))[0])
    with pytest.raises(ConfigError, match="moe.router_jitter"):
        distinct_moe(router_jitter=1.5)
    with pytest.raises(ConfigError, match="moe.aux_loss"):
        distinct_moe(aux_loss="all")


def test_router_jitter_matches_direct_computation():
    layer = distinct_moe(top_k=2, capacity_factor=None, router_jitter=0.3).train()
    tokens = torch.randn(10, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    probs = layer.route(tokens)[0]
    torch.manual_seed(1)
    noise = torch.empty_like(tokens).uniform_(0.7, 1.3)
    expected = torch.softmax((tokens * noise) @ layer.router.weight.t(), dim=-1)
    torch.testing.assert_close(probs, expected)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_router_rsample_matches_direct_computation(top_k):
    layer = distinct_moe(top_k=top_k, capacity_factor=None, router_rsample=True).train()
    tokens = torch.randn(12, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(2)
    probs, experts, gates, kept = layer.route(tokens)
    torch.manual_seed(2)
    logits = tokens @ layer.router.weight.t()
    noisy = logits - torch.log(-torch.log(torch.rand_like(logits)))
    for t in range(12):
        if top_k == 1:
            want = [int(noisy[t].argmax())]
        else:
            first = int(logits[t].argmax())
            rest = [e for e in torch.argsort(noisy[t], descending=True).tolist() if e != first][: top_k - 1]
            want = [first] + rest
        assert experts[t].tolist() == want
        chosen = probs[t, want]
        torch.testing.assert_close(gates[t], chosen / chosen.sum())
    assert kept.all()
    layer.eval()  # no noise at evaluation: plain top-k
    torch.testing.assert_close(layer.route(tokens)[1], probs.topk(top_k, dim=-1).indices, rtol=0, atol=0)
