"""SpeculativeAcceptance: the logged values equal a direct computation over the validation set."""

from __future__ import annotations

import pytest
import torch

from lit_distill import ConfigError
from lit_distill.callbacks import SpeculativeAcceptance
from lit_distill.cli import run_cli
from lit_distill.speculative import AcceptanceTally
from tests.lit_distill.test_cli import quickstart_args


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="gamma >= 1"):
        SpeculativeAcceptance(gamma=0)


def test_logged_acceptance_equals_a_direct_tally(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    callbacks = "[{class_path: lit_distill.callbacks.SpeculativeAcceptance, init_args: {gamma: 3}}]"
    cli = run_cli(quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, "--trainer.max_steps=2",
                                  "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
                                  f"--trainer.callbacks={callbacks}"))
    logged = cli.trainer.callback_metrics
    model = cli.model.eval()
    tally = AcceptanceTally(gamma=3)
    with torch.no_grad():
        for i, batch in enumerate(cli.datamodule.val_dataloader()):
            if i == 2:
                break
            student, teacher = model(batch)
            tally.update(student.logits, teacher.logits, batch["loss_mask"])
    expected = tally.result()
    assert float(logged["val/acceptance"]) == pytest.approx(expected["sampled"]["acceptance"], rel=1e-5)
    assert float(logged["val/acceptance_greedy"]) == pytest.approx(expected["greedy"]["acceptance"], rel=1e-5)
    assert float(logged["val/tokens_per_call"]) == pytest.approx(expected["sampled"]["tokens_per_call"], rel=1e-5)
    assert 0 < float(logged["val/acceptance"]) < 1
