"""DM-Codec / LM-SPT distillation losses against direct float64 loops, plus properties."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.callbacks import ParameterSchedule
from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import (
    CodecFeatureDistillation,
    cosine_frame_loss,
    cosine_time_loss,
    indirect_semantic_loss,
    interpolate_align,
    positional_align,
)
from lit_distill.losses.speech_distill import frames_from_lengths


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_time(s, t, mask=None, eps=1e-8):
    """Direct loop of DM-Codec's d_axis loss, float64."""
    s, t = s.double().tolist(), t.double().tolist()
    b, n, d = len(s), min(len(s[0]), len(t[0])), len(s[0][0])
    total, samples = 0.0, 0
    for i in range(b):
        valid = [k for k in range(n) if mask is None or bool(mask[i][k])]
        if not valid:
            continue
        samples += 1
        acc = 0.0
        for j in range(d):
            dot = sum(s[i][k][j] * t[i][k][j] for k in valid)
            ns = math.sqrt(sum(s[i][k][j] ** 2 for k in valid))
            nt = math.sqrt(sum(t[i][k][j] ** 2 for k in valid))
            acc += -_log_sigmoid(dot / max(ns * nt, eps))
        total += acc / d
    return total / max(samples, 1)


def ref_frame(s, t, mask=None, lam=1.0, eps=1e-8):
    """Direct loop of DM-Codec's t_axis loss, float64."""
    s, t = s.double().tolist(), t.double().tolist()
    b, n, d = len(s), min(len(s[0]), len(t[0])), len(s[0][0])
    total, count = 0.0, 0
    for i in range(b):
        for k in range(n):
            if mask is not None and not bool(mask[i][k]):
                continue
            l1 = sum(abs(s[i][k][j] - t[i][k][j]) for j in range(d)) / d
            dot = sum(s[i][k][j] * t[i][k][j] for j in range(d))
            ns = math.sqrt(sum(x * x for x in s[i][k]))
            nt = math.sqrt(sum(x * x for x in t[i][k]))
            total += l1 - lam * _log_sigmoid(dot / max(ns * nt, eps))
            count += 1
    return total / max(count, 1)


def test_cosine_time_loss_matches_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 7, 5, generator=g), torch.randn(3, 9, 5, generator=g)
    assert cosine_time_loss(s, t).item() == pytest.approx(ref_time(s, t), rel=1e-5)
    mask = torch.rand(3, 7, generator=g) > 0.4
    mask[2] = False  # a sample with no valid frame is left out of the batch mean
    assert cosine_time_loss(s, t, mask).item() == pytest.approx(ref_time(s, t, mask.tolist()), rel=1e-5)


def test_cosine_frame_loss_matches_loop():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 8, 4, generator=g), torch.randn(2, 6, 4, generator=g)
    assert cosine_frame_loss(s, t, lambda_cos=0.7).item() == pytest.approx(ref_frame(s, t, lam=0.7), rel=1e-5)
    mask = torch.rand(2, 8, generator=g) > 0.5
    got = cosine_frame_loss(s, t, mask, lambda_cos=2.0).item()
    assert got == pytest.approx(ref_frame(s, t, mask.tolist(), lam=2.0), rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), ts=st.integers(1, 6), tt=st.integers(1, 6), d=st.integers(1, 5), seed=st.integers(0, 99))
