"""Samples and batches of :mod:`datamodules.cross_tokenizer`: one student, one or more teachers.

A sample is ``{"student": tokens, "pairs": [pair per teacher], "text", "prompt"}`` where ``tokens``
is ``{"input_ids", "labels", "byte_offsets"}`` (one side's tokenization of the sample text) and a
pair is ``{"teacher": tokens, "chunks", "counted"}``: the teacher's tokens and the ALM chunks that
align them with the student's. ``sample["teacher"]``, ``sample["chunks"]`` and ``sample["counted"]``
are the first pair's, for the one-teacher layout.

:class:`CrossTokenizerCollator` pads and builds the batch layout documented in
:mod:`datamodules.cross_tokenizer`: one unnamed teacher fills the top-level ``teacher_*`` /
``alm_*`` keys; named teachers (``teacher_tokenizer: {name: path, ...}``) each get their tokens in
``teacher_inputs`` as ``<name>_input_ids`` / ``<name>_attention_mask`` and their pair's keys, under
the same names, in ``batch["teachers"][name]`` (:data:`lit_distill.sources.TEACHER_PAIR_KEYS`).
"""

from __future__ import annotations

import torch

from datamodules.alignment import byte_chunks, chunk_matrices, chunk_start_mask, starts_with_space
from datamodules.text import IGNORE_INDEX

NO_OFFSET = (-1, -1)
Built = tuple[list[int], list[bool], list[tuple[int, int]]]  # ids, is_target, byte offsets of one side


def align(data: bytes, sides: list[Built], variant: str) -> tuple[list[tuple[list[int], list[int]]], list[bool]]:
    """ALM chunks of one sample as input positions per side (student, teacher), and whether each counts."""
    real = [[k for k, o in enumerate(offs) if o != NO_OFFSET] for _, _, offs in sides]
    spans = [[offs[k] for k in idx] for idx, (_, _, offs) in zip(real, sides, strict=True)]
    flags = [starts_with_space(data, sp) for sp in spans]
    chunks = byte_chunks(spans[0], spans[1], flags[0], flags[1], variant=variant)
    positions, counted = [], []
    for (j0, j1), (i0, i1) in chunks:
        s_pos, t_pos = real[0][j0:j1], real[1][i0:i1]
        positions.append((s_pos, t_pos))
        counted.append(all(map(sides[0][1].__getitem__, s_pos))
                       and all(map(sides[1][1].__getitem__, t_pos)))
    return positions, counted


def to_tokens(side: Built) -> dict[str, torch.Tensor]:
    """One side's ids, shifted labels (-100 where no target) and byte offsets as tensors."""
    ids, tgt, offs = side
    labels = [ids[t + 1] if tgt[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels + [IGNORE_INDEX], dtype=torch.long),
        "byte_offsets": torch.tensor(offs, dtype=torch.long).reshape(len(ids), 2),
    }


def make_sample(data: bytes, student: Built, teachers: list[Built], variant: str, text: str,
                prompt: str | None) -> dict:
    """A sample (module docstring) from the built sides of its text ``data``."""
    pairs = []
    for teacher in teachers:
        chunks, counted = align(data, [student, teacher], variant)
        pairs.append({"teacher": to_tokens(teacher), "chunks": chunks, "counted": counted})
    first = pairs[0]
    return {"student": to_tokens(student), "pairs": pairs, "teacher": first["teacher"], "chunks": first["chunks"],
            "counted": first["counted"], "text": text, "prompt": prompt}


def _pad(tokens: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad one side's samples: ``input_ids``, ``attention_mask``, ``labels`` ``[B, L]``, offsets ``[B, L, 2]``."""
    n = max(len(t["input_ids"]) for t in tokens)
    ids = torch.full((len(tokens), n), pad_id, dtype=torch.long)
    labels = torch.full((len(tokens), n), IGNORE_INDEX, dtype=torch.long)
    att = torch.zeros((len(tokens), n), dtype=torch.long)
    offs = torch.full((len(tokens), n, 2), -1, dtype=torch.long)
    for b, t in enumerate(tokens):
        k = len(t["input_ids"])
        ids[b, :k], labels[b, :k], att[b, :k], offs[b, :k] = t["input_ids"], t["labels"], 1, t["byte_offsets"]
    return {"input_ids": ids, "attention_mask": att, "labels": labels, "byte_offsets": offs}


class CrossTokenizerCollator:
    """Right-pad every side to its longest sample and build the batch of :mod:`datamodules.cross_tokenizer`.

    Args:
        student_pad_token_id: the student's pad id.
        teacher_pad_token_ids: per teacher, in the samples' pair order, its pad id.
        teacher_names: None for one unnamed teacher (top-level keys), else the teachers' names.
        space_masks: ``{"student": [Vs], <teacher name or "teacher">: [Vt]}`` word-start masks.
    """

    def __init__(self, student_pad_token_id: int, teacher_pad_token_ids: list[int],
                 teacher_names: list[str] | None = None, space_masks: dict[str, torch.Tensor] | None = None):
        self.student_pad = student_pad_token_id
        self.teacher_pads = list(teacher_pad_token_ids)
        self.names = teacher_names
        self.space_masks = space_masks or {}

    def __call__(self, samples: list[dict]) -> dict:
        student = _pad([s["student"] for s in samples], self.student_pad)
        batch: dict = {"student_inputs": {"input_ids": student["input_ids"], "attention_mask": student["attention_mask"]},
                       "labels": student["labels"], "loss_mask": student["labels"] != IGNORE_INDEX,
                       "student_byte_offsets": student["byte_offsets"],
                       "prompts": [s.get("prompt") for s in samples]}
        if "student" in self.space_masks:
            batch["student_space_mask"] = self.space_masks["student"]
        pairs = [self._pair(samples, i, student["input_ids"].shape[1]) for i in range(len(self.teacher_pads))]
        if self.names is None:
            inputs, keys = pairs[0]
            batch.update(teacher_inputs=inputs, **keys)
            if "teacher" in self.space_masks:
                batch["teacher_space_mask"] = self.space_masks["teacher"]
            return batch
        batch["teacher_inputs"], batch["teachers"] = {}, {}
        for name, (inputs, keys) in zip(self.names, pairs, strict=True):
            batch["teacher_inputs"].update({f"{name}_{key}": value for key, value in inputs.items()})
            if name in self.space_masks:
                keys["teacher_space_mask"] = self.space_masks[name]
            batch["teachers"][name] = keys
        return batch

    def _pair(self, samples: list[dict], i: int, student_len: int) -> tuple[dict, dict]:
        """Teacher ``i``'s model inputs and its pair keys (teacher targets, offsets, ALM chunks)."""
        teacher = _pad([s["pairs"][i]["teacher"] for s in samples], self.teacher_pads[i])
        a_s, a_t, mask = chunk_matrices([(s["pairs"][i]["chunks"], s["pairs"][i]["counted"]) for s in samples],
                                        student_len, teacher["input_ids"].shape[1])
        keys = {"teacher_labels": teacher["labels"], "teacher_loss_mask": teacher["labels"] != IGNORE_INDEX,
                "teacher_byte_offsets": teacher["byte_offsets"], "alm_student_chunks": a_s,
                "alm_teacher_chunks": a_t, "alm_chunk_mask": mask,
                "student_chunk_start_mask": chunk_start_mask(a_s, mask),
                "teacher_chunk_start_mask": chunk_start_mask(a_t, mask)}
        return {"input_ids": teacher["input_ids"], "attention_mask": teacher["attention_mask"]}, keys
