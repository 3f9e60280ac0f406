"""Extending lit_distill touches one file: a new loss term, or a new model family, from YAML.

Each test writes the new code as a module in a folder of its own (a user's package, not
lit_distill), names it by class path in an overlay YAML stacked on the quickstart config, and
trains with ``fit``. Nothing in lit_distill is edited or registered: the README's
"Extending" section describes the same two files.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from lit_distill.cli import main, run_cli
from tests.lit_distill.test_cli import quickstart_args

HELLINGER = '''
"""A user's loss: squared Hellinger distance between teacher and student token distributions."""
import torch
from torch import Tensor

from lit_distill.contracts import LossTerm


class Hellinger(LossTerm):
    """H²(p, q) = 1 − Σ √(p·q), mean over the positions where ``mask`` is True.

    Args:
        temperature: divides both sides' logits (an attribute, so schedules reach it).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    default_sources = {"student_logits": "student.logits", "teacher_logits": "teacher.logits",
                       "mask": "batch.loss_mask"}

    def __init__(self, temperature: float = 1.0, weight: float = 1.0, sources: dict | None = None):
        super().__init__(weight, sources)
        self.temperature = temperature

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        log_q = torch.log_softmax(student_logits.float() / self.temperature, -1)
        log_p = torch.log_softmax(teacher_logits.float() / self.temperature, -1)
        distance = 1 - torch.exp(0.5 * (log_p + log_q)).sum(-1)
        return distance[mask].mean() if mask is not None else distance.mean()
'''

BIGRAM = '''
"""A user's model family: a bigram language model (each token's logits depend on it alone)."""
from torch import nn

from lit_distill.contracts import ModelOutput
from lit_distill.models.base import ModelAdapter
from lit_distill.sources import OutputSpec


class BigramLM(ModelAdapter):
    """Next-token logits ``[B, T, V]`` from a ``V × V`` table indexed by the current token.

    Args:
        vocab_size: the tokenizer's size (linked from the datamodule by the CLI).
    """

    def __init__(self, vocab_size: int | None = None):
        super().__init__()
        self.module = nn.Embedding(vocab_size, vocab_size)

    @property
    def output_size(self) -> int:
        return self.module.num_embeddings

    def declared_outputs(self) -> OutputSpec:
        return OutputSpec(logits=True, hidden_states=0, closed=True)

    def run(self, input_ids, attention_mask=None, **_ignored) -> ModelOutput:
        return ModelOutput(logits=self.module(input_ids))
'''


def _user_package(tmp_path, monkeypatch, name: str, source: str) -> None:
    package = tmp_path / "user_code"
    package.mkdir(exist_ok=True)
    (package / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))


def _overlay(tmp_path, yaml: str):
    path = tmp_path / "overlay.yaml"
    path.write_text(textwrap.dedent(yaml))
    return path


def _fit_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay) -> list[str]:
    args = quickstart_args(tmp_path / "runs", text_dir, tokenizer_dir, teacher_dir)
    config_index = args.index("--config") + 2  # stack the overlay right after the quickstart config
    return [*args[:config_index], "--config", str(overlay), *args[config_index:]]


def _fit(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay):
    return run_cli(_fit_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay))


def test_a_new_loss_term_is_one_file(tmp_path, monkeypatch, text_dir, tokenizer_dir, teacher_dir):
    _user_package(tmp_path, monkeypatch, "hellinger", HELLINGER)
    overlay = _overlay(tmp_path, """
        model:
          init_args:
            losses:
              kd: {class_path: user_code.hellinger.Hellinger, init_args: {weight: 0.5, temperature: 2.0}}
        """)
    cli = _fit(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay)
    term = cli.model.losses["kd"]
    assert type(term).__name__ == "Hellinger" and term.temperature == 2.0
    metrics = cli.trainer.callback_metrics
    assert 0 < metrics["train/kd"] < 1 and torch.isfinite(metrics["val/kd"])  # H² lies in [0, 1]


def test_a_new_model_family_is_one_file(tmp_path, monkeypatch, text_dir, tokenizer_dir, teacher_dir, vocab_size):
    _user_package(tmp_path, monkeypatch, "bigram", BIGRAM)
    overlay = _overlay(tmp_path, """
        model:
          init_args:
            student: {class_path: user_code.bigram.BigramLM}
        """)
    cli = _fit(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay)
    student = cli.model.student
    assert type(student).__name__ == "BigramLM" and student.output_size == vocab_size  # vocab linked
    assert torch.isfinite(cli.trainer.callback_metrics["val/kd"])
    assert list((tmp_path / "runs").rglob("last.ckpt"))


def test_a_new_family_that_cannot_give_an_output_fails_before_training(tmp_path, monkeypatch, capsys, text_dir,
                                                                        tokenizer_dir, teacher_dir):
    _user_package(tmp_path, monkeypatch, "bigram", BIGRAM)
    overlay = _overlay(tmp_path, """
        model:
          init_args:
            student: {class_path: user_code.bigram.BigramLM}
            losses:
              kd: {class_path: lit_distill.losses.ForwardKL,
                   init_args: {sources: {student_logits: student.hidden_states.-1}}}
        """)
    with pytest.raises(SystemExit) as exit_info:
        main(_fit_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, overlay))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: model.init_args.losses.kd") and "student.hidden_states.-1" in error
    assert "no hidden states" in error and "BigramLM" in error
    assert not list((tmp_path / "runs").rglob("*.ckpt"))
