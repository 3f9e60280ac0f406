"""LLaVA-MoD steps that are not a plain ``fit``: data, upcycling, pairs, held-out metrics.

Everything else is YAML (``configs/vlm/llava_mod/``): the vision tower's pretraining, teacher
SFT, stage 1 (mimic: forward KL + LM loss + MoE aux loss) and stage 2 (DPO against the teacher),
run with ``python -m lit_distill fit``. Commands::

    python -m recipes.llava_mod make-data --out artifacts/llava_mod/data
    python -m lit_distill fit --config configs/vlm/llava_mod/tiny-vision_presence.yaml   # + export
    python -m recipes.llava_mod upcycle --dense DENSE_EXPORT --out artifacts/llava_mod/upcycled
    python -m recipes.llava_mod make-pairs --student-ckpt STAGE1.ckpt --teacher-ckpt TEACHER.ckpt \\
        --data artifacts/llava_mod/data/train.json --tokenizer artifacts/llava_mod/data/tokenizer \\
        --out artifacts/llava_mod/data/train_pairs_generated.json

The vision tower (:func:`vision_tower`, a narrow ResNet-18) stands in for LLaVA's CLIP encoder:
``tiny-vision_presence.yaml`` trains it to say which digits a scene of the *training* handwriting
holds (``MultiLabelBCE``, ``DigitPresenceDataModule``, :class:`DigitPresenceMetrics`); its export's
``model_state_dict.pt`` is the VLM configs' frozen ``TimmModel.checkpoint``.

``upcycle`` turns a dense student's export (``fit`` + ``export`` of a dense ``LlavaComposition``)
into the export of the same model with MoE layers (experts = copies of the dense FFN, fresh routers,
seeded), which a MoE config loads with ``init_from`` (stage 1's common start).

:class:`DigitVQAMetrics` is the held-out evaluation as a callback (answer accuracy per question type,
POPE, log p of the held-out pairs; trajectories); :func:`teacher_gap` the student-teacher KL per type.

``make-pairs`` builds preference pairs the way LLaVA-MoD's stage 2 can: for every prompt the
*student* proposes answers (its candidates ranked by its own likelihood when the record lists
``meta.candidates``, else ``--num-samples`` sampled answers) and the *teacher* ranks them by the
log-likelihood it gives each answer (summed over the answer tokens and EOS): its best answer is
``chosen``, its worst ``rejected``. Prompts whose proposals are all the same are skipped.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch import Callback
from torch import Tensor, nn

from datamodules.vlm import VLMDataModule, read_json_records, write_digit_vqa
from lit_distill.errors import ConfigError
from lit_distill.losses.preference import sequence_logprobs


@torch.no_grad()
def answer_logprobs(model: nn.Module, data: VLMDataModule, image: Tensor, prompt: str,
                    answers: list[str]) -> Tensor:
    """``[n]`` summed log-probabilities of each answer (tokens + EOS) given the image and prompt."""
    rows = [data.encode_turns([("human", prompt), ("gpt", a)], "make-pairs") for a in answers]
    batch = data.collate([{"pixel_values": image, **r} for r in rows])
    logits = model(**batch["inputs"]).logits
    return sequence_logprobs(logits, batch["labels"], batch["loss_mask"])


@torch.no_grad()
def sample_answers(model: nn.Module, data: VLMDataModule, image: Tensor, prompt: str, num_samples: int,
                   max_new_tokens: int, temperature: float, generator: torch.Generator) -> list[str]:
    """``num_samples`` answers sampled from ``model`` (ancestral sampling, stops at EOS; the image
    and pad tokens are never sampled)."""
    tok = data.tokenizer
    banned = [data.image_token_id, tok.pad_token_id]
    prefix = data.encode_turns([("human", prompt), ("gpt", "")], "make-pairs")["input_ids"][:-1]
    answers = []
    for _ in range(num_samples):
        ids = prefix.tolist()
        new: list[int] = []
        for _ in range(max_new_tokens):
            input_ids = torch.tensor([ids])
            logits = model(input_ids=input_ids, pixel_values=image[None],
                           attention_mask=torch.ones_like(input_ids)).logits[0, -1].float()
            logits[banned] = float("-inf")
            token = int(torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator))
            if token == tok.eos_token_id:
                break
            ids.append(token)
            new.append(token)
        answers.append(tok.decode(new).strip())
    return answers


def make_pairs(student: nn.Module, teacher: nn.Module, data: VLMDataModule, records_path: str,
               num_samples: int = 4, max_new_tokens: int = 8, temperature: float = 1.0,
               seed: int = 0, top: int = 2) -> list[dict]:
    """Preference pairs: the student proposes answers, the teacher ranks them (see module docstring).

    Args:
        student: the policy (a VLM adapter taking ``input_ids``, ``pixel_values``, ``attention_mask``).
        teacher: the ranker (same inputs and tokenizer).
        data: gives the tokenizer, image loading and encoding.
        records_path: LLaVA-format JSON; the first human turn is the prompt.
        num_samples: sampled answers per prompt when a record has no ``meta.candidates``.
        max_new_tokens: longest sampled answer.
        temperature: sampling temperature.
        seed: seed of the sampling.
        top: with ``meta.candidates``, how many of the student's most likely candidates are ranked.

    Returns:
        ``[{"image", "prompt", "chosen", "rejected", "teacher_margin"}]``.
    """
    student.eval()
    teacher.eval()
    records, root = read_json_records(records_path, "make-pairs --data")
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for i, rec in enumerate(records):
        where = f"{records_path}[{i}]"
        image = data._image(root, rec, where)
        human = next((t["value"] for t in rec.get("conversations", []) if t["from"] == "human"), None)
        if human is None:
            raise ConfigError(f"{where}: no human turn to use as the prompt")
        candidates = (rec.get("meta") or {}).get("candidates")
        if candidates:
            scores = answer_logprobs(student, data, image, human, candidates)
            proposals = [candidates[j] for j in scores.argsort(descending=True)[:top].tolist()]
        else:
            proposals = sample_answers(student, data, image, human, num_samples, max_new_tokens,
                                       temperature, generator)
        proposals = list(dict.fromkeys(p for p in proposals if p))
        if len(proposals) < 2:
            continue
        ranking = answer_logprobs(teacher, data, image, human, proposals)
        best, worst = int(ranking.argmax()), int(ranking.argmin())
        pairs.append({"image": str((root / rec["image"]).resolve()), "prompt": human,
                      "chosen": proposals[best], "rejected": proposals[worst],
                      "teacher_margin": float(ranking[best] - ranking[worst])})
    return pairs


VISION_KWARGS = {"channels": [16, 32, 64, 64], "stem_width": 16}


def vision_tower() -> nn.Module:
    """The tiny configs' vision encoder: a narrow ResNet-18 with 10 digit-presence outputs and
    its stride-16 stage ``layer3`` hooked (4x4 = 16 image tokens on 64-pixel images)."""
    from lit_distill.models.vision import TimmModel

    return TimmModel("resnet18", num_classes=10, model_kwargs=dict(VISION_KWARGS), hooks=["layer3"])


class DigitPresenceMetrics(Callback):
    """Held-out metrics of the vision tower's pretraining (``tiny-vision_presence.yaml``) from the
    student's ``[B, 10]`` logits and the multi-hot ``labels`` (:mod:`datamodules.digit_presence`):
    ``val/label_acc`` (digit labels right, "present" iff the logit > 0) and ``val/exact_set_acc``
    (scenes whose whole digit set is right), summed over processes."""

    def __init__(self) -> None:
        self._counts: Tensor | None = None  # [labels right, labels, scenes right, scenes]

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._counts = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        logits, labels = outputs["student"].logits, batch["labels"]
        right = ((logits > 0) == labels.bool()).float()  # [B, 10]
        counts = torch.stack([right.sum(), right.new_tensor(right.numel()), right.min(dim=1).values.sum(),
                              right.new_tensor(right.shape[0])])
        self._counts = counts if self._counts is None else self._counts + counts

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._counts is None or trainer.sanity_checking:
            return
        counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
        pl_module.log("val/label_acc", counts[0] / counts[1])
        pl_module.log("val/exact_set_acc", counts[2] / counts[3])


@torch.no_grad()
def tower_presence_accuracy(tower_path: str | Path, records_path: str | Path) -> float:
    """Accuracy of the pretrained vision tower's own digit head on the presence questions of a
    digit-VQA file ("yes" iff the asked digit's logit > 0): how much of the answer the frozen tower
    gives a VLM built on it (its layer3 map, not this head, is what the VLM sees)."""
    from datamodules.vlm import load_image

    tower = vision_tower().eval()
    tower.module.load_state_dict(torch.load(tower_path, map_location="cpu", weights_only=True))
    records, root = read_json_records(str(records_path), "records")
    presence = [r for r in records if r["meta"]["type"] == "presence"]
    hits = []
    for start in range(0, len(presence), 128):
        chunk = presence[start:start + 128]
        images = torch.stack([load_image(root / r["image"], 64, [0.5] * 3, [0.5] * 3) for r in chunk])
        logits = tower(pixel_values=images).logits
        hits += [bool(logits[i, r["meta"]["digit"]] > 0) == (r["meta"]["answer"] == "yes") for i, r in enumerate(chunk)]
    return sum(hits) / len(hits)


def upcycle_export(dense_dir: str | Path, out_dir: str | Path, moe: dict, seed: int = 0) -> Path:
    """Write the export of a dense student ``dense_dir`` sparse-upcycled with ``moe``.

    Builds the composition the tiny configs describe (:func:`vision_tower`, layer3 tokens) with
    the dense LM of ``dense_dir/lm`` upcycled (routers drawn after ``torch.manual_seed(seed)``),
    loads the dense vision tower and projector, and exports it: ``init_from: out_dir`` on a MoE
    config with the same ``moe`` then starts from the dense student.
    """
    from lit_distill.models.vlm import LlavaComposition

    dense, out = Path(dense_dir), Path(out_dir)
    meta = json.loads((dense / "composition.json").read_text())
    if meta.get("moe") is not None:
        raise ConfigError(f"upcycle --dense: '{dense}' is already a MoE export (moe={meta['moe']})")
    torch.manual_seed(seed)
    model = LlavaComposition(vision_tower(), image_token_id=meta["image_token_id"], lm_path=str(dense / "lm"),
                             moe=dict(moe), vision_image_size=64, vision_feature="layer3")
    state = torch.load(dense / "vision_projector.pt", map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k.startswith(("vision.", "projector.")) for k in missing):
        raise ConfigError(f"upcycle --dense: '{dense}' vision/projector weights do not fit the tiny composition")
    model.export(str(out))
    return out


class DigitVQAMetrics(Callback):
    """Held-out digit-VQA metrics of the trained model, logged as ``val/*`` at every validation.

    Reads the held-out *preference* file (every question once, chosen = the reference answer,
    rejected = a wrong one, records in the order of the supervised file) through the run's own
    datamodule, runs ``pl_module.student`` on it without gradients and logs:

    - ``val/acc_{all,count,presence,position}``: greedy next token over the whole vocabulary at
      the answer position equals the (single-token) reference answer;
    - ``val/pope_{acc,f1,yes_ratio}``, ``val/false_yes_absent``: presence questions answered "yes"
      when p(yes) > p(no) (F1 of "yes"; false "yes" rate over absent digits);
    - ``val/logp_chosen``, ``val/logp_rejected``: mean over pairs of the summed log-probability
      of the answer tokens and EOS; ``val/p_chosen``, ``val/p_rejected``: the mean probability
      of the answer's first token, and ``val/p_other``: the rest of that position's mass.

    Args:
        pairs_path: held-out preference JSON written by :func:`datamodules.vlm.write_digit_vqa`.
        batch_size: pairs per forward.
    """

    def __init__(self, pairs_path: str, batch_size: int = 128) -> None:
        self.pairs_path = pairs_path
        self.batch_size = batch_size
        self._samples: list[dict] | None = None
        self._meta: list[dict] = []

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        data = trainer.datamodule
        if self._samples is None:
            self._samples, preference = data.build_samples(self.pairs_path, "DigitVQAMetrics.pairs_path")
            if not preference:
                raise ConfigError(f"DigitVQAMetrics.pairs_path: '{self.pairs_path}' holds no preference pairs")
            self._meta = [rec["meta"] for rec in read_json_records(self.pairs_path, "DigitVQAMetrics.pairs_path")[0]]
        yes, no = (data.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
        rows: dict[str, list[Tensor]] = {}
        for start in range(0, len(self._samples), self.batch_size):
            batch = data.collate(self._samples[start:start + self.batch_size])
            batch = trainer.strategy.batch_to_device(batch, pl_module.device)
            logits = pl_module.student(**batch["inputs"]).logits.float()
            for key, value in answer_statistics(logits, batch["labels"], batch["response_mask"], yes, no).items():
                rows.setdefault(key, []).append(value.cpu())
        values = {key: torch.cat(parts) for key, parts in rows.items()}
        for key, value in vqa_metrics(values, self._meta).items():
            pl_module.log(f"val/{key}", value)


@torch.no_grad()
def teacher_gap(student: nn.Module, teacher: nn.Module, data: VLMDataModule, pairs_path: str,
                batch_size: int = 128) -> dict[str, float]:
    """How far the student's answers are from the teacher's on held-out questions, per question type.

    For every question of the held-out preference file (chosen rows only: the prompt and the
    reference answer), at the position that predicts the answer's first token: KL(teacher ‖ student)
    over the whole vocabulary, and whether the student's greedy token is the teacher's.

    Args:
        student, teacher: VLMs taking ``input_ids``, ``pixel_values``, ``attention_mask``.
        data: gives the tokenizer, images and collation; pairs_path: the held-out preference JSON.
        batch_size: questions per forward.

    Returns:
        ``{"kl_<type>", "agree_<type>"}`` (means) for ``type`` in ``all`` and each question type.
    """
    student.eval()
    teacher.eval()
    samples, _ = data.build_samples(pairs_path, "teacher_gap.pairs_path")
    kinds = [rec["meta"]["type"] for rec in read_json_records(pairs_path, "teacher_gap.pairs_path")[0]]
    kl, agree = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        batch = data.collate(chunk)
        inputs = {key: value[:len(chunk)] for key, value in batch["inputs"].items()}  # the chosen rows
        rows = torch.arange(len(chunk))
        first = batch["response_mask"][:len(chunk)].float().argmax(dim=1)
        log_s = student(**inputs).logits[rows, first].float().log_softmax(-1)  # [P, V]
        log_t = teacher(**inputs).logits[rows, first].float().log_softmax(-1)
        kl.append((log_t.exp() * (log_t - log_s)).sum(-1))
        agree.append((log_s.argmax(-1) == log_t.argmax(-1)).float())
    values = {"kl": torch.cat(kl), "agree": torch.cat(agree)}
    return {f"{name}_{kind}": float(value[torch.tensor([kind in ("all", k) for k in kinds])].mean())
            for kind in ["all", *sorted(set(kinds))] for name, value in values.items()}


def answer_statistics(logits: Tensor, labels: Tensor, mask: Tensor, yes: int, no: int) -> dict[str, Tensor]:
    """Per-pair statistics of a preference batch (``P`` chosen rows, then the ``P`` rejected ones).

    Args:
        logits: ``[2P, L, V]``; labels, mask: ``[2P, L]`` (shifted labels, response mask).
        yes, no: token ids of "yes" and "no".

    Returns:
        ``[P]`` each: ``logp_chosen``/``logp_rejected`` (summed over the answer and EOS),
        ``p_chosen``/``p_rejected`` (first answer token), ``correct`` (greedy = chosen),
        ``says_yes`` (p(yes) > p(no)), all at the answer position.
    """
    logps = sequence_logprobs(logits, labels, mask)
    half = logits.shape[0] // 2
    first = mask[:half].float().argmax(dim=1)  # position that predicts the answer's first token
    rows = torch.arange(half, device=logits.device)
    step = logits[rows, first]  # [P, V]; the prompts (and so these logits) are the same in both halves
    probs = step.softmax(dim=-1)
    chosen, rejected = labels[rows, first], labels[rows + half, first]
    return {"logp_chosen": logps[:half], "logp_rejected": logps[half:],
            "p_chosen": probs[rows, chosen], "p_rejected": probs[rows, rejected],
            "correct": (step.argmax(dim=-1) == chosen).float(), "says_yes": (step[:, yes] > step[:, no]).float()}


def vqa_metrics(values: dict[str, Tensor], meta: list[dict]) -> dict[str, float]:
    """The logged metrics of :class:`DigitVQAMetrics` from :func:`answer_statistics` over all pairs."""
    kinds = [m["type"] for m in meta]
    out = {"acc_all": float(values["correct"].mean())}
    for kind in sorted(set(kinds)):
        out[f"acc_{kind}"] = float(values["correct"][torch.tensor([k == kind for k in kinds])].mean())
    presence = torch.tensor([k == "presence" for k in kinds])
    pred = values["says_yes"][presence].bool()
    truth = torch.tensor([m["answer"] == "yes" for m in meta])[presence]
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    out.update({"pope_acc": float((pred == truth).float().mean()), "pope_f1": 2 * tp / max(2 * tp + fp + fn, 1),
                "pope_yes_ratio": float(pred.float().mean()), "false_yes_absent": fp / max(int((~truth).sum()), 1)})
    for key in ("logp_chosen", "logp_rejected", "p_chosen", "p_rejected"):
        out[key] = float(values[key].mean())
    out["p_other"] = 1.0 - out["p_chosen"] - out["p_rejected"]
    return out


def load_model(ckpt: str | Path) -> nn.Module:
    """The student of a ``fit`` checkpoint (a VLM of this recipe), rebuilt from its config."""
    from lit_distill.export import build_student

    if not Path(ckpt).is_file():
        raise ConfigError(f"no checkpoint file '{ckpt}' (give a last.ckpt written by fit)")
    return build_student(torch.load(ckpt, map_location="cpu", weights_only=False))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.llava_mod {make-data, upcycle, make-pairs} ...``."""
    parser = argparse.ArgumentParser(prog="python -m recipes.llava_mod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data_p = sub.add_parser("make-data", help="write the digit-scene VQA dataset and its tokenizer")
    data_p.add_argument("--out", required=True, help="directory of the JSON records, images and tokenizer")
    data_p.add_argument("--train-scenes", type=int, default=800, help="training scenes")
    data_p.add_argument("--val-scenes", type=int, default=200, help="validation scenes")
    data_p.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    up_p = sub.add_parser("upcycle", help="sparse-upcycle a dense student's export (stage 1's start)")
    up_p.add_argument("--dense", required=True, help="export directory of the dense student")
    up_p.add_argument("--out", required=True, help="export directory of the MoE student")
    up_p.add_argument("--moe", default='{"every": 2, "num_experts": 4, "top_k": 2, "capacity_factor": 1.5}',
                      help="JSON arguments of lit_distill.models.moe.upcycle (as the config's moe)")
    up_p.add_argument("--seed", type=int, default=0, help="seed of the router initialisation")
    pairs_p = sub.add_parser("make-pairs", help="student-proposed answers ranked by the teacher")
    pairs_p.add_argument("--student-ckpt", required=True, help="checkpoint written by fit (stage 1)")
    pairs_p.add_argument("--teacher-ckpt", required=True, help="checkpoint of the teacher's own fit")
    pairs_p.add_argument("--data", required=True, help="LLaVA-format JSON with the prompts")
    pairs_p.add_argument("--tokenizer", required=True, help="the data's tokenizer directory (make-data's)")
    pairs_p.add_argument("--out", required=True, help="JSON file of the preference pairs")
    pairs_p.add_argument("--num-image-tokens", type=int, default=16, help="image tokens per prompt (as in training)")
    pairs_p.add_argument("--image-size", type=int, default=64, help="image side in pixels (as in training)")
    pairs_p.add_argument("--num-samples", type=int, default=4, help="answers sampled per prompt without candidates")
    pairs_p.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.epilog = ("options of each command (`python -m recipes.llava_mod COMMAND --help` explains them):\n"
                     + "".join("  " + command.format_usage().removeprefix("usage: ") for command in sub.choices.values())
                     + "The training stages themselves are `python -m lit_distill fit --config configs/vlm/llava_mod/...`.")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.command == "make-data":
        paths = write_digit_vqa(args.out, args.train_scenes, args.val_scenes, args.seed)
        print(json.dumps({k: str(v) for k, v in paths.items()}, indent=1))
        return
    if args.command == "upcycle":
        print(f"wrote {upcycle_export(args.dense, args.out, json.loads(args.moe), args.seed)}")
        return
    data = VLMDataModule(args.tokenizer, args.data, args.data, num_image_tokens=args.num_image_tokens,
                         image_size=args.image_size)
    pairs = make_pairs(load_model(args.student_ckpt), load_model(args.teacher_ckpt), data, args.data,
                       num_samples=args.num_samples, seed=args.seed)
    Path(args.out).write_text(json.dumps(pairs, indent=1))
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
