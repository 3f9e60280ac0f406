"""Fused sparse forward KL (hidden states × head against a cached top-k teacher): equals the
sparse KL on materialised logits and a float64 direct formula, in value and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import FusedSparseForwardKL, fused_sparse_forward_kl, sparse_forward_kl

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[3]


def _case(n, v, d, k, dtype=torch.float64, seed=0, temperature=1.0):
    """Student hidden/head/bias and a teacher's top-k (ids, log-probs, tail) from random logits."""
    gen = torch.Generator().manual_seed(seed)
    hs = torch.randn(n, d, generator=gen, dtype=dtype).requires_grad_()
    ws = torch.randn(v, d, generator=gen, dtype=dtype).requires_grad_()
    bs = torch.randn(v, generator=gen, dtype=dtype).requires_grad_()
    log_p = torch.log_softmax(torch.randn(n, v, generator=gen, dtype=torch.float64) * 2 / temperature, -1)
    values, ids = log_p.topk(k, dim=-1)
    tail = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1).exp()
    return hs, ws, bs, ids, values.to(dtype), tail.to(dtype)


def _direct64(z, ids, log_p, tail, mask, temperature):
    """Per position in float64: Σ_top p (log p − log q) + p_tail (log p_tail − log(1 − Σ_top q))."""
    q = torch.softmax(z.double() / temperature, -1)
    terms = []
    for n in range(z.shape[0]):
        if mask is not None and not mask[n]:
            continue
        p_top, q_top = log_p[n].double().exp(), q[n, ids[n]]
        value = (p_top * (log_p[n].double() - q_top.log())).sum()
        if tail[n] > 0:
            value = value + tail[n].double() * (tail[n].double().log() - (1 - q_top.sum()).log())
        terms.append(value)
    return torch.stack(terms).mean() * temperature**2


def test_equals_the_direct_formula_and_the_sparse_kl_of_materialised_logits():
    hs, ws, bs, ids, log_p, tail = _case(11, 23, 5, 4, temperature=2.0)
    mask = torch.arange(11) % 3 != 1
    fused = fused_sparse_forward_kl(hs, ws, ids, log_p, tail, mask, temperature=2.0, chunk_size=4, student_bias=bs)
    z = hs @ ws.T + bs
    direct = _direct64(z, ids, log_p, tail, mask, 2.0)
    dense = sparse_forward_kl(z, ids, log_p, tail, mask, temperature=2.0)
    torch.testing.assert_close(fused, direct, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fused, dense, rtol=1e-12, atol=1e-12)
    for got, want in zip(torch.autograd.grad(fused, (hs, ws, bs)), torch.autograd.grad(direct, (hs, ws, bs)),
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 16), v=st.integers(2, 30), d=st.integers(1, 6), k_frac=st.floats(0.05, 1.0),
       chunk=st.integers(1, 7), temperature=st.sampled_from([0.5, 1.0, 2.0]), seed=st.integers(0, 1000),
       masked=st.booleans(), bias=st.booleans())
