"""GradientShare: per-term gradient norms and shares equal a direct autograd computation."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.callbacks.gradient_share import GradientShare
from lit_distill.losses import CrossEntropy, ForwardKL


class Recorder(L.Callback):
    """Copies the callback's shares after each step, and the student's weights before it."""

    def __init__(self, share: GradientShare):
        self.share, self.shares, self.weights = share, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.weights.append({k: v.detach().clone() for k, v in pl_module.student.state_dict().items()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.shares.append(dict(self.share.last))
        self.share.last = {}


def batches(n: int = 3):
    g = torch.Generator().manual_seed(0)
    return [{"inputs": {"x": torch.randn(5, 4, generator=g)}, "labels": torch.randint(0, 3, (5,), generator=g)}
            for _ in range(n)]


def direct_norms(student_state: dict, batch: dict, teacher: nn.Module) -> dict[str, float]:
    student = nn.Linear(4, 3)
    student.load_state_dict({k.removeprefix("module."): v for k, v in student_state.items()})
    logits = student(batch["inputs"]["x"])
    values = {"ce": 1.0 * nn.functional.cross_entropy(logits, batch["labels"]),
              "kd": 3.0 * torch.nn.functional.kl_div(torch.log_softmax(logits, -1),
                                                     torch.log_softmax(teacher(batch["inputs"]["x"]), -1),
                                                     log_target=True, reduction="batchmean")}
    norms = {}
    for name, value in values.items():
        grads = torch.autograd.grad(value, list(student.parameters()), retain_graph=True)
        norms[name] = float(torch.stack([g.pow(2).sum() for g in grads]).sum().sqrt())
    return norms


def test_shares_equal_direct_gradients_and_are_measured_every_n_steps():
    torch.manual_seed(0)
    teacher = nn.Linear(4, 3)
    module = DistillationModule(nn.Linear(4, 3), {"ce": CrossEntropy(), "kd": ForwardKL(weight=3.0)},
                                teacher=teacher)
    share = GradientShare(every_n_steps=2)
    recorder = Recorder(share)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[share, recorder])
    data = batches()
    trainer.fit(module, DataLoader(data, batch_size=None))
    assert [bool(s) for s in recorder.shares] == [True, False, True]  # steps 0 and 2
    for step in (0, 2):
        norms = direct_norms(recorder.weights[step], data[step], teacher)
        expected = {k: v / sum(norms.values()) for k, v in norms.items()}
        assert recorder.shares[step] == pytest.approx(expected, rel=1e-5)
    assert set(trainer.callback_metrics) >= {"grad_norm/ce", "grad_norm/kd", "grad_share/ce", "grad_share/kd"}


def test_parameter_patterns_and_terms_are_checked():
    module = DistillationModule(nn.Linear(4, 3), {"ce": CrossEntropy()})
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[GradientShare(parameters=["student.nothing.*"])])
    with pytest.raises(ConfigError, match="match no trainable parameter"):
        trainer.fit(module, DataLoader(batches(1), batch_size=None))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[GradientShare(terms=["kd"])])
    with pytest.raises(ConfigError, match=r"\['kd'\] are not in"):
        trainer.fit(module, DataLoader(batches(1), batch_size=None))
    with pytest.raises(ConfigError, match="every_n_steps"):
        GradientShare(every_n_steps=0)


def test_gradient_share_on_a_tiny_codec_recipe(tmp_path):
    """A codec recipe (mel, wave, commit terms) logs every term's gradient share on its encoder."""
    from datamodules.speech import synthesize_speech_corpus
    from lit_distill.cli import run_cli

    repo = Path(__file__).resolve().parents[3]
    sentences = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
                 "Two birds were building a nest under the roof.", "We walked along the beach at sunset."]
    manifest = synthesize_speech_corpus(tmp_path / "synth", sentences, voices=["en-us"], speeds=[175])
    extra = tmp_path / "share.yaml"
    extra.write_text("trainer:\n  callbacks:\n    - class_path: lit_distill.callbacks.GradientShare\n"
                     "      init_args: {parameters: ['student.*encoder*'], every_n_steps: 1}\n")
    run = run_cli([
        "fit", "--config", str(repo / "configs" / "speech" / "codec" / "codec_synth.yaml"), "--config", str(extra),
        f"--data.init_args.manifest={manifest}", "--data.init_args.synthesize=false",
        "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25", "--data.init_args.crop_seconds=0.5",
        "--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dim=16",
        "--model.init_args.student.init_args.dilations=[1]", "--model.init_args.student.init_args.codebook_size=16",
        "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
    ])
    metrics = run.trainer.callback_metrics
    shares = {k: float(v) for k, v in metrics.items() if k.startswith("grad_share/")}
    assert set(shares) == {"grad_share/mel", "grad_share/wave", "grad_share/commit"}, sorted(metrics)
    assert all(0 < s < 1 for s in shares.values()) and abs(sum(shares.values()) - 1) < 1e-5
    assert all(float(metrics[k.replace("share", "norm")]) > 0 for k in shares)
