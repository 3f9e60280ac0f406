"""Vision-language data: LLaVA-format conversations and preference pairs, plus a digit-scene VQA builder.

Input files (JSON lists):

- LLaVA format (supervised): ``[{"image": "images/0.png", "conversations": [{"from": "human",
  "value": "<image>\\nIs there a 7?"}, {"from": "gpt", "value": "no"}, ...]}]``; the
  ``<image>`` tag (``image_tag``) appears once, in the first human turn.
- Preference pairs: ``[{"image": ..., "prompt": "<image>\\nIs there a 7?", "chosen": "no",
  "rejected": "yes"}]``.

Image paths are relative to the JSON file's directory (or absolute). Extra keys
(e.g. ``meta``) are ignored.

Rendering: a human turn is ``value + "\\n"`` with the tag replaced by
``num_image_tokens`` copies of the tokenizer's ``image_token``; a gpt turn is
``value`` followed by EOS. Texts are encoded without special tokens; the tokens
the tokenizer prepends by itself (e.g. a BOS) start the sequence.

Supervised batch (``B`` samples, ``L`` longest sequence)::

    {"inputs": {"input_ids": LongTensor[B, L], "attention_mask": LongTensor[B, L],
                "pixel_values": FloatTensor[B, 3, S, S]},
     "labels": LongTensor[B, L],     # ALREADY SHIFTED; -100 except where the next token is a gpt turn's
     "loss_mask": BoolTensor[B, L]}  # labels != -100

Preference batch (``P`` pairs → ``2P`` rows: the ``P`` chosen sequences, then the
``P`` rejected ones in the same order; see :mod:`lit_distill.losses.preference`)::

    {"inputs": {...as above, 2P rows...}, "labels": LongTensor[2P, L],
     "response_mask": BoolTensor[2P, L]}  # no loss_mask: the step is weighted per sequence

:func:`write_digit_vqa` builds a dataset from :mod:`datamodules.digit_scenes`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.checks import check_loader_arguments, read_utf8
from datamodules.records import EpochLoaders, epoch_loader
from datamodules.text import IGNORE_INDEX, special_prefix
from datamodules.tokenizer_training import load_tokenizer
from lit_distill.errors import ConfigError, MissingPathError

IMAGE_TAG = "<image>"
IMAGE_TOKEN_ID = 4  # id of the image token in tokenizers written by write_digit_vqa


def read_json_records(path: str, field: str) -> tuple[list[dict], Path]:
    """A JSON list of records and the directory image paths are relative to."""
    p = Path(path)
    if not p.is_file():
        raise MissingPathError(f"{field}: no JSON file '{path}'")
    try:
        records = json.loads(read_utf8(p, field))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{field}: '{path}' is not valid JSON ({err})") from err
    if not isinstance(records, list) or not records:
        raise ConfigError(f"{field}: '{path}' must hold a non-empty JSON list of records")
    return records, p.parent


def load_image(path: Path, size: int, mean: list[float], std: list[float]) -> Tensor:
    """``[3, size, size]`` float image, resized (bilinear) and normalised."""
    from PIL import Image

    with Image.open(path) as img:
        data = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
        w, h = img.size
    image = data.reshape(h, w, 3).permute(2, 0, 1).float() / 255.0
    if (h, w) != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class VLMDataModule(EpochLoaders, LightningDataModule):
    """LLaVA-format supervised data or preference pairs, with images, for VLM distillation.

    The kind of data (supervised or preference) is detected from the records
    (preference records have ``chosen``/``rejected``); both splits must be the same kind.
    Batches follow the contracts in the :mod:`datamodules.vlm` module docstring.

    Args:
        tokenizer: directory ``AutoTokenizer`` loads, a ``tokenizer.json`` or a hub id; must
            know ``image_token`` as one token.
        train_path: training JSON (LLaVA conversations or preference pairs).
        val_path: validation JSON of the same kind.
        image_token: the placeholder token the model replaces with image features.
        image_tag: the tag in the human text that marks where the image goes.
        num_image_tokens: placeholders per image (= image tokens the student's vision
            tower gives, e.g. 16 for a 64-pixel image and 16-pixel patches).
        image_size: side images are resized to.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        max_length: longest allowed sequence; longer samples are an error (nothing is truncated).
        pad_token: pad token to use when the tokenizer has none.
        batch_size: samples (supervised) or pairs (preference) per batch.
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle order.
        shuffle: shuffle the training samples.
    """

    def __init__(self, tokenizer: str, train_path: str, val_path: str, image_token: str = IMAGE_TAG,
                 image_tag: str = IMAGE_TAG, num_image_tokens: int = 16, image_size: int = 64,
                 mean: list[float] | None = None, std: list[float] | None = None, max_length: int = 256,
                 pad_token: str | None = None, batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_loader_arguments(batch_size, num_workers)
        if num_image_tokens < 1:
            raise ConfigError(f"data.init_args.num_image_tokens: must be >= 1, got {num_image_tokens}")
        for name in ("train_path", "val_path"):
            if not Path(self.hparams[name]).is_file():
                raise MissingPathError(f"data.init_args.{name}: no JSON file '{self.hparams[name]}'")
        self.mean = list(mean) if mean is not None else [0.5, 0.5, 0.5]
        self.std = list(std) if std is not None else [0.5, 0.5, 0.5]
        self.tokenizer = load_tokenizer(tokenizer, pad_token)
        ids = self.tokenizer(image_token, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ConfigError(f"data.init_args.image_token: '{image_token}' is not one token of the tokenizer "
                              f"(encodes to {ids}); add it as a special token")
        self.image_token_id = ids[0]
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(f"data.init_args.tokenizer: '{tokenizer}' has no EOS token")
        self.train_dataset: list[dict] | None = None
        self.val_dataset: list[dict] | None = None
        self.preference: bool | None = None

    @property
    def vocab_size(self) -> int:
        """Number of token ids (``len(tokenizer)``)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """Id used to pad ``input_ids``."""
        return self.tokenizer.pad_token_id

    # ------------------------------------------------------------ encoding
    def _encode_text(self, text: str) -> list[int]:
        """Token ids of a text where ``image_tag`` becomes ``num_image_tokens`` image tokens."""
        hp = self.hparams
        parts = text.split(hp.image_tag)
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i:
                ids += [self.image_token_id] * hp.num_image_tokens
            if part:
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
        return ids

    def encode_turns(self, turns: list[tuple[str, str]], where: str) -> dict[str, Tensor]:
        """``[(role, text), ...]`` (role ``human``/``gpt``) → ``input_ids`` ``[n]`` and shifted ``labels`` ``[n]``."""
        ids = list(special_prefix(self.tokenizer))
        target = [False] * len(ids)
        tags = 0
        for role, text in turns:
            if role == "human":
                tags += text.count(self.hparams.image_tag)
                piece = self._encode_text(text + "\n")
            elif role == "gpt":
                piece = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            else:
                raise ConfigError(f"{where}: unknown conversation role '{role}' (valid: human, gpt)")
            ids += piece
            target += [role == "gpt"] * len(piece)
        if tags != 1:
            raise ConfigError(f"{where}: needs exactly one '{self.hparams.image_tag}' in the human text, found {tags}")
        if len(ids) > self.hparams.max_length:
            raise ConfigError(f"{where}: {len(ids)} tokens exceed data.init_args.max_length="
                              f"{self.hparams.max_length}")
        if not any(target):
            raise ConfigError(f"{where}: has no gpt (response) turn")
        labels = [ids[t + 1] if target[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}

    def _image(self, root: Path, record: dict, where: str) -> Tensor:
        if "image" not in record:
            raise ConfigError(f"{where}: record has no 'image'")
        path = Path(record["image"])
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise MissingPathError(f"{where}: image '{path}' not found")
        return load_image(path, self.hparams.image_size, self.mean, self.std)

    def build_samples(self, path: str, field: str) -> tuple[list[dict], bool]:
        """Read and encode one JSON file; returns the samples and whether they are preference pairs."""
        records, root = read_json_records(path, field)
        preference = "chosen" in records[0]
        samples = []
        for i, rec in enumerate(records):
            where = f"{path}[{i}]"
            image = self._image(root, rec, where)
            if preference:
                if not all(k in rec for k in ("prompt", "chosen", "rejected")):
                    raise ConfigError(f"{where}: a preference record needs prompt, chosen and rejected")
                chosen = self.encode_turns([("human", rec["prompt"]), ("gpt", rec["chosen"])], where)
                rejected = self.encode_turns([("human", rec["prompt"]), ("gpt", rec["rejected"])], where)
                samples.append({"pixel_values": image, "chosen": chosen, "rejected": rejected})
            else:
                if "conversations" not in rec:
                    raise ConfigError(f"{where}: a LLaVA record needs 'conversations' (or prompt/chosen/rejected)")
                turns = [(t["from"], t["value"]) for t in rec["conversations"]]
                samples.append({"pixel_values": image, **self.encode_turns(turns, where)})
        return samples, preference

    # ------------------------------------------------------------ lightning
    def setup(self, stage: str | None = None) -> None:
        """Read, encode and load the images once (kept in memory)."""
        if self.train_dataset is not None:
            return
        self.train_dataset, train_pref = self.build_samples(self.hparams.train_path, "data.init_args.train_path")
        self.val_dataset, val_pref = self.build_samples(self.hparams.val_path, "data.init_args.val_path")
        if train_pref != val_pref:
            raise ConfigError("data.init_args.val_path: train and val data must both be LLaVA conversations "
                              "or both preference pairs")
        self.preference = train_pref

    def collate(self, samples: list[dict]) -> dict[str, Any]:
        """Pad and stack samples (or pairs) into the batch contract of this module."""
        if "chosen" in samples[0]:
            rows = [s["chosen"] for s in samples] + [s["rejected"] for s in samples]
            images = [s["pixel_values"] for s in samples] * 2
        else:
            rows, images = samples, [s["pixel_values"] for s in samples]
        length = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[i, :n], labels[i, :n], attention[i, :n] = r["input_ids"], r["labels"], 1
        batch = {"inputs": {"input_ids": input_ids, "attention_mask": attention,
                            "pixel_values": torch.stack(images)},
                 "labels": labels}
        batch["response_mask" if "chosen" in samples[0] else "loss_mask"] = labels != IGNORE_INDEX
        return batch

    def _loader(self, dataset: list[dict] | None, shuffle: bool) -> DataLoader:
        """Batches of ``dataset`` (see :func:`datamodules.records.epoch_loader`)."""
        return epoch_loader(self, dataset, shuffle, self.collate)


# ---------------------------------------------------------------- digit VQA
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
COUNT_QUESTION = "How many digits are there?"
CANDIDATES = {"count": ["1", "2", "3", "4"], "presence": ["yes", "no"],
              "position": [str(d) for d in range(10)]}


def scene_questions(objects: list, rng: random.Random) -> list[dict]:
    """Questions about one scene: a count, two presence questions (one present digit, one ABSENT
    digit: balanced yes/no) and, with two or more digits, a leftmost/rightmost question.

    Each is ``{"type", "question", "answer", "wrong", "digit"}`` (``wrong``: a plausible wrong
    answer, "yes" for an absent digit; ``digit``: the digit asked about, or None).
    """
    digits = sorted({o.digit for o in objects})
    count = len(objects)
    questions = [{"type": "count", "question": COUNT_QUESTION, "answer": str(count),
                  "wrong": str(rng.choice([c for c in range(1, 5) if c != count])), "digit": None}]
    present = rng.choice(digits)
    absent = rng.choice([d for d in range(10) if d not in digits])
    for digit, answer in ((present, "yes"), (absent, "no")):
        questions.append({"type": "presence", "question": f"Is there a {digit}?", "answer": answer,
                          "wrong": "no" if answer == "yes" else "yes", "digit": digit})
    if count >= 2:
        side = rng.choice(["left", "right"])
        ordered = sorted(objects, key=lambda o: o.center[1])
        target = ordered[0] if side == "left" else ordered[-1]
        others = [o.digit for o in objects if o.digit != target.digit] or \
            [d for d in range(10) if d != target.digit]
        questions.append({"type": "position", "question": f"Which digit is on the {side}?",
                          "answer": str(target.digit), "wrong": str(rng.choice(others)), "digit": target.digit})
    return questions


def _save_png(image: Tensor, path: Path) -> None:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    Image.frombuffer("RGB", (array.shape[1], array.shape[0]), bytes(array.flatten().tolist())).save(path)


def add_image_token(tokenizer_dir: Path, token: str = IMAGE_TAG, token_id: int = IMAGE_TOKEN_ID) -> None:
    """Insert ``token`` as a special token with id ``token_id`` into a trained tokenizer (ids above shift by one)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = {t: (i + 1 if i >= token_id else i) for t, i in vocab.items()}
    spec["model"]["vocab"][token] = token_id
    for added in spec["added_tokens"]:
        if added["id"] >= token_id:
            added["id"] += 1
    spec["added_tokens"].append({"id": token_id, "content": token, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    spec["added_tokens"].sort(key=lambda t: t["id"])
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  additional_special_tokens=[token])
    tok.save_pretrained(str(tokenizer_dir))


def write_digit_vqa(out_dir: str | Path, num_train: int = 600, num_val: int = 200, seed: int = 0,
                    canvas_size: int = 64, num_digits: tuple[int, int] = (1, 4),
                    digit_size: tuple[int, int] = (16, 28), vocab_size: int = 400,
                    image_first: bool = False) -> dict[str, Path]:
    """Write a digit-scene VQA dataset: PNGs, LLaVA JSON, preference JSON and a tokenizer.

    Train scenes use the ``train`` digit pool, validation scenes the held-out ``val`` pool.
    Every scene gives the questions of :func:`scene_questions` as separate single-turn records,
    each with ``meta`` (``type``, ``answer``, ``digit``, ``candidates``). The preference files pair
    the correct answer (chosen) with a wrong one (rejected; "yes" for absent digits).

    Args:
        out_dir: directory to write (``images/``, ``train.json``, ``val.json``,
            ``train_pairs.json``, ``val_pairs.json``, ``tokenizer/``).
        num_train: training scenes.
        num_val: held-out scenes.
        seed: seed of the scenes and questions.
        canvas_size: image side in pixels.
        num_digits: inclusive range of digits per scene (at most 9: one digit must be absent).
        digit_size: inclusive range of digit box sides.
        vocab_size: tokenizer vocabulary size before the image token is added.
        image_first: prompt ``"<image>\nQUESTION"`` instead of ``"QUESTION\n<image>"`` (LLaVA's
            data has both). With the question first, a causal LM's image tokens can already
            attend to what is asked, which small LMs trained from scratch learn much faster.

    Returns:
        Paths: ``train``, ``val``, ``train_pairs``, ``val_pairs``, ``tokenizer``.
    """
    from datamodules.digit_scenes import digit_pool, make_scenes
    from datamodules.tokenizer_training import train_tokenizer

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    texts: list[str] = []
    for split, count, split_seed in (("train", num_train, seed), ("val", num_val, seed + 7919)):
        scenes = make_scenes(count, digit_pool(split), split_seed, canvas_size=canvas_size,
                             num_digits=num_digits, digit_size=digit_size)
        rng = random.Random(split_seed)
        records, pairs = [], []
        for i, scene in enumerate(scenes):
            image = f"images/{split}_{i:05d}.png"
            _save_png(scene.image, out / image)
            for q in scene_questions(scene.objects, rng):
                prompt = f"{IMAGE_TAG}\n{q['question']}" if image_first else f"{q['question']}\n{IMAGE_TAG}"
                meta = {"type": q["type"], "answer": q["answer"], "digit": q["digit"],
                        "candidates": CANDIDATES[q["type"]], "scene": i}
                records.append({"image": image, "conversations": [{"from": "human", "value": prompt},
                                                                  {"from": "gpt", "value": q["answer"]}],
                                "meta": meta})
                pairs.append({"image": image, "prompt": prompt, "chosen": q["answer"], "rejected": q["wrong"],
                              "meta": meta})
                texts.append(f"{q['question']}\n{q['answer']}\n{q['wrong']}")
        for name, data in ((split, records), (f"{split}_pairs", pairs)):
            paths[name] = out / f"{name}.json"
            paths[name].write_text(json.dumps(data, indent=1))
    corpus = out / "tokenizer_corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    paths["tokenizer"] = train_tokenizer([corpus], out / "tokenizer", vocab_size=vocab_size)
    add_image_token(paths["tokenizer"])
    return paths
