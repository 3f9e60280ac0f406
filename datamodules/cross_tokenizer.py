"""Text data tokenized by two tokenizers (student and teacher) for cross-tokenizer distillation.

Every sample is one plain-text document piece or one prompt/response pair, encoded by both
tokenizers from the *same* raw text (no packing). Every train/val/test batch is a dict
(``B`` = batch size, ``Ls``/``Lt`` = longest student/teacher sample in the batch, ``C`` = most
ALM chunks of a sample in the batch, at least 1)::

    {
        "student_inputs": {
            "input_ids":      LongTensor[B, Ls],  # right-padded with the student pad id
            "attention_mask": LongTensor[B, Ls],  # 1 = real token, 0 = padding
        },
        "teacher_inputs": {
            "input_ids":      LongTensor[B, Lt],  # right-padded with the teacher pad id
            "attention_mask": LongTensor[B, Lt],
        },
        "labels":            LongTensor[B, Ls],  # ALREADY SHIFTED: input_ids[b, t + 1] or -100
        "loss_mask":         BoolTensor[B, Ls],  # labels != -100
        "teacher_labels":    LongTensor[B, Lt],  # the same for the teacher's tokens
        "teacher_loss_mask": BoolTensor[B, Lt],
        "student_byte_offsets": LongTensor[B, Ls, 2],  # (start, end) in the sample text's bytes
        "teacher_byte_offsets": LongTensor[B, Lt, 2],  # (-1, -1): padding / special tokens
        "alm_student_chunks":   BoolTensor[B, Ls, C],  # position t predicts a token of chunk c
        "alm_teacher_chunks":   BoolTensor[B, Lt, C],
        "alm_chunk_mask":       BoolTensor[B, C],      # chunk c counts in the ALM loss
        "student_chunk_start_mask": BoolTensor[B, Ls],  # predicts the first token of a counted chunk
        "teacher_chunk_start_mask": BoolTensor[B, Lt],  # (ULD's byte alignment)
        "prompts": list[str | None],  # each pair's prompt text (None: a document piece)
        "student_space_mask": BoolTensor[len(student tokenizer)],  # token starts a word (ALM
        "teacher_space_mask": BoolTensor[len(teacher tokenizer)],  #   debiasing), per vocab id
    }

**Several teachers** (``teacher_tokenizer: {a: ..., b: ...}``, a ``MultiModel`` teacher with
members ``a`` and ``b``): each teacher is aligned with the student on its own. ``teacher_inputs``
holds ``<name>_input_ids`` / ``<name>_attention_mask`` per teacher (route them with
``MultiModel.inputs``), and ``batch["teachers"][name]`` holds that teacher's ``teacher_labels``,
``teacher_loss_mask``, ``teacher_byte_offsets``, ``alm_student_chunks``, ``alm_teacher_chunks``,
``alm_chunk_mask``, ``student_chunk_start_mask``, ``teacher_chunk_start_mask`` and
``teacher_space_mask`` (the keys above, same meaning, for this pair); the top-level teacher keys are
absent. ``ULD(teacher: a)`` / ``ALM(teacher: a)`` read one teacher's logits and keys.

**Targets.** As in :mod:`datamodules.text`, labels are -100 on padding, the last position, the
first token of a sample and prompt tokens: plain text counts every next-token target, a pair only
its response tokens and the final EOS (or, with a chat template, the template text that follows
the response, e.g. the end-of-turn marker). The attention mask comes from the sample lengths.

**Sample text and byte offsets.** The offsets index the UTF-8 bytes of the sample's raw text:
the document piece, or ``prompt + response`` (concatenated, nothing in between) for a pair.
Both sides use the same raw text, so equal offsets mean the same bytes. Tokens that are not part
of that text — the tokenizer's own prefix (e.g. BOS), EOS, padding and chat-template text — get
``(-1, -1)``. A token's start/end come from the tokenizer's character offsets converted to bytes
(see :mod:`datamodules.alignment`); a prepended ``"▁"`` that stands for no text gets an empty span.

**Tokenization.** Texts are encoded without special tokens; the tokens the tokenizer prepends
on its own (found by probing, as in :mod:`datamodules.text`) go in front of every sample and EOS
(when the tokenizer has one) ends every document and response. A pair's prompt and response
are encoded separately, so a token never straddles the two.

**Long documents** are cut in the *text*, not in tokens: into consecutive pieces (at the start
of a whitespace run when possible, else at a character) that fit ``max_length`` tokens in *both*
tokenizations, so both sides always cover the same bytes. Every piece is encoded on its own
(its first token is not a target; only the last piece gets EOS). A piece that has no target on
one side (e.g. whitespace only) is dropped.

**Pairs** whose response does not fit ``max_length`` (or is empty) on *either* side are skipped,
counted in :attr:`CrossTokenizerDataModule.num_skipped` and reported in one warning.

**Retokenising generated answers** (on-policy distillation across tokenizers):
:meth:`CrossTokenizerDataModule.retokenize` encodes prompt + response texts exactly as the data's
pairs are encoded and collates them into this batch layout; ``prompts`` carries the prompt texts
that an on-policy step answers. A response that did not end (no EOS sampled) gets no EOS target.

**Chat templates.** With ``student_chat_template`` / ``teacher_chat_template`` and a tokenizer
that has a chat template, that side renders the pair as a user/assistant conversation. The
template is rendered once with placeholder contents and split at them into
``head + prompt + middle + response + tail``; each of the five parts is encoded on its own and
concatenated, so the response tokens are exactly those of the response part (loss on them and
on ``tail``). The template's own text (including any system prompt it injects) is seen by that
side only and has offsets ``(-1, -1)``; the template must insert the contents verbatim.
Plain-text documents never use the template.

**ALM chunks** (computed here on the CPU; shifted convention): :func:`~datamodules.alignment.
byte_chunks` aligns the two token sequences of a sample (special/template tokens excluded) by
byte position. ``alm_student_chunks[b, t, c]`` is True when input token ``t + 1`` — the target
``labels[b, t]`` — belongs to chunk ``c`` (same for the teacher), so a chunk's log-likelihood is
``(logp_at_labels[b, :, None] * alm_student_chunks[b]).sum(0)``. Chunks that contain a prompt
or non-target token on either side are still present but ``alm_chunk_mask`` is False for them;
within a counted chunk every True position has a counted label. Use ``labels.clamp_min(0)``
before gathering, and weight by ``alm_chunk_mask``.

**Chunk starts** (``*_chunk_start_mask``): the positions that predict the first token of each
counted chunk. Both models have then read exactly the same bytes, and the i-th True position
on each side belongs to the i-th counted chunk: ULD's ``alignment: bytes`` pairs these instead
of the i-th answer tokens (see :func:`~datamodules.alignment.chunk_start_mask`).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from typing import Literal

import torch

from datamodules.alignment import space_token_mask
from datamodules.cross_tokenizer_batch import CrossTokenizerCollator, make_sample
from datamodules.cross_tokenizer_side import TokenizerSide, teacher_sides
from datamodules.records import Record, RecordsDataModule
from lit_distill.errors import ConfigError

_WORD_END = re.compile(r"(?<=\S)\s")


class CrossTokenizerDataModule(RecordsDataModule):
    """Plain-text and prompt/response data tokenized for a student and a teacher tokenizer.

    Batches follow the contract in the :mod:`datamodules.cross_tokenizer` module docstring.
    ``vocab_size`` and ``pad_token_id`` are the student's (the CLI links them into the student).

    Args:
        student_tokenizer: The student's tokenizer: a directory that
            ``AutoTokenizer.from_pretrained`` can load, a ``tokenizer.json`` file, or a Hugging
            Face hub id (from the local cache when offline).
        teacher_tokenizer: The teacher's tokenizer, in the same forms; or several teachers, each
            with its own tokenizer, as ``{name: tokenizer}`` (a ``MultiModel`` teacher whose
            members have these names): each is aligned with the student on its own, its inputs are
            ``teacher_inputs.<name>_input_ids`` / ``<name>_attention_mask`` and its targets and
            alignment ``batch.teachers.<name>.*`` (read by ``ULD(teacher: name)`` /
            ``ALM(teacher: name)``). Documents are cut so that every piece fits every tokenizer.
        train_path: A ``.txt``/``.jsonl`` file or a directory of them (searched recursively). In
            ``.txt`` files, documents are separated by blank lines.
        val_path: Validation file or directory. If None, ``val_fraction`` of the training
            documents are split off (seeded, document level).
        val_fraction: Fraction of training documents used for validation when ``val_path`` is None.
        format: ``auto`` (by extension: .txt = text, .jsonl = jsonl), ``text`` or ``jsonl``.
        text_field: JSONL key of plain-text records.
        prompt_field: JSONL key of the prompt; a record with both the prompt and response keys is
            a pair whose loss is on the response tokens only.
        response_field: JSONL key of the response.
        max_length: Maximum sequence length in tokens, on each side. Longer documents are cut
            (in the text) into pieces that fit both tokenizers; pairs that do not fit either side
            are skipped with a warning.
        student_pad_token: Pad token of the student tokenizer (added to its vocabulary if missing);
            required when it has none, e.g. its EOS token.
        teacher_pad_token: Pad token of the teacher tokenizer, likewise (with several teachers: one
            for all, or ``{name: token}``).
        student_chat_template: Render pairs with the student tokenizer's chat template (as a
            user/assistant conversation) when it has one.
        teacher_chat_template: The same for the teacher tokenizer(s).
        alignment: ALM chunking: ``unconstrained`` (minimal chunks: close at every byte position
            where both tokenizations have a token boundary) or ``space`` (close only there when
            the next token starts with whitespace on both sides).
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/val split and of the training shuffle order.
        shuffle: Shuffle the training samples (seeded). False keeps file order.
    """

    skip_reason = "whose response does not fit in max_length tokens on both sides or is empty"

    def __init__(
        self,
        student_tokenizer: str,
        teacher_tokenizer: str | dict[str, str],
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        format: Literal["auto", "text", "jsonl"] = "auto",
        text_field: str = "text",
        prompt_field: str = "prompt",
        response_field: str = "response",
        max_length: int = 256,
        student_pad_token: str | None = None,
        teacher_pad_token: str | dict[str, str] | None = None,
        student_chat_template: bool = False,
        teacher_chat_template: bool = False,
        alignment: Literal["unconstrained", "space"] = "unconstrained",
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        if alignment not in ("unconstrained", "space"):
            raise ConfigError(f"alignment must be 'unconstrained' or 'space', got {alignment!r}")
        self.check_paths()
        self.student = TokenizerSide("student", student_tokenizer, student_pad_token, student_chat_template)
        self.teachers = teacher_sides(teacher_tokenizer, teacher_pad_token, teacher_chat_template)
        #: the teachers' names (``teacher_tokenizer`` given as a dict), or None for one unnamed teacher
        self.teacher_names = list(self.teachers) if isinstance(teacher_tokenizer, dict) else None
        self.teacher = next(iter(self.teachers.values()))  # the (first) teacher
        self._space_masks: dict[str, torch.Tensor] | None = None
        self._budget = {}
        for side in self._sides:
            # every piece of a document keeps room for the prefix, EOS and one 4-byte character
            need = len(side.prefix) + len(side.eos) + 4
            if max_length < need:
                raise ConfigError(f"max_length must be at least {need} for the {side.name} "
                                  f"tokenizer, got {max_length}")
            self._budget[id(side)] = max_length - len(side.prefix) - len(side.eos)

    @property
    def _sides(self) -> list[TokenizerSide]:
        return [self.student, *self.teachers.values()]

    @property
    def vocab_size(self) -> int:
        """Number of student token ids, added tokens included (``len(student tokenizer)``)."""
        return len(self.student.tok)

    @property
    def pad_token_id(self) -> int:
        """Id used to pad the student's ``input_ids``."""
        return self.student.tok.pad_token_id

    @property
    def student_tokenizer(self):
        """The student's tokenizer (decodes the student's samples in on-policy steps)."""
        return self.student.tok

    @property
    def student_eos_token_id(self) -> int | None:
        """The student tokenizer's EOS id (ends the student's samples), or None."""
        return self.student.tok.eos_token_id

    @property
    def teacher_vocab_size(self) -> int:
        """Number of (the first) teacher's token ids, added tokens included."""
        return len(self.teacher.tok)

    @property
    def teacher_pad_token_id(self) -> int:
        """Id used to pad (the first) teacher's ``input_ids``."""
        return self.teacher.tok.pad_token_id

    # ------------------------------------------------------------------ encoding

    def _fits(self, text: str) -> bool:
        return all(side.count(text) <= self._budget[id(side)] for side in self._sides)

    def _pieces(self, doc: str) -> list[str]:
        """Cut a document into consecutive pieces that fit ``max_length`` on both sides.

        Token counts of candidate pieces are estimated from the whole document's tokenization
        (tokens inside the piece's bytes) and every chosen piece is checked by encoding it.
        """
        estimates, fits = [], True
        for side in self._sides:
            _, offs = side.encode(doc)  # byte offsets; compared with byte positions below
            fits &= len(offs) <= self._budget[id(side)]
            estimates.append(([s for s, _ in sorted(offs)], sorted(e for _, e in offs),
                              self._budget[id(side)]))
        if fits:
            return [doc]
        byte_pos = [0]
        for ch in doc:
            byte_pos.append(byte_pos[-1] + len(ch.encode("utf-8")))

        def estimate_fits(a: int, b: int, slack: int = 0) -> bool:
            lo, hi = byte_pos[a], byte_pos[b]
            return all(bisect_right(ends, hi) - bisect_left(starts, lo) <= budget + slack
                       for starts, ends, budget in estimates)

        cuts = [m.start() for m in _WORD_END.finditer(doc)]
        pieces, a = [], 0
        while a < len(doc):
            if estimate_fits(a, len(doc), slack=2) and self._fits(doc[a:]):
                pieces.append(doc[a:])
                break
            cands = cuts[bisect_right(cuts, a) :]
            k = -1  # last candidate whose estimated token counts fit
            for n, c in enumerate(cands):
                if not estimate_fits(a, c):
                    break
                k = n
            while k >= 0 and not self._fits(doc[a : cands[k]]):
                k -= 1
            if k >= 0:
                b = cands[k]
            else:  # no whitespace cut fits: cut inside the word at the longest fitting prefix
                lo, hi = a + 1, (cands[0] if cands else len(doc))
                if not self._fits(doc[a:lo]):
                    raise ConfigError(f"max_length={self.hparams.max_length} cannot hold the "
                                      f"character {doc[a]!r} in both tokenizations")
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    lo, hi = (mid, hi) if self._fits(doc[a:mid]) else (lo, mid - 1)
                b = lo
            pieces.append(doc[a:b])
            a = b
        return pieces

    def _sample(self, text: str, parts_of, prompt: str | None = None,
                empty_response: bool = False) -> tuple[dict | None, bool]:
        """Build one sample; returns ``(sample or None, response_lost)``.

        ``empty_response`` accepts a pair without response text (its only target is then EOS).
        """
        built = [side.build(parts_of(side)) for side in self._sides]
        lost = any(len(ids) > self.hparams.max_length or (n_text == 0 and not empty_response)
                   for ids, _, _, n_text in built)
        if lost or not all(any(tgt) for _, tgt, _, _ in built):
            return None, lost
        student, *teachers = (b[:3] for b in built)
        return make_sample(text.encode("utf-8"), student, teachers, self.hparams.alignment, text, prompt), False

    def encode_records(self, records: list[Record]) -> tuple[list[dict], int]:
        """Samples of ``records`` and the number of skipped pairs."""
        samples, skipped = [], 0
        for rec in records:
            if isinstance(rec, str):
                pieces = self._pieces(rec)
                for n, piece in enumerate(pieces):
                    last = n == len(pieces) - 1
                    sample, _ = self._sample(piece, lambda side, p=piece, e=last: side.document(p, e))
                    if sample is not None:
                        samples.append(sample)
                continue
            prompt, response = rec
            sample, lost = self._sample(
                prompt + response, lambda side, p=prompt, r=response: side.pair(p, r), prompt
            )
            if sample is not None:
                samples.append(sample)
            skipped += lost or sample is None
        return samples, skipped

    def retokenize(self, prompts: list[str], responses: list[str], ended: list[bool]) -> dict:
        """A batch (this module's layout) of prompt + response texts encoded on both sides.

        For on-policy distillation across tokenizers: the student's sampled answers, decoded to
        text, become targets on both sides with byte-aligned masks and ALM chunks, as a data pair
        would. A response too long for ``max_length`` on either side is cut (in the text, from the
        end) until it fits, and then counts as not ended (no EOS target).

        Args:
            prompts: ``B`` prompt texts (as in the batch's ``prompts``).
            responses: ``B`` response texts.
            ended: per row, whether the response ended with EOS (then EOS is a target).

        Returns:
            The collated batch on the CPU.
        """
        samples = []
        for prompt, response, done in zip(prompts, responses, ended, strict=True):
            while True:
                sample, _ = self._sample(prompt + response, lambda side, p=prompt, r=response, e=done: side.pair(p, r, e),
                                         prompt, empty_response=True)
                if sample is not None or not response:
                    break
                response = response[: len(response) * 3 // 4]
                done = not response  # a cut answer has no EOS target, unless nothing is left but EOS
            if sample is None:
                raise ConfigError(f"retokenize: the prompt {prompt[:40]!r}... leaves no room for a response "
                                  f"within max_length={self.hparams.max_length} on both sides")
            samples.append(sample)
        return self.collate_fn()(samples)

    def _build(self, records: list[Record], where: str, split: str) -> list[dict]:
        samples, skipped = self.encode_records(records)
        self.num_skipped[split] = skipped
        if not samples:
            raise ConfigError(
                f"no {split} samples from {where} ({len(records)} documents/records, {skipped} "
                f"pairs skipped because their response does not fit max_length="
                f"{self.hparams.max_length} on both sides or is empty)"
            )
        return samples

    def collate_fn(self) -> CrossTokenizerCollator:
        """Pads each side to its longest sample and builds the alignment tensors."""
        if self._space_masks is None:  # one pass over each vocabulary, then shared by every batch
            names = self.teacher_names or ["teacher"]
            sides = {"student": self.student, **dict(zip(names, self.teachers.values(), strict=True))}
            self._space_masks = {name: torch.tensor(space_token_mask(side.tok), dtype=torch.bool)
                                 for name, side in sides.items()}
        return CrossTokenizerCollator(self.pad_token_id, [side.tok.pad_token_id for side in self.teachers.values()],
                                      self.teacher_names, self._space_masks)

