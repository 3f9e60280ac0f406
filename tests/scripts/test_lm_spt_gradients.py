"""scripts/lm_spt_gradients.py: per-term gradients on u, the statistics read from them, the doc block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "lm_spt_gradients.py"
CONFIG = REPO / "configs" / "speech" / "lm_spt" / "lm-spt-12.5hz_from_whisper-tiny_synth.yaml"


@pytest.fixture(scope="module")
def module(exp):
    """The config's LM-SPT module (its six terms, its random tiny Whisper) at 8 channels, trained codebooks."""
    from lit_distill.models import LMSPTCodec

    torch.set_num_threads(1)
    model = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]
    torch.manual_seed(0)
    codec = LMSPTCodec(**{**model["student"]["init_args"], "channels": 8})
    return exp.DistillationModule(student=codec, losses=exp.build_losses(model["losses"], REPO)).eval()


def _batch(seconds: float = 1.5, seed: int = 0) -> dict:
    from datamodules.speech import collate_speech

    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(16000 * seconds)) / 16000
    wave = 0.1 * torch.sin(2 * torch.pi * 220 * t * (1 + t)) + 0.02 * torch.randn(t.shape, generator=g)
    return collate_speech([(wave, "a test")])


def test_the_terms_gradients_sum_to_the_gradient_of_the_summed_loss_on_u(exp, module):
    batch = _batch()
    u, grads = exp.term_gradients(module, batch)
    assert set(grads) == set(module.losses) and u.shape[-1] == 8
    # independently: retain_grad on W_in's output, backward of the module's weighted total
    seen = {}

    def keep(_module, _args, out):  # returns None: the output stays as it is
        out.retain_grad()
        seen["u"] = out

    hook = module.student.semantic_quantizer.project_in.register_forward_hook(keep)
    student_out, _ = module(batch, run_teacher=False)
    hook.remove()
    total, _ = module.compute_losses(batch, student_out, None)
    module.zero_grad()
    total.backward()
    assert torch.allclose(seen["u"].detach(), u)
    assert torch.allclose(sum(grads.values()), seen["u"].grad, rtol=1e-4, atol=1e-9)
    # the codebook losses read sg(u): no gradient on u; the mel and semantic terms do reach it
    assert grads["semantic_codebook"].abs().max() == 0 and grads["codebook"].abs().max() == 0
    assert grads["semantic"].abs().max() > 0 and grads["mel"].abs().max() > 0


def test_u_is_the_input_that_the_experiment_measures(exp, module):
    batch = _batch(seconds=1.0, seed=1)
    u, _ = exp.term_gradients(module, batch)
    codec = module.student
    with torch.no_grad():
        direct = codec.semantic_quantizer.project_in(codec.semantic_encoder(codec._pad(batch["waveform"])).transpose(1, 2))
    assert torch.allclose(u, direct)


def test_measure_reports_u_rank_as_semantic_input_does_and_shares_sum_to_one(exp, module):
    waves = [_batch(seconds=s, seed=i)["waveform"][0, 0] for i, s in enumerate((1.0, 1.3))]
    stats = exp.measure(module, waves, ["a", "b"])
    assert stats["u_rank"] == pytest.approx(exp.lm.semantic_input(module.student, waves)["u_varying_rank"], rel=1e-6)
    terms = {k: v for k, v in stats["terms"].items() if k != "total"}
    assert sum(v["share"] for v in terms.values()) == pytest.approx(1.0)
    assert all(v != v for v in (terms["semantic_codebook"]["rank"], terms["semantic_codebook"]["cos_u"]))  # NaN
    assert 1.0 <= stats["terms"]["total"]["rank"] <= 8.0 and 0 <= stats["terms"]["total"]["cos_u"] <= 1
    # stem, five strided convolutions, the last one (z): their widths at 8 channels, each rank within it
    assert [c for c, _, _ in stats["depth"]] == [8, 16, 32, 64, 64, 64, 64]
    assert all(1.0 <= r <= c and 0 <= const <= 1 for c, r, const in stats["depth"])


