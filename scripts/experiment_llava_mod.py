"""LLaVA-MoD on digit-scene VQA: does mimic and preference distillation help a sparse-MoE student?

Data: :func:`datamodules.vlm.write_digit_vqa` (counting, presence with balanced absent digits,
leftmost/rightmost digit); held-out scenes use held-out handwriting.

Models (all :class:`lit_distill.models.LlavaComposition`): one vision encoder
(:func:`recipes.llava_mod.vision_tower`, a narrow timm ResNet-18 whose stride-16 stage gives
4×4 = 16 image tokens on 64-pixel images), pretrained once to name the digits of generated
training-pool scenes (:func:`recipes.llava_mod.pretrain_vision`, the stand-in for CLIP) and frozen
everywhere, as in LLaVA; an MLP projector and a Llama LM trained from scratch:

- teacher: a wider/deeper dense LM, supervised fine-tuning (SFT) for ``--teacher-steps``
  (one teacher, seed 0, shared by every student seed);
- student: a small dense LM trained with SFT for ``--dense-steps`` (per seed), then
  sparse-upcycled (4 experts, top-2, capacity 1.5, MoE in every other layer) — the common start
  of the three arms, which then get the same ``--steps`` optimizer steps:

  * **SFT only**: CE + 0.01·aux;
  * **mimic** (stage 1): forward KL(teacher ‖ student) on response tokens + CE + 0.01·aux;
  * **mimic + preference**: stage 1 for ``steps − pref_steps``, then stage 2 for ``pref_steps``:
    DPO (β = 0.1) against the teacher as reference on data pairs (chosen = correct answer,
    rejected = a wrong one; "yes" for an absent digit) + 0.01·aux.

Metrics on the held-out questions: answer accuracy = greedy decoding of the (single-token)
answer over the whole vocabulary equals the reference (exact match), per question type; POPE-style
presence metrics with "yes"/"no" decided by the larger of the two probabilities: accuracy, F1 of
"yes" and the "yes" ratio (0.5 is the truth), plus the false-"yes" rate on absent digits
(hallucination). Results (mean ± std over seeds) go to ``docs/experiments/llava_mod.md``/``.json``.

    python scripts/experiment_llava_mod.py [--seeds 0 1 2] [--steps 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from datamodules.vlm import VLMDataModule, write_digit_vqa
from lit_distill import DistillationModule
from lit_distill.losses import DPO, CrossEntropy, ForwardKL, MoEAuxLoss
from lit_distill.models.moe import upcycle
from lit_distill.models.vlm import LlavaComposition
from recipes.llava_mod import pretrain_vision, vision_tower

ROOT = Path("artifacts/llava_mod_experiment")
DOCS = Path("docs/experiments")
NOTES_MARKER = "<!-- notes: kept when the script rewrites this report -->"
MOE = {"every": 2, "num_experts": 4, "top_k": 2, "capacity_factor": 1.5}
# The vision encoder (recipes.llava_mod.vision_tower: a narrow timm ResNet-18 whose stride-16
# stage gives 4x4 = 16 image tokens on 64-pixel images) is pretrained once to name the digits of
# training scenes (the stand-in for CLIP pretraining) and kept frozen in every model, as in LLaVA.
TEACHER = {"hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 4}
STUDENT = {"hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2}
TRAINABLE = ["lm.*", "projector.*"]


def build_model(lm_arch: dict, data: VLMDataModule, vision_state: dict) -> LlavaComposition:
    vision = vision_tower()
    vision.load_state_dict(vision_state)  # the ModelAdapter's state: module.* keys
    lm = {"model_type": "llama", "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 64, "tie_word_embeddings": True, **lm_arch}
    return LlavaComposition(vision, image_token_id=data.image_token_id, lm_config=lm, vocab_size=data.vocab_size,
                            pad_token_id=data.pad_token_id, vision_image_size=64, vision_feature="layer3",
                            trainable=TRAINABLE)


def fit(student, losses: dict, data: VLMDataModule, steps: int, lr: float, teacher=None) -> None:
    module = DistillationModule(
        student, losses, teacher=teacher,
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr, weight_decay=0.01),
        scheduler=lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=lr, total_steps=steps,
                                                                          pct_start=max(0.1, 3 / steps)))
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)


@torch.no_grad()
def evaluate(model: LlavaComposition, data: VLMDataModule, records: list[dict]) -> dict[str, float]:
    """Greedy single-token answers on the held-out questions; POPE metrics on presence ones."""
    model.eval()
    tok = data.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    hits: dict[str, list[bool]] = {}
    pope_pred, pope_true = [], []
    for start in range(0, len(data.val_dataset), 128):
        batch = data.collate(data.val_dataset[start:start + 128])
        logits = model(**batch["inputs"]).logits
        first = batch["loss_mask"].float().argmax(dim=1)  # position predicting the answer's first token
        rows = torch.arange(len(first))
        step_logits = logits[rows, first]
        answers = batch["labels"][rows, first]
        greedy = step_logits.argmax(dim=-1)
        for i, rec in enumerate(records[start:start + 128]):
            kind = rec["meta"]["type"]
            hits.setdefault(kind, []).append(bool(greedy[i] == answers[i]))
            if kind == "presence":
                pope_pred.append(bool(step_logits[i, yes] > step_logits[i, no]))
                pope_true.append(rec["meta"]["answer"] == "yes")
    model.train()
    result = {f"acc_{k}": sum(v) / len(v) for k, v in sorted(hits.items())}
    result["acc_all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    tp = sum(p and t for p, t in zip(pope_pred, pope_true, strict=True))
    fp = sum(p and not t for p, t in zip(pope_pred, pope_true, strict=True))
    fn = sum(not p and t for p, t in zip(pope_pred, pope_true, strict=True))
    result["pope_acc"] = sum(p == t for p, t in zip(pope_pred, pope_true, strict=True)) / len(pope_true)
    result["pope_f1"] = 2 * tp / max(2 * tp + fp + fn, 1)
    result["pope_yes_ratio"] = sum(pope_pred) / len(pope_pred)
    result["false_yes_absent"] = fp / max(sum(not t for t in pope_true), 1)
    return result


def teacher_check(teacher: dict[str, float], student: dict[str, float]) -> str | None:
    """One-line failure message when the teacher's held-out answer accuracy does not beat the
    dense student baseline's (distilling it could not help), else None."""
    if teacher["acc_all"] > student["acc_all"]:
        return None
    return (f"teacher check failed: teacher answer acc {teacher['acc_all']:.3f} does not beat the dense "
            f"student baseline {student['acc_all']:.3f}; train the teacher longer (--teacher-steps)")