def test_cosine_losses_properties(b, ts, tt, d, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, ts, d, generator=g), torch.randn(b, tt, d, generator=g)
    n = min(ts, tt)
    base_time, base_frame = cosine_time_loss(s, t), cosine_frame_loss(s, t)
    assert base_time.shape == () and base_frame.shape == ()
    # d_axis: a positive rescaling of each teacher dimension changes no cosine along time.
    scale = torch.rand(1, 1, d, generator=g) * 5 + 0.1
    assert torch.allclose(cosine_time_loss(s, t * scale), base_time, atol=1e-5)
    # Permuting the dimensions (both sides) leaves both losses unchanged; so does permuting frames.
    perm = torch.randperm(d, generator=g)
    assert torch.allclose(cosine_time_loss(s[..., perm], t[..., perm]), base_time, atol=1e-5)
    assert torch.allclose(cosine_frame_loss(s[..., perm], t[..., perm]), base_frame, atol=1e-5)
    fperm = torch.randperm(n, generator=g)
    assert torch.allclose(cosine_time_loss(s[:, :n][:, fperm], t[:, :n][:, fperm]), base_time, atol=1e-5)
    assert torch.allclose(cosine_frame_loss(s[:, :n][:, fperm], t[:, :n][:, fperm]), base_frame, atol=1e-5)
    # Masking away frames is the same as cutting them out (here: keep the first k frames).
    k = max(1, n // 2)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[:, :k] = True
    assert torch.allclose(cosine_time_loss(s, t, mask), cosine_time_loss(s[:, :k], t[:, :k]), atol=1e-5)
    assert torch.allclose(cosine_frame_loss(s, t, mask), cosine_frame_loss(s[:, :k], t[:, :k]), atol=1e-5)
    # Bounds: log σ(cos) with cos in [-1, 1].
    assert -math.log(1 / (1 + math.exp(-1))) - 1e-5 <= base_time.item() <= -math.log(1 / (1 + math.e)) + 1e-5


def test_cosine_frame_loss_scale_invariance_per_frame_of_cosine_part():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    s_only = cosine_frame_loss(s, t, lambda_cos=1.0) - (s - t).abs().mean()
    scaled_t = t * (torch.rand(2, 5, 1, generator=g) + 0.5)
    s_only_scaled = cosine_frame_loss(s, scaled_t, lambda_cos=1.0) - (s - scaled_t).abs().mean()
    assert torch.allclose(s_only, s_only_scaled, atol=1e-5)


def test_positional_align_truncates_and_pads():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    short, m_short = positional_align(t, 3)
    assert short.shape == (2, 3, 3) and torch.equal(short, t[:, :3]) and m_short.all()
    long, m_long = positional_align(t, 8)
    assert long.shape == (2, 8, 3) and torch.equal(long[:, :5], t) and (long[:, 5:] == 0).all()
    assert m_long[:, :5].all() and not m_long[:, 5:].any()
    tmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    _, m = positional_align(t, 4, tmask)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_interpolate_align_values():
    tt, f = 4, 7
    t = torch.randn(1, tt, 2, dtype=torch.float64)
    out, mask = interpolate_align(t, f)
    assert out.shape == (1, f, 2) and mask.all()
    for j in range(f):  # half-pixel-centre linear interpolation, written out
        u = min(max((j + 0.5) * tt / f - 0.5, 0.0), tt - 1)
        lo = int(math.floor(u))
        hi = min(lo + 1, tt - 1)
        w = u - lo
        assert torch.allclose(out[0, j], (1 - w) * t[0, lo] + w * t[0, hi])
    same, _ = interpolate_align(t, tt)
    assert torch.allclose(same, t)
    down, _ = interpolate_align(torch.arange(8.0).view(1, 8, 1), 4)
    assert down.flatten().tolist() == [0.5, 2.5, 4.5, 6.5]
    _, m = interpolate_align(torch.zeros(2, 8, 1), 4, torch.tensor([[1] * 4 + [0] * 4, [1] * 8]).bool())
    assert m.tolist() == [[True, True, False, False], [True] * 4]  # coords 0.5, 2.5 ≤ 3; 4.5 > 3


def test_codec_feature_distillation_term_gradients_and_reference():
    torch.manual_seed(0)
    term = CodecFeatureDistillation(student_dim=4, teacher_dim=6, mode="d_axis", alignment="position")
    student = torch.randn(2, 4, 5, requires_grad=True)  # [B, D, F] RVQ layer output
    teacher = torch.randn(2, 7, 6, requires_grad=True)
    out = ModelOutput(features={"layer_outputs.0": student})
    kwargs = term.gather(out, ModelOutput(hidden_states=(teacher,)), {})
    loss = term(**kwargs)
    projected = (student.transpose(1, 2) @ term.projector.weight.t()).detach()
    assert loss.item() == pytest.approx(ref_time(projected, teacher.detach()[:, :5]), rel=1e-5)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert term.projector.weight.grad is not None
    assert teacher.grad is None


def test_codec_feature_distillation_t_axis_interpolate_and_waveform_mask():
    term = CodecFeatureDistillation(mode="t_axis", alignment="interpolate", lambda_cos=0.5, hop_length=4)
    g = torch.Generator().manual_seed(2)
    student = torch.randn(2, 3, 5, generator=g)  # F = 5 frames, hop 4 → 20 samples
    teacher = torch.randn(2, 10, 3, generator=g)
    wmask = torch.ones(2, 20, dtype=torch.bool)
    wmask[1, 12:] = False  # sample 1: frames 0..2 real
    loss = term(student, teacher, wmask)
    aligned, _ = interpolate_align(teacher, 5)
    fmask = [[True] * 5, [True] * 3 + [False] * 2]
    assert loss.item() == pytest.approx(ref_frame(student.transpose(1, 2), aligned, fmask, lam=0.5), rel=1e-5)


def test_codec_feature_distillation_teacher_mask_from_batch():
    term = CodecFeatureDistillation(sources={"teacher_mask": "batch.teacher_mask"})
    g = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 3, 6, generator=g), torch.randn(2, 4, 3, generator=g)
    tmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    kwargs = term.gather(ModelOutput(features={"layer_outputs.0": student}), ModelOutput(hidden_states=(teacher,)),
                         {"teacher_mask": tmask})
    fmask = [[True] * 4 + [False] * 2, [True] * 2 + [False] * 4]  # 6 frames, teacher 4 steps, sample 1: 2 real
    assert term(**kwargs).item() == pytest.approx(ref_time(student.transpose(1, 2), teacher, fmask), rel=1e-5)