def test_property_matches_sparse_kl_on_logits(n, v, d, k_frac, chunk, temperature, seed, masked, bias):
    k = max(1, round(k_frac * v))
    hs, ws, bs, ids, log_p, tail = _case(n, v, d, k, torch.float32, seed, temperature)
    mask = (torch.arange(n) % 2 == 0) if masked else None
    bs = bs if bias else None
    fused = fused_sparse_forward_kl(hs, ws, ids, log_p, tail, mask, temperature, chunk, bs)
    z = hs @ ws.T + (0 if bs is None else bs)
    dense = sparse_forward_kl(z, ids, log_p, tail, mask, temperature)
    torch.testing.assert_close(fused, dense, rtol=1e-5, atol=1e-6)
    params = [x for x in (hs, ws, bs) if x is not None]
    for got, want in zip(torch.autograd.grad(fused, params), torch.autograd.grad(dense, params), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_masked_rows_with_nan_reach_neither_value_nor_gradients():
    hs, ws, bs, ids, log_p, tail = _case(6, 12, 4, 3)
    mask = torch.tensor([True, False, True, True, False, True])
    with torch.no_grad():
        poisoned = hs.clone()
        poisoned[~mask] = float("nan")
    poisoned.requires_grad_()
    value = fused_sparse_forward_kl(poisoned, ws, ids, log_p, tail, mask, chunk_size=4, student_bias=bs)
    clean = fused_sparse_forward_kl(hs, ws, ids, log_p, tail, mask, chunk_size=4, student_bias=bs)
    torch.testing.assert_close(value, clean)
    grad_h, grad_w = torch.autograd.grad(value, (poisoned, ws))
    assert torch.isfinite(grad_w).all() and torch.isfinite(grad_h).all() and not grad_h[~mask].any()


def test_bad_inputs_are_clear_errors():
    hs, ws, bs, ids, log_p, tail = _case(4, 10, 3, 3)
    with pytest.raises(ValueError, match="leading shape"):
        fused_sparse_forward_kl(hs, ws, ids[:3], log_p[:3], tail[:3])
    with pytest.raises(ValueError, match="exceeds the student's vocabulary"):
        fused_sparse_forward_kl(hs, ws[:2], ids, log_p, tail)
    with pytest.raises(ValueError, match="chunk_size"):
        fused_sparse_forward_kl(hs, ws, ids, log_p, tail, chunk_size=0)
    with pytest.raises(ConfigError, match="FusedSparseForwardKL.chunk_size"):
        FusedSparseForwardKL(chunk_size=0)
    with pytest.raises(ConfigError, match="FusedSparseForwardKL.temperature"):
        FusedSparseForwardKL(temperature=0.0)


def test_term_reads_the_batch_and_features_and_leaves_out_a_missing_bias():
    hs, ws, _, ids, log_p, tail = _case(2 * 5, 9, 3, 4)
    mask = torch.ones(2, 5, dtype=torch.bool)
    term = FusedSparseForwardKL(chunk_size=3)
    student = ModelOutput(features={"last_hidden_state": hs.view(2, 5, 3), "lm_head.weight": ws})
    batch = {"teacher_topk_ids": ids.view(2, 5, 4), "teacher_topk_logprobs": log_p.view(2, 5, 4),
             "teacher_tail_mass": tail.view(2, 5), "loss_mask": mask}
    kwargs = term.gather(student, None, batch)
    assert "student_bias" not in kwargs and not term.reads_teacher  # the cache replaces the teacher
    torch.testing.assert_close(term(**kwargs), sparse_forward_kl(hs @ ws.T, ids, log_p, tail))
    batch["teacher_temperature"] = 1.0  # what the cached datamodule adds: the cache's temperature
    torch.testing.assert_close(term(**term.gather(student, None, batch)), sparse_forward_kl(hs @ ws.T, ids, log_p, tail))
    batch["teacher_temperature"] = 0.5
    with pytest.raises(ConfigError, match=r"FusedSparseForwardKL.temperature: 1, but the cache was written at 0.5"):
        term(**term.gather(student, None, batch))


def _cache_run(command, config, cache, tmp_path, text_dir, tokenizer_dir, *extra):
    from lit_distill.cli import run_cli

    data = "data.init_args.data.init_args"
    return run_cli([command, "--config", str(REPO / "configs/text/kd" / config), f"--data.init_args.cache_dir={cache}",
                    f"--{data}.tokenizer={tokenizer_dir}", f"--{data}.train_path={text_dir / 'train.txt'}",
                    f"--{data}.val_path={text_dir / 'val.txt'}", f"--{data}.max_length=32", f"--{data}.batch_size=4",
                    "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--trainer.logger=false",
                    "--checkpoint.save_top_k=0", "--checkpoint.save_last=false",
                    f"--trainer.default_root_dir={tmp_path}", *extra])


@pytest.mark.slow
def test_fused_cache_config_validates_like_the_cache_config_and_trains(tmp_path, text_dir, tokenizer_dir,
                                                                        teacher_dir):
    from lit_distill.cache_teacher import cache_teacher

    cache = tmp_path / "cache"
    data = "data.init_args"
    assert cache_teacher(["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                          "--out", str(cache), "--top-k", "8", "--no-progress", "--logprob-dtype", "compact",
                          f"--{data}.tokenizer={tokenizer_dir}", f"--{data}.train_path={text_dir / 'train.txt'}",
                          f"--{data}.val_path={text_dir / 'val.txt'}", f"--{data}.max_length=32",
                          f"--{data}.batch_size=4", f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
                          f"--trainer.default_root_dir={tmp_path / 'runs'}"]) == {"train": True, "val": True}
    args = (cache, tmp_path, text_dir, tokenizer_dir)
    plain = _cache_run("validate", "quickstart-student_from_quickstart-teacher_cache.yaml", *args)
    fused = _cache_run("validate", "quickstart-student_from_quickstart-teacher_cache_fused.yaml", *args)
    for key in ("val/kd", "val/ce"):  # the same initial student (seed 0): the same losses
        torch.testing.assert_close(fused.trainer.callback_metrics[key], plain.trainer.callback_metrics[key],
                                   rtol=1e-5, atol=1e-6)
    assert fused.model.teacher is None and fused.model.student.compute_logits is False
    trained = _cache_run("fit", "quickstart-student_from_quickstart-teacher_cache_fused.yaml", *args,
                         "--trainer.max_steps=2", "--trainer.val_check_interval=2")
    assert trained.trainer.global_step == 2
