"""TRL's ``GKDTrainer`` itself on bench batches, made to do exactly the hand loop's work.

Used by bench/peers.py (objective ``fkl``: forward KL only, because ``GKDTrainer``'s loss is its
generalized JSD alone and cannot mix in CE). The settings that make it identical work, as issue 18
lists them: ``lmbda = 0`` (no on-policy generation), ``seq_kd = False``, ``beta = 0`` (forward
KL), ``temperature = 1``, float32, no gradient checkpointing, ``max_grad_norm = 0``, a constant
LR, the batches in order, and our own AdamW through ``optimizers=``. The batches are bench/
overhead.py's (``labels`` already shifted); TRL shifts ``labels`` itself, so it gets them unshifted.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import tempfile

import torch
from overhead import Seconds, Stopwatch  # bench/ is on sys.path when run as a script
from torch.utils.data import SequentialSampler


class _Unshifted:
    """Collator: the dataset's item ``{"i": i}`` is bench batch ``i`` with TRL's unshifted labels."""

    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __call__(self, items: list[dict]) -> dict:
        batch = self.batches[items[0]["i"]]
        labels = torch.full_like(batch["labels"], -100)
        labels[:, 1:] = batch["labels"][:, :-1]  # TRL's compute_loss shifts: labels[:, 1:] -> ours
        return {"input_ids": batch["inputs"]["input_ids"], "attention_mask": batch["inputs"]["attention_mask"],
                "labels": labels}


def _tokenizer():
    """A two-token tokenizer: GKDTrainer wants a processing class (pad/eos ids) even when nothing is tokenized."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
                                   pad_token="<pad>", eos_token="<eos>")


def run_gkd_trainer(student, teacher, batches: list[dict], warmup: int) -> tuple[Seconds, float, dict]:
    """``GKDTrainer`` over ``batches`` (one dataset item per step, in order); returns (time after ``warmup``
    steps, last loss, {})."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # the trainer reports usage; this machine has no network
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class InOrder(GKDTrainer):
        last_loss = float("nan")

        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            InOrder.last_loss = float((loss[0] if return_outputs else loss).detach())
            return loss

    class Timer(TrainerCallback):
        watch = Stopwatch()

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                Timer.watch.start()

    student = copy.deepcopy(student).module  # the transformers model under bench/overhead.py's adapter
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    with tempfile.TemporaryDirectory() as out:
        config = GKDConfig(output_dir=out, lmbda=0.0, seq_kd=False, beta=0.0, temperature=1.0, bf16=False, fp16=False,
                           gradient_checkpointing=False, max_grad_norm=0.0, lr_scheduler_type="constant",
                           learning_rate=1e-3, per_device_train_batch_size=1, max_steps=len(batches),
                           logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=True,
                           dataloader_num_workers=0, disable_tqdm=True, seed=0)
        trainer = InOrder(model=student, teacher_model=copy.deepcopy(teacher).module, args=config,
                          data_collator=_Unshifted(batches), train_dataset=Dataset.from_dict({"i": list(range(len(batches)))}),
                          processing_class=_tokenizer(), optimizers=(optimizer, None), callbacks=[Timer()])
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its summary; stdout is the bench's JSON
            trainer.train()
    return Timer.watch.read(), InOrder.last_loss, {}