def test_codec_feature_distillation_config_errors():
    with pytest.raises(ConfigError, match="student_dim: 4 and teacher_dim: 6"):
        CodecFeatureDistillation()(torch.randn(1, 4, 3), torch.randn(1, 3, 6))
    with pytest.raises(ConfigError, match="mode"):
        CodecFeatureDistillation(mode="x_axis")
    with pytest.raises(ConfigError, match="alignment"):
        CodecFeatureDistillation(alignment="dtw")
    with pytest.raises(ConfigError, match="both student_dim and teacher_dim"):
        CodecFeatureDistillation(student_dim=4)
    term = CodecFeatureDistillation(sources={"teacher_features": "teacher.features.encoder.layers.3"})
    assert term.sources["teacher_features"] == "teacher.features.encoder.layers.3"


def test_indirect_semantic_loss_matches_loop_and_masks_padding():
    torch.manual_seed(0)
    enc = torch.nn.Conv1d(3, 4, 2, stride=2)  # a frozen "encoder": mel [B, 3, T] → [B, T/2, 4]
    enc.requires_grad_(False)

    def encoder_fn(mel):
        return enc(mel).transpose(1, 2)

    target = torch.randn(2, 3, 12, requires_grad=True)
    recon = torch.randn(2, 3, 12, requires_grad=True)
    mel_lengths = torch.tensor([12, 6])
    mask = frames_from_lengths(mel_lengths, 6, 2)
    assert mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    loss = indirect_semantic_loss(encoder_fn, target, recon, mask)
    et, er = encoder_fn(target).detach().double(), encoder_fn(recon).detach().double()
    total, count = 0.0, 0
    for b in range(2):
        for f in range(6):
            if mask[b, f]:
                total += sum((er[b, f, d] - et[b, f, d]).item() ** 2 for d in range(4)) / 4
                count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)
    loss.backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert target.grad is None
    # The padded encoder frames of sample 1 do not change the loss.
    recon2 = recon.detach().clone()
    recon2[1, :, 6:] += 100.0
    assert indirect_semantic_loss(encoder_fn, target, recon2, mask).item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="one shape"):
        indirect_semantic_loss(encoder_fn, target, recon[..., :10])


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 7), st.integers(1, 9)), min_size=1, max_size=4), st.integers(0, 2))
def test_per_sample_interpolation_stretches_each_real_prefix(shapes, extra_frames):
    """Sample b's L_b real steps over its N_b real frames == F.interpolate of that prefix alone."""
    tt = max(n for n, _ in shapes)
    frames = max(f for _, f in shapes) + extra_frames
    g = torch.Generator().manual_seed(len(shapes) * 31 + tt)
    teacher = torch.randn(len(shapes), tt, 3, generator=g, dtype=torch.float64)
    tmask = torch.tensor([[i < n for i in range(tt)] for n, _ in shapes])
    frame_lengths = torch.tensor([f for _, f in shapes])
    aligned, mask = interpolate_align(teacher, frames, tmask, frame_lengths)
    assert aligned.shape == (len(shapes), frames, 3)
    for b, (n, f) in enumerate(shapes):
        alone = torch.nn.functional.interpolate(teacher[b:b + 1, :n].transpose(1, 2), size=f, mode="linear",
                                                align_corners=False).transpose(1, 2)[0]
        assert torch.allclose(aligned[b, :f], alone)
        assert mask[b].tolist() == [i < f for i in range(frames)]


