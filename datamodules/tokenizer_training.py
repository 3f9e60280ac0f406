"""Train a small tokenizer offline with the ``tokenizers`` library, and load tokenizers.

The result is saved as a directory that ``transformers.AutoTokenizer.from_pretrained(out_dir)``
loads. Special tokens get fixed ids: ``<pad>`` = 0, ``<s>`` (BOS) = 1, ``</s>`` (EOS) = 2,
``<unk>`` = 3. No post-processor is installed, so encoding never adds BOS/EOS by itself (the data
module appends EOS explicitly).

Algorithms:

* ``"bpe"``: byte-level BPE (GPT-2 style; never produces ``<unk>``),
* ``"unigram"``: SentencePiece-style Unigram with Metaspace pre-tokenization,
* ``"wordpiece"``: BERT-style WordPiece (case preserved),

the last two mainly for cross-tokenizer distillation experiments.

Determinism: byte-level BPE training is bit-reproducible. The WordPiece trainer numbers the
``##x`` continuation characters in hash-map order, which changes how ties between equally frequent
merges are broken; we pre-register those tokens in sorted order (as trainer special tokens, removed
from the added-token list afterwards) to fix that. The Unigram trainer learns the same pieces on
every run, but its multithreaded EM adds ~1e-10 float noise to the scores and it hands the
lowest scores to leftover characters in hash-set order. :func:`_canonicalize` therefore renumbers
WordPiece/Unigram vocabularies (special tokens first, then sorted), gives those leftover-character
scores out in character order and rounds Unigram scores to ``1e-4``, which makes the saved files
identical across runs in practice.

:func:`load_tokenizer` loads any tokenizer (directory, ``tokenizer.json`` or hub id) the way
:class:`datamodules.TextDataModule` does, making sure it has a pad token.

Command line::

    python -m datamodules.tokenizer_training OUT_DIR FILE [FILE ...] [--vocab-size 1024]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lit_distill.errors import ConfigError
from lit_distill.models.hf_loading import HUB_ID

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
UNIGRAM_SCORE_DECIMALS = 4
WORDPIECE_PREFIX = "##"
_EXPECTED_TOK = (
    "expected a directory that AutoTokenizer.from_pretrained can load, a tokenizer.json file "
    "or a cached Hugging Face hub id"
)
def _continuation_tokens(files: list[Path]) -> list[str]:
    """Sorted ``##c`` tokens for every character that occurs inside a word (WordPiece only)."""
    pre = pre_tokenizers.BertPreTokenizer()
    chars: set[str] = set()
    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            for word, _ in pre.pre_tokenize_str(line):
                chars.update(word[1:])
    return [WORDPIECE_PREFIX + c for c in sorted(chars)]


def _build(
    algorithm: str, vocab_size: int, files: list[Path]
) -> tuple[Tokenizer, trainers.Trainer]:
    """Return an untrained tokenizer pipeline and its trainer for ``algorithm``."""
    if algorithm == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
    elif algorithm == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            unk_token=UNK,
            seed_size=20_000,  # plenty for small vocabularies; the 1M default is slow
            show_progress=False,
        )
    elif algorithm == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS + _continuation_tokens(files),
            continuing_subword_prefix=WORDPIECE_PREFIX,
            show_progress=False,
        )
    else:
        raise ValueError(
            f"unknown algorithm {algorithm!r}; expected 'bpe', 'unigram' or 'wordpiece'"
        )
    return tok, trainer


def _order_required_chars(scores: dict[str, float]) -> None:
    """Give the Unigram trainer's "required character" scores to characters in sorted order.

    Characters that did not become pieces on their own are appended by the trainer with scores
    about ``1e-4`` apart next to the minimum score, in hash-set order. That bottom run of single
    characters with gaps below ``1.5e-4`` gets the same scores, reassigned in character order
    (highest score to the smallest character).
    """
    ranked = sorted(scores.items(), key=lambda kv: kv[1])
    run = 0
    while run < len(ranked) and len(ranked[run][0]) == 1:
        if run and ranked[run][1] - ranked[run - 1][1] >= 1.5e-4:
            break
        run += 1
    if run > 1:
        chars = sorted(piece for piece, _ in ranked[:run])
        values = sorted((score for _, score in ranked[:run]), reverse=True)
        scores.update(zip(chars, values, strict=True))


