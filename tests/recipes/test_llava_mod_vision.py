"""LLaVA-MoD's vision tower pretrained through ``fit`` (tiny-vision_presence.yaml): the same tower as the
VLM configs', an export they load, and its held-out presence metrics."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from datamodules.vlm import write_digit_vqa
from lit_distill.cli import run_cli
from lit_distill.contracts import ModelOutput
from lit_distill.experiment import read_metrics
from lit_distill.export import export_checkpoint
from lit_distill.models import TimmModel
from recipes.llava_mod import DigitPresenceMetrics, tower_presence_accuracy, vision_tower

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs/vlm/llava_mod"
VISION = CONFIGS / "tiny-vision_presence.yaml"


def test_the_pretraining_config_builds_the_tower_the_vlm_configs_use():
    student = yaml.safe_load(VISION.read_text())["model"]["init_args"]["student"]["init_args"]
    for name in ("tiny-teacher_sft.yaml", "tiny-moe-student_from_tiny-teacher_stage1-mimic.yaml"):
        tower = yaml.safe_load((CONFIGS / name).read_text())["model"]["init_args"]["student"]["init_args"]["vision"]
        assert {k: tower["init_args"][k] for k in ("name", "num_classes", "model_kwargs")} == \
               {k: student[k] for k in ("name", "num_classes", "model_kwargs")}, name
    built = TimmModel(**student).module.state_dict()
    reference = vision_tower().module.state_dict()
    assert {k: v.shape for k, v in built.items()} == {k: v.shape for k, v in reference.items()}


def test_pretraining_through_fit_exports_a_checkpoint_the_vlm_tower_loads(tmp_path):
    run_cli(["fit", "--config", str(VISION), "--data.init_args.train_scenes=16", "--data.init_args.val_scenes=8",
             "--data.init_args.batch_size=8", "--trainer.max_steps=3", "--trainer.val_check_interval=3",
             "--trainer.log_every_n_steps=1", "--model.init_args.scheduler.init_args.total_steps=3",
             "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}",
             f"--trainer.logger={{'class_path': 'lightning.pytorch.loggers.CSVLogger', 'init_args': "
             f"{{'save_dir': '{tmp_path / 'run'}'}}}}"])
    metrics = read_metrics(tmp_path / "run").final
    assert {"train/bce", "val/bce", "val/label_acc", "val/exact_set_acc"} <= set(metrics)
    assert 0.0 <= metrics["val/exact_set_acc"] <= metrics["val/label_acc"] <= 1.0
    assert metrics["val/bce"] > 0
    ckpt = max((tmp_path / "run").rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    export_checkpoint(str(ckpt), str(tmp_path / "vision"))
    weights = tmp_path / "vision" / "model_state_dict.pt"
    trained = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    tower = vision_tower()
    tower.module.load_state_dict(torch.load(weights, weights_only=True))  # strict: the VLM tower's keys
    torch.testing.assert_close(tower.module.conv1.weight, trained["student.module.conv1.weight"], rtol=0, atol=0)
    assert not torch.equal(tower.module.conv1.weight, vision_tower().module.conv1.weight)  # it trained
    vqa = write_digit_vqa(tmp_path / "vqa", num_train=1, num_val=4)
    assert 0.0 <= tower_presence_accuracy(weights, vqa["val"]) <= 1.0


def test_presence_metrics_count_labels_and_whole_sets():
    logged = {}
    module = SimpleNamespace(log=lambda name, value: logged.__setitem__(name, float(value)))
    trainer = SimpleNamespace(sanity_checking=False, strategy=SimpleNamespace(reduce=lambda x, reduce_op: x))
    callback = DigitPresenceMetrics()
    callback.on_validation_epoch_start(trainer, module)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    for logits in (torch.tensor([[2.0, -1.0, 0.5], [1.0, 3.0, -2.0]]),  # scene 0 all right; scene 1: 2 of 3
                   torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]])):  # scene 0: 1 of 3; scene 1 all right
        callback.on_validation_batch_end(trainer, module, {"student": ModelOutput(logits=logits)},
                                         {"labels": labels}, 0)
    callback.on_validation_epoch_end(trainer, module)
    assert logged == {"val/label_acc": pytest.approx(9 / 12), "val/exact_set_acc": pytest.approx(2 / 4)}