def test_interpolate_term_stretches_tokens_over_each_samples_audio():
    """With teacher_mask and waveform_mask the term aligns per sample (a transcript per utterance)."""
    term = CodecFeatureDistillation(mode="t_axis", alignment="interpolate", hop_length=4,
                                    sources={"teacher_mask": "batch.teacher_mask"})
    g = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(2, 3, 6, generator=g), torch.randn(2, 4, 3, generator=g)
    tmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    wmask = torch.ones(2, 24, dtype=torch.bool)
    wmask[1, 10:] = False  # sample 1: ceil(10 / 4) = 3 real frames
    loss = term(student, teacher, wmask, tmask)
    s = student.transpose(1, 2)
    full = torch.nn.functional.interpolate(teacher[:1].transpose(1, 2), size=6, mode="linear").transpose(1, 2)
    short = torch.nn.functional.interpolate(teacher[1:, :2].transpose(1, 2), size=3, mode="linear").transpose(1, 2)
    aligned = torch.zeros(2, 6, 3)
    aligned[0], aligned[1, :3] = full[0], short[0]
    fmask = [[True] * 6, [True] * 3 + [False] * 3]
    assert loss.item() == pytest.approx(ref_frame(s, aligned, fmask, lam=1.0), rel=1e-5)


def ref_centered_time(s, t, mask):
    """The centred d_axis loss by hand: subtract each sample's mean over its valid frames, then ref_time."""
    n = min(s.shape[1], t.shape[1])
    s, t = s[:, :n].double().clone(), t[:, :n].double().clone()
    for i in range(s.shape[0]):
        valid = [k for k in range(n) if bool(mask[i][k])]
        s[i, valid] -= s[i, valid].mean(0)
        t[i, valid] -= t[i, valid].mean(0)
    return ref_time(s, t, mask)


def test_centered_d_axis_is_the_time_correlation_and_ignores_a_constant_offset():
    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(2, 6, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    loss = cosine_time_loss(student, teacher, mask, centered=True)
    assert loss.item() == pytest.approx(ref_centered_time(student, teacher, mask), rel=1e-5)
    # a time-constant offset of the student changes the uncentred loss, not the centred one
    shifted = student + torch.tensor([5.0, -3.0, 2.0])
    assert cosine_time_loss(shifted, teacher, mask, centered=True).item() == pytest.approx(loss.item(), rel=1e-5)
    assert cosine_time_loss(shifted, teacher, mask).item() != pytest.approx(cosine_time_loss(student, teacher, mask).item(),
                                                                            rel=1e-3)


def test_projector_bias_and_centered_term():
    torch.manual_seed(0)
    term = CodecFeatureDistillation(student_dim=4, teacher_dim=6, centered=True, projector_bias=True)
    assert term.projector.bias is not None and term.projector.bias.shape == (6,)
    assert CodecFeatureDistillation(student_dim=4, teacher_dim=6).projector.bias is None  # today's, the default
    student, teacher = torch.randn(2, 4, 5), torch.randn(2, 7, 6)
    projected = (student.transpose(1, 2) @ term.projector.weight.T + term.projector.bias).detach()
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert term(student, teacher).item() == pytest.approx(ref_centered_time(projected, teacher, mask), rel=1e-5)
    with pytest.raises(ConfigError, match="centered: only applies to mode: d_axis"):
        CodecFeatureDistillation(mode="t_axis", centered=True)
    with pytest.raises(ConfigError, match="projector_bias: needs student_dim and teacher_dim"):
        CodecFeatureDistillation(projector_bias=True)


def test_parameter_schedule_warms_the_distillation_weight_up_to_120():
    term = CodecFeatureDistillation(student_dim=4, teacher_dim=6, weight=120.0)
    module = SimpleNamespace(losses={"distill": term})
    warmup = ParameterSchedule("distill", "weight", 0, 120, shape="linear", steps=50)
    seen = []
    for step in (0, 25, 50, 80):
        warmup.on_train_batch_start(SimpleNamespace(global_step=step, estimated_stepping_batches=1000), module, {}, 0)
        seen.append(term.weight)
    assert seen == [0.0, 60.0, 120.0, 120.0]
