"""TAID: the interpolated cross-entropy, its schedule, and the callback that drives it."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.callbacks import TAIDSchedule
from lit_distill.losses import TAID, forward_kl, taid_cross_entropy
from lit_distill.models import HFCausalLM


def reference_taid(student, teacher, t, mask):
    """float64, straight from the definition: mean over valid rows of −Σ p_t log q."""
    s, z = student.double(), teacher.double()
    p_t = torch.softmax((1 - t) * s + t * z, dim=-1)
    log_q = torch.log_softmax(s, dim=-1)
    rows = -(p_t * log_q).sum(-1)
    return (rows * mask).sum() / mask.sum()


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7, 1.0])
def test_value_matches_float64_reference(t):
    g = torch.Generator().manual_seed(1)
    s, z = torch.randn(3, 5, 11, generator=g), torch.randn(3, 5, 11, generator=g)
    mask = torch.rand(3, 5, generator=g) > 0.3
    expected = reference_taid(s, z, t, mask)
    torch.testing.assert_close(taid_cross_entropy(s, z, t, mask).double(), expected, rtol=1e-5, atol=1e-6)


def test_at_t_one_it_is_forward_kl_plus_teacher_entropy():
    g = torch.Generator().manual_seed(2)
    s, z = torch.randn(4, 9, generator=g), torch.randn(4, 9, generator=g)
    p = torch.softmax(z, -1)
    entropy = -(p * p.log()).sum(-1).mean()
    torch.testing.assert_close(taid_cross_entropy(s, z, 1.0), forward_kl(s, z) + entropy)


def test_gradient_treats_the_student_copy_in_the_target_as_constant():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 7, generator=g, requires_grad=True)
    z = torch.randn(6, 7, generator=g)
    t = 0.4
    taid_cross_entropy(s, z, t).backward()
    p_t = torch.softmax((1 - t) * s.detach() + t * z, -1)
    expected = (torch.softmax(s.detach(), -1) - p_t) / 6  # d/dz_s of KL(p_t || q), mean over 6 rows
    torch.testing.assert_close(s.grad, expected)
    s.grad = None
    taid_cross_entropy(s, z, 0.0).backward()  # target = the student itself: nothing to learn
    torch.testing.assert_close(s.grad, torch.zeros_like(s.grad), atol=1e-7, rtol=0)


def test_chunked_equals_one_shot_and_inf_entries_are_finite():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 6, 10, generator=g)
    z = torch.randn(2, 6, 10, generator=g)
    s[..., -2:] = float("-inf")
    z[..., -2:] = float("-inf")
    mask = torch.rand(2, 6, generator=g) > 0.2
    a = s.clone().requires_grad_()
    b = s.clone().requires_grad_()
    one = taid_cross_entropy(a, z, 1.0, mask)
    chunked = taid_cross_entropy(b, z, 1.0, mask, chunk_size=5)
    one.backward()
    chunked.backward()
    assert torch.isfinite(one) and torch.isfinite(a.grad).all()
    torch.testing.assert_close(one, chunked)
    torch.testing.assert_close(a.grad, b.grad)


def python_schedule(losses, steps, total, t_start, t_end, alpha, beta):
    """The schedule written out with Python floats, one update per loss value."""
    t, m, prev, out = t_start, 0.0, math.inf, []
    for loss, step in zip(losses, steps, strict=True):
        if math.isinf(prev):
            prev = loss
            out.append(t)
            continue
        m = beta * m + (1 - beta) * (prev - loss) / (prev + 1e-15)
        t_lin = t_start + (t_end - t_start) * step / total
        t = min(t_end, max(t_lin, t + alpha * (1 / (1 + math.exp(-m))) * (1 - t)))
        prev = loss
        out.append(t)
    return out


def test_schedule_matches_the_formula_step_by_step():
    term = TAID(t_start=0.2, t_end=0.9, alpha=0.05, beta=0.9)
    losses = [3.0, 2.5, 2.6, 2.0, 1.0, 1.1, 0.9, 0.5]
    seen = []
    for step, loss in enumerate(losses, start=1):
        term.update(torch.tensor(loss), step, total_steps=20)
        seen.append(float(term.t))
    expected = python_schedule(losses, range(1, 9), 20, 0.2, 0.9, 0.05, 0.9)
    assert seen == pytest.approx(expected, rel=1e-6)
    assert seen[0] == pytest.approx(0.2)  # the first update only records the loss
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False))


def test_schedule_reaches_t_end_and_linear_mode():
    term = TAID(t_start=0.0, t_end=0.5, alpha=1.0)
    for step in range(1, 30):
        term.update(torch.tensor(1.0 / step), step, total_steps=10)
    assert float(term.t) == pytest.approx(0.5)
    linear = TAID(t_start=0.2, t_end=1.0, adaptive=False)
    linear.update(torch.tensor(1.0), 1, 4)
    linear.update(torch.tensor(0.5), 2, 4)
    assert float(linear.t) == pytest.approx(0.6)


def test_bad_range_fails_early():
    with pytest.raises(ConfigError, match="t_start"):
        TAID(t_start=0.8, t_end=0.5)


# ----------------------------------------------------------------- callback


def llama(hidden):
    return HFCausalLM(config={"model_type": "llama", "vocab_size": 40, "hidden_size": hidden,
                              "intermediate_size": 2 * hidden, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "num_key_value_heads": 1})


def batches(n):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 40, (2, 8), generator=g)
        labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
        out.append({"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                    "labels": labels, "loss_mask": labels != -100})
    return DataLoader(out, batch_size=None)


def taid_module():
    torch.manual_seed(0)
    return DistillationModule(student=llama(16), teacher=llama(24),
                              losses={"taid": TAID(t_start=0.2, alpha=0.2)},
                              optimizer=lambda p: torch.optim.SGD(p, lr=0.1))


class StopAfter(L.Callback):
    """Interrupt a run after ``steps`` optimizer steps (as a kill would), keeping max_steps."""

    def __init__(self, steps):
        self.steps = steps

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.steps:
            trainer.should_stop = True


def fit(module, steps, accumulate=1, ckpt_path=None, root=None, per_epoch=8, stop_after=None):
    extra = [StopAfter(stop_after)] if stop_after else []
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, accumulate_grad_batches=accumulate, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[TAIDSchedule(), *extra],
                        default_root_dir=root, enable_checkpointing=False, limit_val_batches=1)
    trainer.fit(module, batches(per_epoch), batches(1), ckpt_path=ckpt_path)
    return trainer


def test_callback_updates_once_per_optimizer_step_and_not_in_validation():
    module = taid_module()
    updates = []
    original = module.losses["taid"].update
    module.losses["taid"].update = lambda loss, step, total: (updates.append(step), original(loss, step, total))
    trainer = fit(module, steps=3, accumulate=2)
    # 6 micro-batches, 3 optimizer steps; each passes the steps finished before it, as TAID's
    # reference passes trainer.global_step from its training step
    assert updates == [0, 1, 2]
    t_after_fit = float(module.losses["taid"].t)
    assert t_after_fit > 0.2
    trainer.validate(module, batches(2))
    assert float(module.losses["taid"].t) == t_after_fit


def test_resume_reproduces_t_exactly(tmp_path):
    # Two steps per epoch, resumed at the epoch boundary (mid-epoch data resumption
    # is the data loader's business, not TAID's).
    straight = taid_module()
    fit(straight, steps=4, per_epoch=2)
    first = taid_module()
    trainer = fit(first, steps=4, root=tmp_path, per_epoch=2, stop_after=2)
    assert trainer.global_step == 2
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = taid_module()
    fit(resumed, steps=4, ckpt_path=str(tmp_path / "half.ckpt"), root=tmp_path, per_epoch=2)
    assert float(resumed.losses["taid"].t) > 0.2
    for name in ("t", "momentum", "prev_loss"):
        a, b = getattr(straight.losses["taid"], name), getattr(resumed.losses["taid"], name)
        assert torch.equal(a, b), name


def test_callback_names_a_missing_term():
    module = DistillationModule(student=llama(16), teacher=llama(24),
                                losses={"kd": TAID()})
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[TAIDSchedule("taid")])
    with pytest.raises(ConfigError, match="no TAID term named 'taid'"):
        trainer.fit(module, batches(1))


def test_vocab_mismatch_fails_early_unless_padded():
    wide = HFCausalLM(config={"model_type": "llama", "vocab_size": 48, "hidden_size": 16,
                              "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                              "num_key_value_heads": 1})
    with pytest.raises(ConfigError, match="cross-tokenizer"):
        DistillationModule(student=llama(16), teacher=wide, losses={"taid": TAID()})
    module = DistillationModule(student=llama(16), teacher=wide, losses={"taid": TAID(padded_vocab=True)})
    batch = next(iter(batches(1)))
    values = module.compute_losses(batch, *module(batch))[1]
    assert torch.isfinite(values["taid"])
