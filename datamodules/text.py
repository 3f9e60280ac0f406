"""Causal-LM text data: plain-text documents and prompt/response pairs.

Every train/val/test batch is a dict (``B`` = batch size, ``L`` = longest sample in the batch, or
``max_length`` when packing)::

    {
        "inputs": {
            "input_ids":      LongTensor[B, L],  # right-padded with the pad id
            "attention_mask": LongTensor[B, L],  # 1 = real token, 0 = padding
        },
        "labels":    LongTensor[B, L],  # ALREADY SHIFTED: labels[b, t] == input_ids[b, t + 1], or -100
        "loss_mask": BoolTensor[B, L],  # == labels != -100
    }

``labels[b, t]`` is -100 where position ``t`` predicts nothing that counts: padding, the last
position of a sample, prompt tokens (the loss of a prompt/response pair is on the response tokens
and the final EOS only) and, when packing, document boundaries: the last token of a document
never predicts the first token of the next one. Attention is *not* blocked between packed
documents and positions are not reset (standard GPT-style packing). The attention mask comes from
the sample lengths, never from ``input_ids != pad_id``, so a pad token equal to EOS is safe.

Tokenization: texts are encoded without special tokens, then the tokens the tokenizer itself
prepends (e.g. a Llama BOS; nothing for GPT-2 style or :mod:`datamodules.tokenizer_training`
tokenizers) are put in front of every document/prompt, and EOS is appended when ``add_eos``.
Documents longer than ``max_length`` become consecutive windows that overlap by one token, so every
next-token target of the document is predicted exactly once (nothing is truncated). Packing uses
the same stride on the concatenation of all documents and keeps full ``max_length`` blocks only;
the incomplete tail is dropped unless it is the only block (then it is padded).
"""

from __future__ import annotations

from typing import Literal

import torch

from datamodules.records import Record, RecordsDataModule
from datamodules.tokenizer_training import load_tokenizer
from lit_distill.errors import ConfigError

IGNORE_INDEX = -100
Sample = dict[str, torch.Tensor]  # {"input_ids": LongTensor[n], "labels": LongTensor[n]}


def special_prefix(tok) -> list[int]:
    """Ids the tokenizer prepends on its own when encoding (e.g. BOS), found by probing."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a")["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i]
    return []


def _windows(ids: list[int], tgt: list[bool], size: int) -> list[tuple[list[int], list[bool]]]:
    """Split into windows of ``size`` tokens overlapping by one (each target appears once)."""
    return [
        (ids[s : s + size], tgt[s : s + size]) for s in range(0, max(len(ids) - 1, 1), size - 1)
    ]


def _to_sample(ids: list[int], tgt: list[bool]) -> Sample:
    """Sample with shifted labels; ``tgt[i]`` says whether token ``i`` is a counted target."""
    labels = [ids[t + 1] if tgt[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels + [IGNORE_INDEX])}


def encode_records(
    records: list[Record], tok, max_length: int, pack: bool, add_eos: bool
) -> tuple[list[Sample], int]:
    """Tokenize records into samples; also return the number of skipped pairs.

    A pair is truncated to ``max_length`` and skipped when no response target survives.
    """
    prefix, eos = special_prefix(tok), [tok.eos_token_id] if add_eos else []
    texts = [t for r in records for t in ((r,) if isinstance(r, str) else r)]
    encoded = iter(tok(texts, add_special_tokens=False)["input_ids"]) if texts else iter(())
    seqs, skipped = [], 0
    for rec in records:
        if isinstance(rec, str):
            ids = prefix + next(encoded) + eos
            tgt = [True] * len(ids)
        else:
            head, response = prefix + next(encoded), next(encoded) + eos
            ids = (head + response)[:max_length]
            tgt = ([False] * len(head) + [True] * len(response))[:max_length]
            if not any(tgt[1:]):
                skipped += 1
                continue
        if ids:
            tgt[0] = False  # a record's first token is never a target (no cross-document loss)
            seqs.append((ids, tgt))
    if pack:
        stream = [x for ids, _ in seqs for x in ids], [x for _, tgt in seqs for x in tgt]
        chunks = _windows(*stream, max_length)
        if len(chunks) > 1 and len(chunks[-1][0]) < max_length:
            chunks.pop()  # drop the incomplete tail block
    else:
        chunks = [w for ids, tgt in seqs for w in _windows(ids, tgt, max_length)]
    samples = [_to_sample(ids, tgt) for ids, tgt in chunks if any(tgt[1:])]
    return samples, skipped


class PadCollator:
    """Right-pad samples to the longest one (or to ``pad_to``) and build the batch contract."""

    def __init__(self, pad_token_id: int, pad_to: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to

    def __call__(self, samples: list[Sample]) -> dict:
        length = self.pad_to or max(len(s["input_ids"]) for s in samples)
        shape = (len(samples), length)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[i, :n], labels[i, :n], attention_mask[i, :n] = s["input_ids"], s["labels"], 1
        return {
            "inputs": {"input_ids": input_ids, "attention_mask": attention_mask},
            "labels": labels,
            "loss_mask": labels != IGNORE_INDEX,
        }


class TextDataModule(RecordsDataModule):
    """Plain-text and prompt/response JSONL data for causal-LM distillation.

    Batches follow the contract in the :mod:`datamodules.text` module docstring.

    Args:
        tokenizer: A directory that ``AutoTokenizer.from_pretrained`` can load, a
            ``tokenizer.json`` file, or a Hugging Face hub id (from the local cache when offline).
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
        max_length: Maximum sequence length in tokens; longer documents are split into windows,
            longer pairs are truncated (and skipped, with a warning, if no response is left).
        pack: Concatenate documents (EOS-separated) into full ``max_length`` blocks.
        add_eos: Append the tokenizer's EOS token to every document and response.
        pad_token: Pad token to use (added to the vocabulary if missing); required when the
            tokenizer has none, e.g. the EOS token.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes.
        seed: Seed of the train/val split and of the training shuffle order.
        shuffle: Shuffle the training samples (seeded). False keeps file order, e.g. to compare
            runs across world sizes.
    """

    def __init__(
        self,
        tokenizer: str,
        train_path: str,
        val_path: str | None = None,
        val_fraction: float = 0.1,
        format: Literal["auto", "text", "jsonl"] = "auto",
        text_field: str = "text",
        prompt_field: str = "prompt",
        response_field: str = "response",
        max_length: int = 256,
        pack: bool = False,
        add_eos: bool = True,
        pad_token: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.check_paths()
        self.tokenizer = load_tokenizer(tokenizer, pad_token)
        if add_eos and self.tokenizer.eos_token_id is None:
            raise ConfigError(
                f"tokenizer {tokenizer!r} has no EOS token; set data.init_args.add_eos=false"
            )

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (``len(tokenizer)``)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """Id used to pad ``input_ids``."""
        return self.tokenizer.pad_token_id

    def _build(self, records: list[Record], where: str, split: str) -> list[Sample]:
        """Tokenize one split; error naming ``where`` if it ends up empty."""
        hp = self.hparams
        samples, skipped = encode_records(
            records, self.tokenizer, hp.max_length, hp.pack, hp.add_eos
        )
        self.num_skipped[split] = skipped
        if not samples:
            raise ConfigError(
                f"no {split} samples from {where} ({len(records)} documents/records, {skipped} "
                "pairs skipped because truncation left no response token)"
            )
        return samples

    def collate_fn(self) -> PadCollator:
        """Pads to the longest sample (to ``max_length`` when packing)."""
        return PadCollator(self.pad_token_id, self.hparams.max_length if self.hparams.pack else None)
