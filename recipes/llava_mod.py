"""LLaVA-MoD steps that are not a plain ``fit``: the digit-VQA data and student-generated pairs.

Everything else is YAML (``configs/vlm/llava_mod/``): teacher SFT, stage 1 (mimic: forward
KL + LM loss + MoE aux loss) and stage 2 (DPO against the teacher), run with
``python -m lit_distill fit``. Commands::

    python -m recipes.llava_mod make-data --out artifacts/llava_mod/data
    python -m recipes.llava_mod pretrain-vision --out artifacts/llava_mod/vision.pt
    python -m recipes.llava_mod make-pairs --student-ckpt STAGE1.ckpt --teacher-ckpt TEACHER.ckpt \\
        --data artifacts/llava_mod/data/train.json --tokenizer artifacts/llava_mod/data/tokenizer \\
        --out artifacts/llava_mod/data/train_pairs_generated.json

``pretrain-vision`` stands in for the pretrained CLIP encoder of LLaVA: it trains the tiny
configs' vision tower (a narrow timm ResNet-18) to say which digits a training scene holds
(multi-label, freshly generated scenes of the *training* handwriting pool) and saves its state
dict for ``TimmModel.checkpoint``; the VLMs then keep it frozen.

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


def pretrain_vision(num_scenes: int = 6000, steps: int = 1000, lr: float = 1e-3, batch_size: int = 64,
                    seed: int = 0, num_val: int = 200) -> tuple[nn.Module, dict[str, float]]:
    """Train :func:`vision_tower` to predict the set of digits in a scene (BCE over 10 labels).

    Training scenes come from the ``train`` handwriting pool (seed ``seed + 1``, not the VQA
    scenes' seed), the reported metrics from ``num_val`` scenes of the held-out pool; images are
    normalised as :class:`datamodules.vlm.VLMDataModule` does by default (mean = std = 0.5).

    Returns:
        The trained tower (eval mode) and ``{"label_acc", "exact_set_acc"}`` on held-out scenes.
    """
    from datamodules.digit_scenes import digit_pool, make_scenes

    def tensors(split: str, count: int, scene_seed: int) -> tuple[Tensor, Tensor]:
        scenes = make_scenes(count, digit_pool(split), scene_seed, canvas_size=64)
        images = (torch.stack([s.image for s in scenes]) - 0.5) / 0.5
        targets = torch.zeros(count, 10)
        for i, scene in enumerate(scenes):
            targets[i, [o.digit for o in scene.objects]] = 1.0
        return images, targets

    images, targets = tensors("train", num_scenes, seed + 1)
    torch.manual_seed(seed)
    tower = vision_tower()
    optimizer = torch.optim.AdamW(tower.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=min(0.5, max(0.1, 3 / steps)))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, num_scenes, (batch_size,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(tower(pixel_values=images[idx]).logits, targets[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    tower.eval()
    val_images, val_targets = tensors("val", num_val, seed + 7919)
    with torch.no_grad():
        pred = tower(pixel_values=val_images).logits > 0
    right = pred == val_targets.bool()
    return tower, {"label_acc": float(right.float().mean()), "exact_set_acc": float(right.all(dim=1).float().mean())}


def _load_model(ckpt: str) -> nn.Module:
    from lit_distill.export import build_student

    if not Path(ckpt).is_file():
        raise ConfigError(f"make-pairs: no checkpoint file '{ckpt}'")
    return build_student(torch.load(ckpt, map_location="cpu", weights_only=False))


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m recipes.llava_mod {make-data, pretrain-vision, make-pairs} ...``."""
    parser = argparse.ArgumentParser(prog="python -m recipes.llava_mod", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    data_p = sub.add_parser("make-data", help="write the digit-scene VQA dataset and its tokenizer")
    data_p.add_argument("--out", required=True, help="directory of the JSON records, images and tokenizer")
    data_p.add_argument("--train-scenes", type=int, default=800, help="training scenes")
    data_p.add_argument("--val-scenes", type=int, default=200, help="validation scenes")
    data_p.add_argument("--seed", type=int, default=0, help="random seed of the scenes")
    vision_p = sub.add_parser("pretrain-vision", help="pretrain the tiny configs' vision tower")
    vision_p.add_argument("--out", required=True, help="state-dict file for TimmModel.checkpoint")
    vision_p.add_argument("--scenes", type=int, default=6000, help="training scenes")
    vision_p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    vision_p.add_argument("--val-scenes", type=int, default=200, help="held-out scenes for the metrics")
    vision_p.add_argument("--seed", type=int, default=0, help="random seed")
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
    if args.command == "pretrain-vision":
        tower, metrics = pretrain_vision(args.scenes, args.steps, seed=args.seed, num_val=args.val_scenes)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(tower.module.state_dict(), args.out)
        print(f"saved the vision tower to {args.out}; held-out {metrics}")
        return
    data = VLMDataModule(args.tokenizer, args.data, args.data, num_image_tokens=args.num_image_tokens,
                         image_size=args.image_size)
    pairs = make_pairs(_load_model(args.student_ckpt), _load_model(args.teacher_ckpt), data, args.data,
                       num_samples=args.num_samples, seed=args.seed)
    Path(args.out).write_text(json.dumps(pairs, indent=1))
    print(f"wrote {len(pairs)} pairs to {args.out}")


if __name__ == "__main__":
    main()
