"""DM-Codec SM-guided distillation from YAML: a 2-step fit of the tiny HuBERT-teacher config."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules.speech import synthesize_speech_corpus
from lit_distill.cli import run_cli
from lit_distill.models import HFSpeechEncoder

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "speech" / "dm_codec" / "codec_from_hubert-tiny_synth.yaml"


def test_tiny_hubert_teacher_fits_two_steps(tmp_path):
    sentences = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
                 "Two birds were building a nest under the roof.", "We walked along the beach at sunset."]
    manifest = synthesize_speech_corpus(tmp_path / "synth", sentences, voices=["en-us"], speeds=[175])
    cli = run_cli([
        "--config", str(CONFIG), f"--data.init_args.manifest={manifest}",
        "--data.init_args.synthesize=false", "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
        "--data.init_args.crop_seconds=0.5",
        "--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dilations=[1]",
        "--model.init_args.student.init_args.codebook_size=16",
        "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
    ], run=False)
    module = cli.model
    teacher = module.teacher
    assert isinstance(teacher.model, HFSpeechEncoder)
    # the config's frame-rate claim: teacher and codec both take 320 samples per frame
    assert teacher.model.total_stride == module.student.hop_length == 320
    projector = module.losses["distill"].projector
    assert (projector.in_features, projector.out_features) == (64, teacher.model.hidden_size)
    projector_before = projector.weight.detach().clone()
    teacher_before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    grad_norms: list[float] = []
    projector.weight.register_hook(lambda g: grad_norms.append(float(g.norm())))

    cli.trainer.fit(module, datamodule=cli.datamodule)

    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("val/loss", "val/distill", "val/mel", "val/wave", "val/commit"):
        assert torch.isfinite(metrics[key]), key
    # -log sigmoid(cos) with cos in [-1, 1] lies in [-log sigmoid(1), -log sigmoid(-1)]
    assert -torch.nn.functional.logsigmoid(torch.tensor(1.0)) <= metrics["val/distill"] \
        <= -torch.nn.functional.logsigmoid(torch.tensor(-1.0))
    assert len(grad_norms) == 2 and all(n > 0 and torch.isfinite(torch.tensor(n)) for n in grad_norms)
    assert not torch.equal(projector.weight.detach(), projector_before)
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