def _canonicalize(tok: Tokenizer, algorithm: str) -> Tokenizer:
    """Renumber a trained WordPiece/Unigram vocabulary deterministically (BPE is returned as is).

    Special tokens keep ids ``0..3``; the other tokens are sorted by string. For WordPiece the ids
    do not affect segmentation; for Unigram the (rounded) scores do, the order does not.
    """
    if algorithm == "bpe":
        return tok
    spec = json.loads(tok.to_str())
    model = spec["model"]
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    if algorithm == "wordpiece":
        rest = sorted(t for t in model["vocab"] if t not in SPECIAL_TOKENS)
        model["vocab"] = {t: i for i, t in enumerate(SPECIAL_TOKENS + rest)}
    else:
        scores = {piece: score for piece, score in model["vocab"] if piece not in SPECIAL_TOKENS}
        _order_required_chars(scores)
        rest = sorted(scores)
        model["vocab"] = [[p, 0.0] for p in SPECIAL_TOKENS] + [
            [p, round(scores[p], UNIGRAM_SCORE_DECIMALS)] for p in rest
        ]
        model["unk_id"] = SPECIAL_TOKENS.index(UNK)
    return Tokenizer.from_str(json.dumps(spec))


def train_tokenizer(
    files: list[str | Path],
    out_dir: str | Path,
    vocab_size: int = 1024,
    algorithm: Literal["bpe", "unigram", "wordpiece"] = "bpe",
) -> Path:
    """Train a tokenizer on text files and save it in Hugging Face format.

    Args:
        files: Plain-text training files.
        out_dir: Directory to write ``tokenizer.json`` / ``tokenizer_config.json`` to.
        vocab_size: Target vocabulary size, special tokens included.
        algorithm: ``"bpe"`` (byte-level), ``"unigram"`` or ``"wordpiece"``.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`, loadable with ``AutoTokenizer.from_pretrained``.
    """
    from transformers import PreTrainedTokenizerFast

    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(f"tokenizer training files not found: {missing or 'none given'}")
    tok, trainer = _build(algorithm, vocab_size, paths)
    tok.train([str(p) for p in paths], trainer)
    tok = _canonicalize(tok, algorithm)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_tok.save_pretrained(str(out))
    return out


def load_tokenizer(path: str, pad_token: str | None = None):
    """Load a tokenizer and make sure it has a pad token.

    ``path`` is a local directory, a ``tokenizer.json`` file or, if no such path exists, a
    Hugging Face hub id (served from the local cache when offline). A ``pad_token`` that is not
    in the vocabulary is added as a new special token.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if p.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
    elif p.is_dir() or HUB_ID.fullmatch(path):
        try:  # a local directory or a cached hub id first, the network only for a hub id
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            if p.is_dir():
                raise ConfigError(f"cannot load tokenizer {path!r}; {_EXPECTED_TOK}") from err
            try:
                tok = AutoTokenizer.from_pretrained(path)
            except OSError as err2:
                raise FileNotFoundError(
                    f"cannot load tokenizer {path!r}; {_EXPECTED_TOK}"
                ) from err2
    else:
        raise FileNotFoundError(f"tokenizer path {path!r} does not exist; {_EXPECTED_TOK}")
    if pad_token is not None:
        if pad_token in tok.get_vocab():
            tok.pad_token = pad_token
        else:
            tok.add_special_tokens({"pad_token": pad_token})
    if tok.pad_token_id is None:
        hint = f"the EOS token {tok.eos_token!r}" if tok.eos_token else "a new token like '<pad>'"
        raise ConfigError(
            f"tokenizer {path!r} has no pad token; set data.init_args.pad_token (e.g. to {hint})"
        )
    return tok


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m datamodules.tokenizer_training OUT_DIR FILE...``."""
    parser = argparse.ArgumentParser(description="Train a small Hugging Face tokenizer offline.")
    parser.add_argument("out_dir")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--algorithm", choices=["bpe", "unigram", "wordpiece"], default="bpe")
    args = parser.parse_args(argv)
    out = train_tokenizer(args.files, args.out_dir, args.vocab_size, args.algorithm)
    print(f"saved {args.algorithm} tokenizer to {out}")


if __name__ == "__main__":
    main()
