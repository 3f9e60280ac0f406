"""Fused hidden-states × LM-head divergences: values and gradients vs materialised logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import forward_kl, reverse_kl
from lit_distill.losses.divergences import generalized_jsd, skew_kl
from lit_distill.losses.fused import (
    fused_cross_entropy,
    fused_forward_kl,
    fused_generalized_jsd,
    fused_reverse_kl,
    fused_skew_kl,
)
from lit_distill.losses.fused_terms import FusedForwardKL
from lit_distill.losses.terms import cross_entropy
from lit_distill.models import HFCausalLM

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(n, v, ds, dt, dtype=torch.float32, seed=0, bias=True):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    hs, ws = r(n, ds).requires_grad_(), r(v, ds).requires_grad_()
    bs = r(v).requires_grad_() if bias else None
    ht, wt, bt = r(n, dt), r(v, dt), (r(v) if bias else None)
    return hs, ws, bs, ht, wt, bt


def _direct_forward_kl64(hs, ws, bs, ht, wt, bt, mask, temperature):
    """KL(p ‖ q) written out in float64: Σ_v p (log p − log q), token mean over mask, times T²."""
    zs = hs.double() @ ws.double().T + (0 if bs is None else bs.double())
    zt = ht.double() @ wt.double().T + (0 if bt is None else bt.double())
    log_q = zs / temperature - torch.logsumexp(zs / temperature, -1, keepdim=True)
    log_p = zt / temperature - torch.logsumexp(zt / temperature, -1, keepdim=True)
    per_row = (log_p.exp() * (log_p - log_q)).sum(-1)
    m = torch.ones(hs.shape[0], dtype=torch.bool) if mask is None else mask
    return (per_row * m).sum() / m.sum().clamp_min(1) * temperature**2


def _grads(loss, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


def test_equals_forward_kl_on_materialised_logits_and_float64_formula():
    hs, ws, bs, ht, wt, bt = _inputs(45, 70, 8, 12)
    mask = torch.arange(45) % 3 != 0
    fused = fused_forward_kl(hs, ws, ht, wt, mask, 2.0, chunk_size=7, student_bias=bs, teacher_bias=bt)
    naive = forward_kl(hs @ ws.T + bs, ht @ wt.T + bt, mask, 2.0)
    direct = _direct_forward_kl64(hs, ws, bs, ht, wt, bt, mask, 2.0)
    torch.testing.assert_close(fused, naive, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.double(), direct, rtol=1e-5, atol=1e-6)
    for a, b, c in zip(_grads(fused, (hs, ws, bs)), _grads(naive, (hs, ws, bs)),
                       _grads(direct, (hs, ws, bs)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(a.double(), c.double(), rtol=1e-4, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 20), v=st.integers(2, 40), ds=st.integers(1, 6), dt=st.integers(1, 6),
       chunk=st.integers(1, 25), temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       mask_kind=st.sampled_from(["none", "random", "empty"]), bias=st.booleans(),
       seed=st.integers(0, 1000), reverse=st.booleans())
def test_property_matches_dense_for_shapes_masks_temperatures_chunks(n, v, ds, dt, chunk, temperature,
                                                                     mask_kind, bias, seed, reverse):
    hs, ws, bs, ht, wt, bt = _inputs(n, v, ds, dt, seed=seed, bias=bias)
    gen = torch.Generator().manual_seed(seed + 1)
    mask = {"none": None, "random": torch.rand(n, generator=gen) > 0.4,
            "empty": torch.zeros(n, dtype=torch.bool)}[mask_kind]
    fused_fn, dense_fn = (fused_reverse_kl, reverse_kl) if reverse else (fused_forward_kl, forward_kl)
    fused = fused_fn(hs, ws, ht, wt, mask, temperature, chunk_size=chunk, student_bias=bs, teacher_bias=bt)
    dense = dense_fn(hs @ ws.T + (0 if bs is None else bs), ht @ wt.T + (0 if bt is None else bt),
                     mask, temperature)
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(fused, (hs, ws, bs)), _grads(dense, (hs, ws, bs)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if mask_kind == "empty":
        assert fused.item() == 0.0


def test_gradcheck_float64():
    hs, ws, bs, ht, wt, bt = _inputs(4, 5, 3, 4, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])

    def fn(hs, ws, bs):
        return fused_forward_kl(hs, ws, ht, wt, mask, 1.5, chunk_size=3, student_bias=bs, teacher_bias=bt)

    assert torch.autograd.gradcheck(fn, (hs, ws, bs))
    # fast mode (random projections of the Jacobian) for the autograd-per-chunk path
    assert torch.autograd.gradcheck(
        lambda h, w: fused_reverse_kl(h, w, ht, wt, None, 1.0, chunk_size=2), (hs, ws), fast_mode=True)


def test_other_divergences_match_dense():
    hs, ws, bs, ht, wt, bt = _inputs(20, 30, 5, 7)

    def zs():
        return hs @ ws.T + bs

    zt = ht @ wt.T + bt
    pairs = [(fused_generalized_jsd(hs, ws, ht, wt, None, 2.0, beta=0.3, chunk_size=6, student_bias=bs,
                                    teacher_bias=bt), generalized_jsd(zs(), zt, None, 2.0, beta=0.3)),
             (fused_skew_kl(hs, ws, ht, wt, None, 1.0, alpha=0.1, chunk_size=3, student_bias=bs,
                            teacher_bias=bt), skew_kl(zs(), zt, None, 1.0, alpha=0.1))]
    for fused, dense in pairs:
        torch.testing.assert_close(fused, dense, rtol=1e-6, atol=1e-6)
        for a, b in zip(_grads(fused, (hs, ws)), _grads(dense, (hs, ws)), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_masked_rows_with_nan_reach_neither_value_nor_gradients():
    hs, ws, bs, ht, wt, bt = _inputs(8, 10, 4, 4)
    mask = torch.tensor([True] * 6 + [False] * 2)
    with torch.no_grad():
        hs_nan = hs.clone()
        hs_nan[6:] = float("nan")
    hs_nan.requires_grad_()
    ht_nan = ht.clone()
    ht_nan[7] = float("inf")
    fused = fused_forward_kl(hs_nan, ws, ht_nan, wt, mask, chunk_size=3)
    clean = fused_forward_kl(hs, ws, ht, wt, mask, chunk_size=3)
    torch.testing.assert_close(fused, clean)
    g_nan, g_w = torch.autograd.grad(fused, (hs_nan, ws))
    assert torch.isfinite(g_w).all() and (g_nan[6:] == 0).all() and torch.isfinite(g_nan).all()


def test_bfloat16_inputs_computed_in_float32_with_grads_in_input_dtype():
    hs, ws, _, ht, wt, _ = _inputs(10, 16, 4, 4, bias=False)
    hs_b, ws_b = (x.detach().bfloat16().requires_grad_() for x in (hs, ws))
    fused = fused_forward_kl(hs_b, ws_b, ht.bfloat16(), wt.bfloat16(), chunk_size=4)
    dense = forward_kl(hs_b.float() @ ws_b.float().T, ht.bfloat16().float() @ wt.bfloat16().float().T)
    assert fused.dtype == torch.float32
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-6)
    g_h, g_w = torch.autograd.grad(fused, (hs_b, ws_b))
    assert g_h.dtype == g_w.dtype == torch.bfloat16


def test_no_grad_path_and_retained_graph_reuse():
    hs, ws, _, ht, wt, _ = _inputs(5, 6, 3, 3, bias=False)
    with torch.no_grad():
        value = fused_forward_kl(hs, ws, ht, wt, chunk_size=2)
    torch.testing.assert_close(value, forward_kl(hs @ ws.T, ht @ wt.T).detach())
    loss = fused_forward_kl(hs, ws, ht, wt, chunk_size=2)
    first = torch.autograd.grad(loss * 3.0, (hs, ws), retain_graph=True)
    again = torch.autograd.grad(loss * 3.0, (hs, ws), retain_graph=True)
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    halved = torch.autograd.grad(loss * 1.5, (hs, ws))
    for a, b in zip(first, halved, strict=True):
        torch.testing.assert_close(b, a / 2)


def test_bad_inputs_raise_clear_errors():
    hs, ws, _, ht, wt, _ = _inputs(4, 6, 3, 3, bias=False)
    with pytest.raises(ValueError, match="vocabularies differ"):
        fused_forward_kl(hs, ws, ht, wt[:5])
    with pytest.raises(ValueError, match="mask must be a bool"):
        fused_forward_kl(hs, ws, ht, wt, torch.ones(4))
    with pytest.raises(ValueError, match="chunk_size"):
        fused_forward_kl(hs, ws, ht, wt, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        fused_forward_kl(hs, ws, ht, wt, temperature=0.0)
    with pytest.raises(ConfigError, match="FusedForwardKL.chunk_size"):
        FusedForwardKL(chunk_size=-1)


def test_term_reads_features_and_leaves_out_a_missing_bias():
    hs, ws, bs, ht, wt, bt = _inputs(2 * 5, 12, 4, 6)
    student = ModelOutput(features={"last_hidden_state": hs.reshape(2, 5, 4), "lm_head.weight": ws,
                                    "lm_head.bias": bs})
    teacher = ModelOutput(features={"last_hidden_state": ht.reshape(2, 5, 6), "lm_head.weight": wt})
    mask = torch.rand(2, 5) > 0.3
    term = FusedForwardKL(temperature=2.0, chunk_size=3)
    kwargs = term.gather(student, teacher, {"loss_mask": mask})
    assert "teacher_bias" not in kwargs and kwargs["student_bias"] is bs
    value = term(**kwargs)
    torch.testing.assert_close(value, forward_kl(hs @ ws.T + bs, ht @ wt.T, mask.reshape(-1), 2.0))
    assert term.reads_teacher


def test_fused_cross_entropy_matches_cross_entropy_and_float64_formula():
    hs, ws, bs, _, _, _ = _inputs(24, 40, 6, 1)
    labels = torch.randint(0, 40, (24,), generator=torch.Generator().manual_seed(3))
    labels[::5] = -100
    fused = fused_cross_entropy(hs.reshape(4, 6, 6), ws, labels.reshape(4, 6), bs, chunk_size=5)
    dense = cross_entropy(hs @ ws.T + bs, labels)
    z = hs.double() @ ws.double().T + bs.double()
    keep = labels != -100
    direct = (torch.logsumexp(z[keep], -1) - z[keep].gather(1, labels[keep, None]).squeeze(1)).mean()
    torch.testing.assert_close(fused, dense, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.double(), direct, rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(fused, (hs, ws, bs)), _grads(dense, (hs, ws, bs)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    none_valid = fused_cross_entropy(hs, ws, torch.full((24,), -100), chunk_size=5)
    assert none_valid.item() == 0.0


@pytest.mark.parametrize("bias", [False, True])
def test_hf_adapter_without_logits_reproduces_its_logits(tmp_path, bias):
    torch.manual_seed(0)
    fields = {"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    HFCausalLM(config=dict(fields)).module.save_pretrained(tmp_path)
    full, lean = HFCausalLM(path=str(tmp_path)), HFCausalLM(path=str(tmp_path), compute_logits=False)
    if bias:  # Llama's head has no bias: give both the same biased head to cover that path
        head = torch.nn.Linear(16, 50, bias=True)
        full.module.set_output_embeddings(head)
        lean.module.set_output_embeddings(head)
    ids = torch.randint(0, 50, (2, 7))
    out = lean(input_ids=ids)
    assert out.logits is None
    feats = out.features
    rebuilt = feats["last_hidden_state"] @ feats["lm_head.weight"].T + feats.get("lm_head.bias", 0)
    torch.testing.assert_close(rebuilt, full(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert ("lm_head.bias" in feats) == bias
    assert feats["lm_head.weight"] is lean.module.get_output_embeddings().weight


def test_hf_adapter_refuses_logit_transforms(tmp_path):
    fields = {"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
              "logits_scaling": 2.0}
    with pytest.raises(ConfigError, match="compute_logits"):
        HFCausalLM(config=fields, compute_logits=False)


def _fit_args(config, tmp_path, text_dir, tokenizer_dir, teacher_dir):
    return ["fit", "--config", str(config), f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={text_dir / 'train.txt'}",
            f"--data.init_args.val_path={text_dir / 'val.txt'}",
            "--data.init_args.max_length=32", "--data.init_args.batch_size=4",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]",
            "--trainer.logger=false", "--checkpoint.save_top_k=0", "--checkpoint.save_last=false",
            f"--trainer.default_root_dir={tmp_path}"]


@pytest.mark.slow
def test_fused_config_trains_like_the_dense_quickstart(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    """configs/text/kd/quickstart-student_from_quickstart-teacher_fused.yaml: 2 steps give the dense config's losses and weights."""
    from lit_distill.cli import run_cli

    # Both teachers in float32: the configs' dtype "auto" picks bfloat16 on CPUs with bf16
    # instructions, where the dense head rounds the teacher's logits to bf16 and the fused one
    # multiplies the bf16 hidden states in float32; this test compares the loss paths.
    float32 = "--model.init_args.teacher.init_args.dtype=float32"
    fused = run_cli([*_fit_args(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher_fused.yaml", tmp_path / "f",
                                text_dir, tokenizer_dir, teacher_dir), float32])
    dense = run_cli([*_fit_args(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml", tmp_path / "d",
                                text_dir, tokenizer_dir, teacher_dir), float32])
    assert fused.model.student.output_size == dense.model.student.output_size
    f_metrics, d_metrics = fused.trainer.callback_metrics, dense.trainer.callback_metrics
    for key in ("train/kd", "train/ce", "val/kd", "val/ce", "val/loss"):
        torch.testing.assert_close(f_metrics[key], d_metrics[key], rtol=1e-4, atol=1e-5)
    assert "val/student_ce" in d_metrics and "val/student_ce" not in f_metrics
    f_state, d_state = fused.model.student.state_dict(), dense.model.student.state_dict()
    for name, value in d_state.items():
        torch.testing.assert_close(f_state[name], value, rtol=1e-4, atol=1e-5)
