"""scripts/experiment_lm_spt.py: the config it trains and the two arms (the pipeline takes minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "experiment_lm_spt.py"



def test_the_asr_encoder_is_the_trained_teacher_and_the_authors_settings_stay(exp, tmp_path):
    written = yaml.safe_load(exp.config_with_teacher(tmp_path, tmp_path / "whisper").read_text())
    original = yaml.safe_load((REPO / exp.LMSPT).read_text())
    semantic = written["model"]["init_args"]["losses"]["semantic"]["init_args"]
    assert semantic["encoder"]["init_args"]["path"] == str(tmp_path / "whisper")
    assert "config" not in semantic["encoder"]["init_args"]
    assert semantic["weight"] == 500.0  # the authors' weight, as the config has it
    student = written["model"]["init_args"]["student"]["init_args"]
    assert student == original["model"]["init_args"]["student"]["init_args"]  # 12.5 Hz, dropout 0.5, ...


def test_the_two_arms_differ_only_in_the_semantic_weight(exp, tmp_path):
    size = {**exp.dm.sizes(False), "steps": 300, "val_every": 50}
    with_kd, without = exp.arms(tmp_path, size, tmp_path / "lm_spt.yaml")
    assert with_kd.configs == without.configs
    extra = [o for o in without.overrides if o not in with_kd.overrides]
    assert extra == [f"{exp.SEMANTIC}weight=0.0"] and set(with_kd.overrides) <= set(without.overrides)


def test_each_diagnosis_arm_changes_one_thing_from_the_pinned_authors_setting(exp, tmp_path):
    size = {**exp.dm.sizes(False), "steps": 150, "val_every": 25, "usage_every": 5, "share_every": 10}
    runs = exp.diagnosis_arms(tmp_path, size, tmp_path / "lm_spt.yaml")
    assert [r.name for r in runs] == [name for name, _ in exp.DIAGNOSIS]
    reference = runs[0]
    assert set(exp.AUTHORS) <= set(reference.overrides)  # learned, cosine, dropout 0.5, default init
    for run, (_, extra) in zip(runs, exp.DIAGNOSIS, strict=True):
        assert run.configs == reference.configs and run.group == "diagnose"
        assert list(run.overrides) == [*reference.overrides, *extra]  # later overrides win in the CLI
    assert any("--trainer.max_steps=150" == o for o in reference.overrides)
    callbacks = json.loads(next(o for o in reference.overrides if o.startswith("--trainer.callbacks="))
                           .split("=", 1)[1])
    share = next(c for c in callbacks if c["class_path"].endswith("GradientShare"))["init_args"]
    assert share["parameters"] == ["student.semantic_quantizer.project_in.*"] and share["every_n_steps"] == 10
    assert set(share["terms"]) == {"mel", "semantic", "semantic_commit", "semantic_codebook"}


def test_write_docs_replaces_only_its_own_stage(exp, tmp_path):
    (tmp_path / "lm_spt.md").write_text("# LM-SPT\n\nhand-written intro\n")
    exp.write_docs(tmp_path, "diagnose", "diagnosis v1", {"a": 1})
    exp.write_docs(tmp_path, "compare", "comparison v1", {"b": 2})
    text = (tmp_path / "lm_spt.md").read_text() + "\n## Reading\nby hand\n"
    (tmp_path / "lm_spt.md").write_text(text)
    exp.write_docs(tmp_path, "diagnose", "diagnosis v2", {"a": 3})
    text = (tmp_path / "lm_spt.md").read_text()
    assert "hand-written intro" in text and "by hand" in text and "comparison v1" in text
    assert "diagnosis v2" in text and "diagnosis v1" not in text
    assert text.index("diagnosis v2") < text.index("comparison v1")
    assert json.loads((tmp_path / "lm_spt.json").read_text()) == {"diagnose": {"a": 3}, "compare": {"b": 2}}


def test_codec_settings_reach_both_arms_alike(exp, tmp_path):
    size = {**exp.dm.sizes(False), "steps": 300, "val_every": 50, "usage_every": 10, "share_every": 50}
    with_kd, without = exp.arms(tmp_path, size, tmp_path / "lm_spt.yaml", ("codebook=ema", "cosine=false"))
    for run in (with_kd, without):
        assert f"{exp.STUDENT}codebook=ema" in run.overrides and f"{exp.STUDENT}cosine=false" in run.overrides
    assert [o for o in without.overrides if o not in with_kd.overrides] == [f"{exp.SEMANTIC}weight=0.0"]


def test_each_remedy_arm_changes_one_thing_from_the_pinned_authors_setting(exp, tmp_path):
    size = {**exp.dm.sizes(False), "steps": 100, "val_every": 20, "usage_every": 5, "share_every": 10}
    runs = exp.diagnosis_arms(tmp_path, size, tmp_path / "lm_spt.yaml", exp.REMEDY, "remedy")
    base = exp.diagnosis_arms(tmp_path, size, tmp_path / "lm_spt.yaml", (("authors", ()),), "remedy")[0]
    assert [r.name for r in runs] == [name for name, _ in exp.REMEDY] and {r.group for r in runs} == {"remedy"}
    for run, (_, extra) in zip(runs, exp.REMEDY, strict=True):
        assert run.configs == base.configs and list(run.overrides) == [*base.overrides, *extra]
    zero, control = runs[0].overrides, runs[1].overrides
    assert [o for o in control if o not in zero] == ["--model.init_args.optimizer.init_args.lr=2e-5"]
    assert runs[2].overrides[-1] == f"{exp.STUDENT}semantic_center=true"


def test_semantic_input_measures_the_offset_its_rank_and_the_bias_size(exp):
    from lit_distill.models import LMSPTCodec

    args = {"strides": [2, 4], "channels": 2, "max_channels": 8, "dim": 8, "dilations": [1],
            "semantic_codebook_size": 16, "semantic_codebook_dim": 4, "num_quantizers": 1, "codebook_size": 8,
            "codebook": "learned", "cosine": True}
    waves = [torch.randn(8 * 30) * 0.1 for _ in range(3)]
    torch.manual_seed(0)
    default = exp.semantic_input(LMSPTCodec(**args), waves)
    torch.manual_seed(0)
    zero = exp.semantic_input(LMSPTCodec(**args, zero_bias_init=True), waves)
    assert zero["semantic_bias_abs"] == 0.0 and default["semantic_bias_abs"] > 0.0
    assert zero["silence_to_mean"] == 0.0  # no bias: silence is the origin
    assert default["u_offset_share"] > 0.9 > zero["u_offset_share"]  # the biases' constant dominates u
    for row in (default, zero):
        assert 1.0 <= row["u_varying_rank"] <= 4.0 + 1e-9
        assert 0.0 < row["u_varying_rms"] <= row["u_rms"]


def test_ctc_probe_copies_let_a_code_emit_more_characters_than_it_has_frames(exp, tmp_path):
    # two characters per code: code k always says letters 2k+1, 2k+2 ("ab", "cd", "ef")
    gen = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, 3, (6,), generator=gen) for _ in range(40)]
    chars = [[c for k in t.tolist() for c in (2 * k + 3, 2 * k + 4)] for t in codes]  # ids of a..f
    tokens, targets = {"train": codes[:32], "heldout": codes[32:]}, {"train": chars[:32], "heldout": chars[32:]}
    raw = exp.ctc_probe(tokens, targets, 3, tmp_path, smoke=False)
    spread = exp.ctc_probe(tokens, targets, 3, tmp_path, smoke=False, copies=4)
    assert raw["feasible"] == 0.0 and spread["feasible"] == 1.0
    assert raw["ctc_cer"] >= 0.5 and spread["ctc_cer"] < 0.05  # 6 frames cannot spell 12 characters
