"""On-policy distillation (GKD) as a training step: the student answers, the teacher grades.

With probability ``student_fraction`` (GKD's λ) a step replaces the responses of its batch by
the current student's own samples (no gradient through sampling) and then runs the module's
ordinary :meth:`~lit_distill.DistillationModule.distillation_loss` on the new batch: both
models score the student's answer and the configured terms apply as usual (GKD: generalized
JSD; DistiLLM: skew KL), with the module's exact token normalisation, logging and checks. The
other steps train on the data's responses (off-policy).

With two tokenizers (a batch with ``student_inputs`` / ``teacher_inputs`` and ``prompts``, from
``datamodules.CrossTokenizerDataModule``), the student samples in its own tokens, its answers are
decoded to text, and the datamodule's :meth:`retokenize` encodes prompt + answer for both sides
exactly as a data pair is encoded: byte-aligned masks and ALM chunks, so ULD and ALM apply
on-policy unchanged.

Resumable and seeded without state: the coin of optimizer step ``k`` and the samples drawn at
it are pure functions of ``(seed, k, rank)``, so a run resumed from a checkpoint draws what the
uninterrupted run drew.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from lit_distill.errors import ConfigError
from lit_distill.sampling import SamplingOptions, hf_generator, sample_responses
from lit_distill.steps import TrainingStep

IGNORE_INDEX = -100


def split_prompts(input_ids: Tensor, labels: Tensor, attention_mask: Tensor) -> list[list[int]]:
    """Each row's prompt: its tokens up to and including the one that predicts the first target.

    With shifted labels (``labels[t] == input_ids[t + 1]`` where counted), the first counted
    label at position ``t₀`` means the response starts at ``t₀ + 1``: the prompt is
    ``input_ids[:t₀ + 1]``. A row without targets keeps all its tokens as the prompt.

    Args:
        input_ids: ``[B, L]``, right-padded.
        labels: ``[B, L]``, shifted, ``-100`` where nothing counts.
        attention_mask: ``[B, L]``, 1 on real tokens.
    """
    prompts = []
    for ids, row_labels, mask in zip(input_ids.tolist(), labels.tolist(), attention_mask.tolist(), strict=True):
        length = int(sum(mask))
        targets = [t for t, label in enumerate(row_labels[:length]) if label != IGNORE_INDEX]
        prompts.append(ids[: targets[0] + 1] if targets else ids[:length])
    return prompts


def response_batch(prompts: list[list[int]], responses: list[tuple[list[int], bool]], *, pad_token_id: int,
                   eos_token_id: int | None, device: torch.device) -> dict[str, Any]:
    """A text batch of prompt + response rows whose targets are the responses (and their EOS).

    Returns:
        ``{"inputs": {"input_ids", "attention_mask"}, "labels", "loss_mask"}``, all ``[B, L]``,
        right-padded, labels shifted as :mod:`datamodules.text` builds them.
    """
    rows = []
    for prompt, (tokens, ended) in zip(prompts, responses, strict=True):
        answer = tokens + ([eos_token_id] if ended and eos_token_id is not None else [])
        rows.append((prompt + answer, len(prompt)))
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(rows):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        labels[row, prompt_length - 1: len(ids) - 1] = torch.tensor(ids[prompt_length:], dtype=torch.long)
    return {"inputs": {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)},
            "labels": labels.to(device), "loss_mask": (labels != IGNORE_INDEX).to(device)}


@dataclass(frozen=True)
class Answer:
    """One sampled answer, with what rebuilds its training row (also from a replay buffer).

    Attributes:
        prompt: the prompt's student token ids (special prefix included).
        tokens: the answer's token ids (without EOS).
        ended: whether the answer ended with EOS (then EOS is a target).
        prompt_text: the prompt's text (two tokenizers only; None otherwise).
        text: the answer's text as decoded after its prompt (two tokenizers only).
    """

    prompt: list[int]
    tokens: list[int]
    ended: bool
    prompt_text: str | None = None
    text: str | None = None


def _retokenizing_datamodule(module: L.LightningModule, batch: dict[str, Any]) -> Any:
    """The datamodule that encodes answers for both tokenizers; a one-line error if there is none."""
    data = getattr(module.trainer, "datamodule", None)
    texts = batch.get("prompts")
    if not callable(getattr(data, "retokenize", None)) or texts is None:
        raise ConfigError("OnPolicyStep: a batch with per-side inputs needs a datamodule that can retokenize "
                          "answers for both sides (datamodules.CrossTokenizerDataModule)")
    if any(text is None for text in texts):
        raise ConfigError("OnPolicyStep: the batch holds plain-text documents; on-policy distillation needs "
                          "prompt/response pairs (JSONL with prompt and response fields)")
    return data


def answer_text(tokenizer: Any, prompt: list[int], answer: list[int]) -> str:
    """The text an answer adds after its prompt, as the tokenizer decodes them together.

    Decoding the answer alone can lose what depends on its context (a SentencePiece tokenizer
    drops the leading space of a first word), so this decodes prompt and prompt + answer and keeps
    the difference; if the prompt's decoding is not a prefix of the whole, the answer alone.
    """
    whole = tokenizer.decode(prompt + answer, skip_special_tokens=True)
    head = tokenizer.decode(prompt, skip_special_tokens=True)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(answer, skip_special_tokens=True)


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. base seed, step, micro-batch, rank)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class OnPolicyStep(TrainingStep):
    """Replace a batch's responses by the student's samples with probability ``student_fraction``.

    Args:
        student_fraction: GKD's λ, the probability that a step trains on the student's own
            answers (1 = always on-policy, 0 = the data's responses only).
        max_new_tokens: tokens sampled per answer at most.
        temperature: sampling temperature of the student's answers (GKD samples at 1).
        top_p: nucleus sampling mass (1 = off).
        seed: base of the per-step coin and sampling seeds.
        pad_token_id: id padding the new batch; None takes the datamodule tokenizer's.
        eos_token_id: id that ends an answer; None takes the datamodule tokenizer's.
    """

    def __init__(self, student_fraction: float = 0.5, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int = 0, pad_token_id: int | None = None,
                 eos_token_id: int | None = None) -> None:
        super().__init__()
        if not 0 <= student_fraction <= 1:
            raise ConfigError(f"OnPolicyStep.student_fraction: must be in [0, 1], got {student_fraction}")
        self.student_fraction = student_fraction
        self.options = SamplingOptions(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.seed = seed
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

    def attach(self, module: L.LightningModule) -> None:
        hf_generator(module.student, "OnPolicyStep (model.init_args.student)")

    def on_policy(self, step: int) -> bool:
        """Whether optimizer step ``step`` trains on the student's samples (the same on every rank)."""
        coin = torch.Generator().manual_seed(derived_seed(self.seed, step, "coin"))
        return bool(torch.rand((), generator=coin) < self.student_fraction)

    def _token_ids(self, module: L.LightningModule) -> tuple[int, int | None]:
        tokenizer = getattr(getattr(module.trainer, "datamodule", None), "tokenizer", None)
        pad = self.pad_token_id if self.pad_token_id is not None else getattr(tokenizer, "pad_token_id", None)
        eos = self.eos_token_id if self.eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
        if pad is None:
            raise ConfigError("OnPolicyStep.pad_token_id: the datamodule has no tokenizer with a pad token; "
                              "set pad_token_id (and eos_token_id) on the step")
        return pad, eos

    def _draw(self, module: L.LightningModule, prompts: list[list[int]], pad: int, eos: int | None,
              batch_idx: int, device: torch.device) -> list[tuple[list[int], bool]]:
        """One sampled answer per prompt from the student (no_grad, eval mode, seeded per step)."""
        model = hf_generator(module.student, "OnPolicyStep (model.init_args.student)")
        was_training = model.training
        model.eval()
        rank = getattr(module.trainer, "global_rank", 0)
        # Seeded per (step, micro-batch, rank) inside a forked generator: the draw is the same after
        # a resume and the training's own randomness (dropout) is untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(derived_seed(self.seed, module.global_step, batch_idx, rank, "sample"))
            drawn = sample_responses(model, prompts, self.options, pad_token_id=pad, eos_token_id=eos)
        model.train(was_training)
        return [responses[0] for responses in drawn]

    def student_answers(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int = 0) -> list[Answer]:
        """The student's sampled answer to each prompt of ``batch`` (drawn under no_grad, in eval mode)."""
        cross = "student_inputs" in batch or "teacher_inputs" in batch
        inputs = batch["student_inputs"] if cross else batch["inputs"]
        prompts = split_prompts(inputs["input_ids"], batch["labels"], inputs["attention_mask"])
        device = inputs["input_ids"].device
        if not cross:
            pad, eos = self._token_ids(module)
            drawn = self._draw(module, prompts, pad, eos, batch_idx, device)
            return [Answer(prompt, tokens, ended) for prompt, (tokens, ended) in zip(prompts, drawn, strict=True)]
        data = _retokenizing_datamodule(module, batch)
        pad = self.pad_token_id if self.pad_token_id is not None else data.pad_token_id
        eos = self.eos_token_id if self.eos_token_id is not None else data.student_eos_token_id
        drawn = self._draw(module, prompts, pad, eos, batch_idx, device)
        return [Answer(prompt, tokens, ended, text, answer_text(data.student_tokenizer, prompt, tokens))
                for prompt, (tokens, ended), text in zip(prompts, drawn, batch["prompts"], strict=True)]

    def answers_batch(self, module: L.LightningModule, answers: list[Answer], device: torch.device) -> dict[str, Any]:
        """A training batch whose targets are ``answers``.

        One tokenizer: prompt + answer token ids (:func:`response_batch`). Two tokenizers: the
        answers' texts encoded for both sides by the datamodule's ``retokenize``.
        """
        if answers[0].prompt_text is None:
            pad, eos = self._token_ids(module)
            return response_batch([a.prompt for a in answers], [(a.tokens, a.ended) for a in answers],
                                  pad_token_id=pad, eos_token_id=eos, device=device)
        new = module.trainer.datamodule.retokenize([a.prompt_text for a in answers], [a.text for a in answers],
                                                   [a.ended for a in answers])
        return move_data_to_device(new, device)

    def student_batch(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        """``batch`` with its responses replaced by the student's samples."""
        device = (batch["student_inputs"] if "student_inputs" in batch else batch["inputs"])["input_ids"].device
        return self.answers_batch(module, self.student_answers(module, batch, batch_idx), device)

    def training_step(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int) -> Tensor:
        on_policy = self.on_policy(module.global_step)
        if on_policy:
            batch = self.student_batch(module, batch, batch_idx)
        result = module.distillation_loss(batch)
        if result.logging:
            module.log("train/on_policy", float(on_policy), on_step=True, on_epoch=False)
        return result.weighted_total