def mimic_losses() -> dict:
    return {"kd": ForwardKL(), "ce": CrossEntropy(), "aux": MoEAuxLoss(weight=0.01)}


def run_arm(name: str, train, start: dict, vision_state: dict, seed: int, data: VLMDataModule,
            records: list[dict], runs: dict, timings: dict) -> None:
    """Upcycle the dense student ``start`` (a state dict; seeded, so every arm starts identical),
    train it with ``train`` and record its held-out metrics.

    (Models are rebuilt rather than deep-copied: a deep copy's forward hooks, which record the
    vision feature map, would still write into the original adapter.)
    """
    model = build_model(STUDENT, data, vision_state)
    model.load_state_dict(start)
    seed_everything(seed)
    upcycle(model.module, **MOE)
    t0 = time.time()
    train(model)
    timings[f"{name} seed {seed}"] = time.time() - t0
    metrics = evaluate(model, data, records)
    runs.setdefault(name, []).append(metrics)
    print(seed, name, metrics, flush=True)


def run(args: argparse.Namespace) -> dict:
    timings: dict[str, float] = {}
    start = time.time()
    cache = ROOT / f"vision_{args.vision_scenes}scenes_{args.vision_steps}steps.pt"
    if cache.is_file():  # pretraining is deterministic: reuse a previous run's tower
        vision_state, vision_metrics = torch.load(cache, weights_only=False)
    else:
        tower, vision_metrics = pretrain_vision(args.vision_scenes, args.vision_steps)
        vision_state = tower.state_dict()
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((vision_state, vision_metrics), cache)
    timings["vision pretraining"] = time.time() - start
    print("vision", vision_metrics, flush=True)
    paths = write_digit_vqa(ROOT / args.data_dir, num_train=args.train_scenes, num_val=args.val_scenes, seed=0)
    common = {"tokenizer": str(paths["tokenizer"]), "num_image_tokens": 16, "image_size": 64,
              "batch_size": args.batch_size, "max_length": 64}
    sft_data = VLMDataModule(train_path=str(paths["train"]), val_path=str(paths["val"]), **common)
    pair_data = VLMDataModule(train_path=str(paths["train_pairs"]), val_path=str(paths["val_pairs"]),
                              **{**common, "batch_size": args.batch_size // 2})
    sft_data.setup()
    pair_data.setup()
    val_records = json.loads(paths["val"].read_text())

    seed_everything(0)
    start = time.time()
    teacher = build_model(TEACHER, sft_data, vision_state)
    fit(teacher, {"ce": CrossEntropy()}, sft_data, args.teacher_steps, args.teacher_lr)
    timings["teacher"] = time.time() - start
    teacher_metrics = evaluate(teacher, sft_data, val_records)
    print("teacher", teacher_metrics, flush=True)
    if args.teacher_only:
        return {"teacher": teacher_metrics, "vision": vision_metrics}

    runs: dict[str, list[dict]] = {}
    aux = {"aux": MoEAuxLoss(weight=0.01)}
    for seed in args.seeds:
        seed_everything(seed)
        start = time.time()
        dense = build_model(STUDENT, sft_data, vision_state)
        fit(dense, {"ce": CrossEntropy()}, sft_data, args.dense_steps, args.lr)
        baseline = evaluate(dense, sft_data, val_records)
        runs.setdefault("dense student (common start, before MoE)", []).append(baseline)
        failure = teacher_check(teacher_metrics, baseline)
        if failure:
            raise SystemExit(failure)
        timings[f"dense seed {seed}"] = time.time() - start
        common_args = (dense.state_dict(), vision_state, seed, sft_data, val_records, runs, timings)

        run_arm("SFT only", lambda m: fit(m, {"ce": CrossEntropy(), **aux}, sft_data, args.steps, args.lr),
                *common_args)
        run_arm("mimic (stage 1)", lambda m: fit(m, mimic_losses(), sft_data, args.steps, args.lr, teacher=teacher),
                *common_args)

        def mimic_then_dpo(m) -> None:
            fit(m, mimic_losses(), sft_data, args.steps - args.pref_steps, args.lr, teacher=teacher)
            fit(m, {"dpo": DPO(beta=0.1), **aux}, pair_data, args.pref_steps, args.pref_lr, teacher=teacher)

        run_arm("mimic + preference (stage 1 → 2)", mimic_then_dpo, *common_args)
    return {"settings": dict(vars(args)), "moe": MOE, "teacher_lm": TEACHER, "student_lm": STUDENT,
            "vision": vision_metrics, "teacher": teacher_metrics, "runs": runs, "timings_s": timings,
            "num_val_questions": len(val_records), "num_train_questions": len(sft_data.train_dataset)}


COLUMNS = [("acc_all", "answer acc."), ("acc_count", "count"), ("acc_presence", "presence"),
           ("acc_position", "position"), ("pope_acc", "POPE acc."), ("pope_f1", "POPE F1"),
           ("pope_yes_ratio", "yes ratio"), ("false_yes_absent", "false 'yes' (absent)")]


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: dict) -> str:
    lines = ["| model | " + " | ".join(c for _, c in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    lines.append("| teacher (dense, SFT) | " + " | ".join(_cell([results["teacher"][k]]) for k, _ in COLUMNS) + " |")
    for name, metrics in results["runs"].items():
        lines.append(f"| {name} | " + " | ".join(_cell([m[k] for m in metrics]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines)


def write_report(results: dict, notes: str) -> None:
    DOCS.mkdir(parents=True, exist_ok=True)
    old = DOCS / "llava_mod.md"
    if old.is_file() and NOTES_MARKER in old.read_text():  # keep the hand-written discussion
        notes = (notes + "\n" if notes else "") + NOTES_MARKER + old.read_text().split(NOTES_MARKER, 1)[1]
    notes = notes.rstrip()
    (DOCS / "llava_mod.json").write_text(json.dumps(results, indent=2))
    s = results["settings"]
    body = f"""# LLaVA-MoD on digit-scene VQA

Rerun: `python scripts/experiment_llava_mod.py` (one CPU thread; the training phases took
{sum(results['timings_s'].values()) / 60:.1f} min wall here, on a shared machine).
Raw numbers: `llava_mod.json`.

Setup: {s['train_scenes']} training scenes ({results['num_train_questions']} questions) and {s['val_scenes']}
held-out scenes of held-out handwriting ({results['num_val_questions']} questions: counting, presence
of a digit with absent digits for half of them, leftmost/rightmost digit). Vision encoder (shared,
frozen in every model): `recipes.llava_mod.vision_tower`, pretrained for {s['vision_steps']} steps to
name the digits of {s['vision_scenes']} generated training-pool scenes (held-out label accuracy
{results['vision']['label_acc']:.3f}, exact digit set {results['vision']['exact_set_acc']:.3f}); its 4×4
stride-16 map gives 16 image tokens. Teacher LM: Llama {TEACHER}, SFT (projector + LM) for
{s['teacher_steps']} steps at lr {s['teacher_lr']} (seed 0, one teacher for all student seeds). Student LM: Llama {STUDENT},
dense SFT for {s['dense_steps']} steps per seed, then upcycled to MoE ({MOE}) — the common start of
the three arms, which each get
{s['steps']} steps (batch {s['batch_size']} sequences; the preference stage uses {s['batch_size'] // 2}
pairs = {s['batch_size']} sequences per step) at lr {s['lr']} (stage 2: {s['pref_lr']}, its last
{s['pref_steps']} steps). Seeds {s['seeds']} (mean ± std).

Metrics on held-out questions: answer accuracy = greedy next-token decoding over the whole vocabulary
equals the (single-token) reference answer; POPE-style presence: "yes" if p(yes) > p(no), accuracy,
F1 of "yes", ratio of "yes" answers (truth: 0.5) and the rate of "yes" for absent digits
(hallucination).

{table(results)}

{notes}
"""
    (DOCS / "llava_mod.md").write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vision-scenes", type=int, default=6000)
    parser.add_argument("--vision-steps", type=int, default=1000)
    parser.add_argument("--data-dir", default="data", help=f"under {ROOT}")
    parser.add_argument("--train-scenes", type=int, default=1500)
    parser.add_argument("--val-scenes", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--teacher-only", action="store_true", help="stop after the teacher (a probe)")
    parser.add_argument("--dense-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--pref-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-3, help="the student's (dense SFT and stage 1)")
    parser.add_argument("--pref-lr", type=float, default=1e-4, help="stage 2: 1/10 of stage 1, as LLaVA-MoD")
    parser.add_argument("--notes", default="", help="markdown appended under the table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = run(args)
    if args.teacher_only:
        return
    write_report(results, args.notes)
    print(table(results))


if __name__ == "__main__":
    main()