def test_varying_leading_and_rank_on_known_matrices(exp):
    g = torch.Generator().manual_seed(0)
    direction = torch.tensor([3.0, 4.0, 0, 0]) / 5
    one = [torch.randn(n, 1, generator=g) * direction + torch.randn(4, generator=g) for n in (30, 40)]
    centred = exp.varying(one)  # per-utterance offsets removed: exactly rank one
    assert centred.shape == (70, 4) and torch.allclose(centred[:30].mean(0), torch.zeros(4), atol=1e-6)
    vec, top = exp.leading(centred)
    assert abs(float(vec.float() @ direction)) == pytest.approx(1.0, abs=1e-6) and top == pytest.approx(1.0)
    assert exp.participation_rank(centred) == pytest.approx(1.0, abs=1e-6)
    iso = exp.varying([torch.cat([torch.eye(4), -torch.eye(4)]).repeat(25, 1)])  # ± each axis: mean 0
    assert exp.participation_rank(iso) == pytest.approx(4.0) and exp.leading(iso)[1] == pytest.approx(0.25)


def test_write_places_its_block_before_the_comparison_and_keeps_the_rest(exp, tmp_path):
    compare = exp.BEFORE
    (tmp_path / "lm_spt.md").write_text(f"intro\n\n- remedy reading\n\n{compare}\ncomparison\n")
    (tmp_path / "lm_spt.json").write_text(json.dumps({"remedy": {"a": 1}}))
    exp.write(tmp_path, "v1", {"x": 1})
    text = (tmp_path / "lm_spt.md").read_text()
    assert text.index("- remedy reading") < text.index(exp.BEGIN) < text.index("v1") < text.index(compare)
    (tmp_path / "lm_spt.md").write_text(text.replace(exp.END, exp.END + "\n\nhand reading"))
    exp.write(tmp_path, "v2", {"x": 2})
    text = (tmp_path / "lm_spt.md").read_text()
    assert "v1" not in text and "v2" in text and "hand reading" in text and text.count(exp.BEGIN) == 1
    assert json.loads((tmp_path / "lm_spt.json").read_text()) == {"remedy": {"a": 1}, exp.KEY: {"x": 2}}


def test_depth_stats_reads_a_rank_one_update_along_the_mean_input(exp, module):
    import copy

    init = module.student.semantic_encoder
    waves = [_batch(seconds=1.0, seed=i)["waveform"][0, 0] for i in range(2)]
    last = [m for m in init if isinstance(m, torch.nn.Conv1d)][-1]
    inputs = []
    hook = last.register_forward_hook(lambda _m, args, _out: inputs.append(args[0][0].mean(-1)))
    with torch.no_grad():
        for wave in waves:
            init(wave[None, None])
    hook.remove()
    # ΔW = a ⊗ (mean input tiled over the kernel taps) on the last convolution only
    xbar = torch.stack(inputs).mean(0).repeat_interleave(last.kernel_size[0])
    delta = torch.outer(torch.randn(last.out_channels, generator=torch.Generator().manual_seed(0)), xbar)
    trained = copy.deepcopy(init)
    with torch.no_grad():
        [m for m in trained if isinstance(m, torch.nn.Conv1d)][-1].weight += 0.3 * delta.reshape(last.weight.shape)
    stats = exp.depth_stats(trained, waves, init)[-1]
    w0 = last.weight.detach().flatten(1).double()
    d = 0.3 * delta.double()
    assert stats[3] == pytest.approx(float(d.norm() / w0.norm()), rel=1e-5)
    assert stats[4] == pytest.approx(float(torch.linalg.svdvals(d)[0] / torch.linalg.svdvals(w0)[0]), rel=1e-5)
    assert stats[5] == pytest.approx(1.0, abs=1e-6) and stats[6] == pytest.approx(1.0, abs=1e-6)
