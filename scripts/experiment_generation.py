"""LLM distillation on generated text, in the papers' setting: pretrained students, a QA task, answers.

1. Data (``--prepare-only`` stops here): the local corpus and tokenizer A (byte-level BPE, 1,024
   tokens) of the quickstart; the docstring QA task (``datamodules.docstring_qa``: "Q: What does
   json.dumps(obj, ...) do?\\nA:" -> the first sentence of its docstring; split by function); the
   pretraining corpus without any document that contains a held-out answer; tokenizer B
   (Unigram, 1,536 tokens) trained on it.
2. Pretraining, by lit_distill's own ``fit`` on that corpus: the teacher's base (4 layers, 128 wide)
   and two 2-layer, 64-wide students (tokenizer A and tokenizer B), cached under ``models/``.
3. The teacher: its base fine-tuned on the gold QA pairs; then its greedy answers to every
   training and held-out prompt (``python -m lit_distill generate``). It must beat the CE student
   on held-out token F1 and answer NLL, or the script stops before distilling.
4. Students, one budget (steps, batch, schedule) for every arm, ≥ 3 seeds, from the pretrained
   students: tokenizer A: CE on gold answers; Seq-KD (CE on the teacher's answers); word-level KD
   (forward KL on gold answers); GKD (generalized JSD β 0.5, on-policy λ 0.5). Tokenizer B: CE,
   CE + ULD, CE + ALM on the teacher's answers, and ULD / ALM on-policy. Drafts for the teacher as
   target: acceptance (``python -m lit_distill speculate`` on the teacher's held-out answers) of
   the CE draft, the KD drafts and DistillSpec (TVD, fully on-policy).
5. Metrics: held-out token F1 and exact match of greedy answers against the gold answers, F1
   against the teacher's answers (imitation), the share of looping answers (a word 3-gram three
   times), the gold answers' NLL per token (``val/student_ce``; ``val/ce`` across tokenizers) and its
   trajectory, the next-token entropy and p(EOS) after each gold answer under teacher forcing, and
   each divergence's gradient norm on the CE student (why an on-policy objective moves it or not).

Writes ``docs/experiments/generation.{md,json}`` (``--out``); a rerun skips finished runs.

    python scripts/experiment_generation.py [--seeds 0 1 2] [--steps 400]
    python scripts/experiment_generation.py --prepare-only
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import string
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from datamodules.docstring_qa import held_out_free_corpus, write_docstring_qa  # noqa: E402
from datamodules.text import special_prefix  # noqa: E402
from datamodules.tokenizer_training import load_tokenizer, train_tokenizer  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    plot_trajectories,
    write_keeping_reading,
)
from lit_distill.quickstart import WORKDIR as QUICKSTART  # noqa: E402
from lit_distill.quickstart import prepare_data  # noqa: E402

ROOT = REPO / "artifacts/generation"
MODELS = ROOT / "models"
PRETRAIN_TEACHER = "configs/text/kd/quickstart-teacher.yaml"
PRETRAIN_STUDENT = "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"
TEACHER = "configs/text/seqkd/docstring-qa-teacher.yaml"
SEQKD = "configs/text/seqkd/docstring-qa-student_from_docstring-qa-teacher.yaml"
GKD = "configs/text/gkd/docstring-qa-student_from_docstring-qa-teacher.yaml"
ULD = "configs/text/uld/docstring-qa-unigram-student_from_docstring-qa-teacher.yaml"
GOLD = [f"--data.init_args.train_path={ROOT / 'qa/train.jsonl'}"]
NO_TEACHER = ["--model.init_args.teacher=null"]
CE = "{ce: {class_path: lit_distill.losses.CrossEntropy}}"
FKL = "{kd: {class_path: lit_distill.losses.ForwardKL}}"
TVD = "{tvd: {class_path: lit_distill.losses.TotalVariation}}"
SKL = "{skl: {class_path: lit_distill.losses.SkewKL, init_args: {alpha: 0.1}}}"
ADAPTIVE = "{class_path: lit_distill.AdaptiveOffPolicyStep, init_args: {max_new_tokens: 40, seed: {seed}}}"
ALM = ("{ce: {class_path: lit_distill.losses.CrossEntropy}, alm: {class_path: lit_distill.losses.ALM, "
       "init_args: {debias: true, weight: %s}}}")  # tokenkit's recommended (debiased) mode
GRADMAG = "--model.init_args.step={class_path: lit_distill.GradMagStep}"  # the authors' weighting
ON_POLICY = ("{class_path: lit_distill.OnPolicyStep, init_args: {student_fraction: %s, max_new_tokens: 40, "
             "seed: {seed}}}")
# A pretrained student is deterministic but for the data order and the samples: the seed varies both.
SEEDED = ["--data.init_args.seed={seed}"]
MAX_NEW_TOKENS = 40
ADASPEC = "{adaspec: {class_path: lit_distill.losses.AdaSPEC, init_args: {keep: 0.4}}}"
REFERENCE = json.dumps({"class_path": "lit_distill.Teacher", "init_args": {"model": {
    "class_path": "lit_distill.models.MultiModel", "init_args": {"members": {
        "target": {"class_path": "lit_distill.models.HFCausalLM", "init_args": {"path": str(MODELS / "teacher")}},
        "reference": {"class_path": "lit_distill.models.HFCausalLM", "init_args": {
            "path": str(ROOT / "students/A_word_KD_FKL_gold") + "/seed{seed}/export"}}}}}}})


def losses(spec: str) -> str:
    return f"--model.init_args.losses={spec}"


def step(fraction: float) -> str:
    return f"--model.init_args.step={ON_POLICY % fraction}"


ARMS_A = [  # tokenizer A (the teacher's): name -> (config, overrides)
    Run("A: CE (gold)", [SEQKD], [*GOLD, *NO_TEACHER, losses(CE)]),
    Run("A: Seq-KD", [SEQKD], [*NO_TEACHER, losses(CE)]),
    Run("A: word KD (FKL, gold)", [SEQKD], [*GOLD, losses(FKL)]),
    Run("A: GKD (JSD, on-policy 0.5)", [GKD], [step(0.5)]),
    Run("A: DistillSpec (TVD, on-policy 1)", [GKD], [losses(TVD), step(1.0)]),
    # control: the same divergence with half the steps on gold answers (GKD's mixture)
    Run("A: TVD, on-policy 0.5", [GKD], [losses(TVD), step(0.5)]),
    Run("A: DistiLLM (SKL, adaptive replay)", [GKD], [losses(SKL), f"--model.init_args.step={ADAPTIVE}"]),
]
# AdaSPEC: forward KL on the 40 % of gold-answer tokens where the draft trails its reference (the word-KD
# student of the same seed, so it runs after that arm) the most
ADASPEC_ARM = Run("A: AdaSPEC (FKL on 40 % of tokens)", [SEQKD],
                  [*GOLD, losses(ADASPEC), f"--model.init_args.teacher={REFERENCE}"])
ARMS_B = [  # tokenizer B (Unigram), all on the teacher's answers
    Run("B: CE (teacher answers)", [ULD], [*NO_TEACHER, losses(CE)]),
    Run("B: CE + ULD", [ULD], []),
    Run("B: CE + ALM (gradmag)", [ULD], [losses(ALM % 1.0), GRADMAG]),
    Run("B: CE + ULD, on-policy 0.5", [ULD], [step(0.5)]),
    # control: ULD pairing the positions where both models have read the same bytes, not the i-th ones
    Run("B: CE + ULD (byte alignment)", [ULD], ["--model.init_args.losses.uld.init_args.alignment=bytes"]),
]
ALM_ON_POLICY = "B: CE + ALM (weight from gradmag), on-policy 0.5"  # one step per run: the weight is measured


def gradmag_weight(results) -> float:
    """ALM's weight relative to CE that GradMagStep chose, averaged over the logged steps of the gradmag arm."""
    ratios = []
    for result in results:
        curves = result.metrics().trajectories
        ce, alm_weight = dict(curves["gradmag/ce"]), dict(curves["gradmag/alm"])
        ratios += [alm_weight[k] / ce[k] for k in ce if k in alm_weight and ce[k] > 0]
    return sum(ratios) / len(ratios)


def prepare() -> None:
    """Corpus and tokenizer A (the quickstart's), the QA task, the held-out-free corpus, tokenizer B."""
    prepare_data(QUICKSTART)
    qa = write_docstring_qa(ROOT / "qa")
    for split in ("train", "val"):
        kept, removed = held_out_free_corpus(QUICKSTART / f"data/{split}.txt", qa["val"], ROOT / f"corpus/{split}.txt")
        print(f"corpus {split}: {kept} documents kept, {removed} removed (they contain a held-out answer)")
    if not (ROOT / "tokenizer_unigram/tokenizer.json").exists():
        train_tokenizer([ROOT / "corpus/train.txt"], ROOT / "tokenizer_unigram", vocab_size=1536, algorithm="unigram")


def link(name: str, export: Path) -> None:
    """``models/<name>`` -> a run's export, the path the committed configs name."""
    MODELS.mkdir(parents=True, exist_ok=True)
    target = MODELS / name
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(export.resolve())


def pretrain(steps: int) -> None:
    """The teacher's base and both students' bases: CE on the held-out-free corpus, exported."""
    corpus = [f"--data.init_args.train_path={ROOT / 'corpus/train.txt'}",
              f"--data.init_args.val_path={ROOT / 'corpus/val.txt'}", f"--trainer.max_steps={steps}",
              f"--model.init_args.scheduler.init_args.total_steps={steps}", f"--trainer.val_check_interval={steps // 2}"]
    student = [*corpus, *NO_TEACHER, losses(CE)]
    runs = [Run("teacher_base", [PRETRAIN_TEACHER], corpus, group="pretrain", export=True),
            Run("student_base", [PRETRAIN_STUDENT], student, group="pretrain", export=True),
            Run("student_base_unigram", [PRETRAIN_STUDENT],
                [*student, f"--data.init_args.tokenizer={ROOT / 'tokenizer_unigram'}"], group="pretrain", export=True)]
    for result in launch(runs, ROOT, workers=1, cwd=REPO):
        link(result.run.name, result.export_dir)


def lit_distill(*args: str) -> None:
    """Run ``python -m lit_distill <args>`` in the repository (a command the user would type)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "lit_distill", *map(str, args)], check=True, cwd=REPO, env=env)


def teacher_and_answers() -> float:
    """Fine-tune the teacher on the gold pairs, write its greedy answers to every prompt; its gold NLL."""
    (result,) = launch([Run("teacher", [TEACHER], group="teacher", export=True)], ROOT, workers=1, cwd=REPO)
    link("teacher", result.export_dir)
    if not (ROOT / "teacher_answers/val/manifest.json").exists() or not any((ROOT / "teacher_answers/val").glob("*.jsonl")):
        lit_distill("generate", "--config", SEQKD, "--out", ROOT / "teacher_answers", "--temperature", 0,
                    "--max-new-tokens", MAX_NEW_TOKENS, *GOLD)
    lines = [line for shard in sorted((ROOT / "teacher_answers/val").glob("shard-*.jsonl"))
             for line in shard.read_text("utf-8").splitlines()]
    (ROOT / "teacher_answers_val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return result.metrics().final["val/student_ce"]


def normalise(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation or articles, split on whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", text).split()


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD token F1 between two answers."""
    pred, ref = normalise(prediction), normalise(gold)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_quality(model: Path, out: Path, tokenizer: Path | None = None) -> dict[str, float]:
    """Greedy answers of ``model`` to the held-out prompts: mean token F1 and exact match vs gold, and
    token F1 vs the teacher's greedy answer (how closely the student imitates it)."""
    if not (out / "val/manifest.json").exists() or not any((out / "val").glob("*.jsonl")):
        extra = [f"--data.init_args.tokenizer={tokenizer}"] if tokenizer else []
        lit_distill("generate", "--config", SEQKD, "--model", "student", "--splits", "val", "--out", out,
                    "--temperature", 0, "--max-new-tokens", MAX_NEW_TOKENS, *GOLD, *NO_TEACHER, *extra,
                    f"--model.init_args.student.init_args.path={model}")
    gold = {json.loads(line)["prompt"]: json.loads(line)["response"]
            for line in (ROOT / "qa/val.jsonl").read_text("utf-8").splitlines()}
    teacher = {json.loads(line)["prompt"]: json.loads(line)["response"]
               for line in (ROOT / "teacher_answers_val.jsonl").read_text("utf-8").splitlines()}
    records = [json.loads(line) for shard in sorted((out / "val").glob("shard-*.jsonl"))
               for line in shard.read_text("utf-8").splitlines()]
    f1 = [token_f1(r["response"], gold[r["prompt"]]) for r in records]
    exact = [float(normalise(r["response"]) == normalise(gold[r["prompt"]])) for r in records]
    imitation = [token_f1(r["response"], teacher[r["prompt"]]) for r in records]
    loops = [float(loops_back(r["response"])) for r in records]
    return {"f1": sum(f1) / len(f1), "exact": sum(exact) / len(exact), "f1_teacher": sum(imitation) / len(imitation),
            "loops": sum(loops) / len(loops)}


@torch.no_grad()
def teacher_forced(model: Path, tokenizer: Path) -> dict[str, float]:
    """On the gold held-out answers (teacher forcing): the mean entropy (nats) of the model's next-token
    distributions, and its probability of EOS right after each answer."""
    tok = load_tokenizer(str(tokenizer), None)
    net = AutoModelForCausalLM.from_pretrained(model).eval()
    entropies, eos = [], []
    for line in (ROOT / "qa/val.jsonl").read_text("utf-8").splitlines():
        pair = json.loads(line)
        prompt = special_prefix(tok) + tok(pair["prompt"], add_special_tokens=False)["input_ids"]
        answer = tok(pair["response"], add_special_tokens=False)["input_ids"]
        logp = net(torch.tensor([prompt + answer])).logits[0, len(prompt) - 1: len(prompt) + len(answer)].log_softmax(-1)
        entropies.append(float(-(logp.exp() * logp).sum(-1).mean()))
        eos.append(float(logp[-1, tok.eos_token_id].exp()))
    return {"entropy": sum(entropies) / len(entropies), "eos_end": sum(eos) / len(eos)}


def divergence_gradients(student: Path) -> dict[str, float]:
    """Norm of each divergence's gradient w.r.t. the student's logits on the teacher's held-out answers,
    for the CE student: how hard each on-policy objective pulls the same model."""
    from lit_distill.losses.divergences import forward_kl, generalized_jsd, skew_kl, total_variation

    tok = load_tokenizer(str(QUICKSTART / "tokenizer"), None)
    nets = [AutoModelForCausalLM.from_pretrained(m).eval() for m in (student, MODELS / "teacher")]
    rows = [json.loads(line) for line in (ROOT / "teacher_answers_val.jsonl").read_text("utf-8").splitlines()][:64]
    norms: dict[str, list[float]] = {}
    for pair in rows:
        prompt = special_prefix(tok) + tok(pair["prompt"], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + tok(pair["response"], add_special_tokens=False)["input_ids"]])
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        mask[0, len(prompt) - 1: -1] = True
        with torch.no_grad():
            student_logits, teacher_logits = (net(ids).logits for net in nets)
        for name, fn in (("fkl", forward_kl), ("jsd", generalized_jsd), ("skl", skew_kl), ("tvd", total_variation)):
            logits = student_logits.clone().requires_grad_()
            (gradient,) = torch.autograd.grad(fn(logits, teacher_logits, mask), logits)  # a probe: nothing trains
            norms.setdefault(name, []).append(float(gradient.norm()))
    return {name: sum(values) / len(values) for name, values in norms.items()}


def loops_back(answer: str) -> bool:
    """Whether a greedy answer repeats itself: a word 3-gram occurs three times or more."""
    words = answer.split()
    counts = collections.Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    return bool(counts) and max(counts.values()) >= 3


def acceptance(draft: Path, out: Path) -> dict[str, float]:
    """Sampled (T = 1) and greedy acceptance of ``draft`` for the teacher on its held-out answers,
    and the expected tokens per target call for γ = 4 draft tokens (sampled)."""
    if not out.exists():
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-m", "lit_distill", "speculate", "--target", MODELS / "teacher",
                                 "--draft", draft, "--data", ROOT / "teacher_answers_val.jsonl", "--gamma", "4"],
                                check=True, cwd=REPO, env=env, capture_output=True, text=True)
        out.write_text(result.stdout[result.stdout.index("{"):], encoding="utf-8")
    measured = json.loads(out.read_text("utf-8"))
    return {"acceptance": measured["sampled"]["acceptance"], "greedy_acceptance": measured["greedy"]["acceptance"],
            "tokens_per_call": measured["sampled"]["tokens_per_call"]}


def evaluate(results, tokenizer: Path | None, drafts: bool) -> dict[str, list[dict[str, float]]]:
    """Per arm, per seed: answer quality, final gold NLL (tokenizer A) and draft acceptance."""
    rows: dict[str, list[dict[str, float]]] = {}
    for arm, runs in by_arm(results).items():
        for result in runs:
            row = answer_quality(result.export_dir, result.directory / "answers", tokenizer)
            row.update(teacher_forced(result.export_dir, tokenizer or QUICKSTART / "tokenizer"))
            final = result.metrics().final
            # two tokenizers: the module logs no val/student_ce; the CE term on the gold answers is the same NLL
            row["nll"] = final.get("val/student_ce", final.get("val/ce", float("nan")))
            if drafts:
                row.update(acceptance(result.export_dir, result.directory / "acceptance.json"))
            rows.setdefault(arm, []).append(row)
    return rows


def report(rows: dict[str, list[dict[str, float]]], teacher: dict[str, float], results, out: Path, steps: int,
           alm_weight: float) -> None:
    keys = ["f1", "exact", "f1_teacher", "loops", "nll", "entropy", "eos_end", "acceptance", "greedy_acceptance",
            "tokens_per_call"]
    table_rows = [["teacher (4 layers, 128 wide)", *(mean_std([teacher.get(k, float("nan"))]).cell() for k in keys)]]
    for arm, values in rows.items():
        table_rows.append([arm, *(mean_std([v.get(k, float("nan")) for v in values]).cell() for k in keys)])
    curves = {arm: [r.metrics().trajectories.get("val/student_ce", []) for r in runs]
              for arm, runs in by_arm(results).items() if arm.startswith("A:")}
    plot_trajectories(curves, "val/student_ce", out / "generation.png")
    text = "\n".join([
        "# Distillation on generated text: measured", "",
        f"Rerun: `python scripts/experiment_generation.py --steps {steps}` (the script's docstring says what "
        "each stage does). Held-out: 267 functions whose docstrings the pretraining corpus never contained.", "",
        markdown_table(["arm", "token F1", "exact match", "F1 vs teacher", "looping answers", "gold NLL/token",
                        "entropy", "p(EOS) after answer", "acceptance (T=1)",
                        "greedy acceptance", "tokens/call (γ=4)"], table_rows), "",
        "Mean ± std over seeds; NLL is per tokenizer-A token (tokenizer B arms: per tokenizer-B token, not "
        "comparable); acceptance: the student as a draft for the teacher on the teacher's held-out answers. "
        f"ALM's on-policy weight {alm_weight:.1f} is the mean ALM/CE weight ratio GradMagStep chose in the "
        "off-policy gradmag arm.", "",
        "Gradient norm w.r.t. the CE student's logits on the teacher's held-out answers (mean per answer): "
        + ", ".join(f"{name} {value:.4f}" for name, value in teacher["gradients"].items()) + ".", "",
        "![held-out gold NLL per token](generation.png)", "", "Raw numbers: `generation.json`.", ""])
    (out / "generation.json").write_text(json.dumps({"teacher": teacher, "alm_weight": alm_weight, "arms": rows}, indent=1), encoding="utf-8")
    write_keeping_reading(out / "generation.md", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400, help="training steps of every student arm")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    ns = parser.parse_args()
    prepare()
    if ns.prepare_only:
        return
    pretrain(ns.pretrain_steps)
    teacher_nll = teacher_and_answers()
    budget = [*SEEDED, f"--trainer.max_steps={ns.steps}", f"--model.init_args.scheduler.init_args.total_steps={ns.steps}",
              f"--trainer.val_check_interval={max(ns.steps // 4, 1)}"]
    arms_a = [Run(a.name, a.configs, [*a.overrides, *budget], group="students", export=True) for a in ARMS_A]
    results_a = launch(expand(arms_a[:1], ns.seeds), ROOT, workers=1, cwd=REPO)
    teacher = answer_quality(MODELS / "teacher", ROOT / "teacher/answers")
    teacher["nll"] = teacher_nll
    teacher.update(teacher_forced(MODELS / "teacher", QUICKSTART / "tokenizer"))
    baseline = evaluate(results_a, None, drafts=True)[ARMS_A[0].name]
    f1 = sum(r["f1"] for r in baseline) / len(baseline)
    nll = sum(r["nll"] for r in baseline) / len(baseline)
    print(f"teacher check: token F1 {teacher['f1']:.4f} vs CE student {f1:.4f}; NLL {teacher['nll']:.4f} vs {nll:.4f}")
    if teacher["f1"] <= f1 or teacher["nll"] >= nll:
        raise SystemExit("the teacher does not beat the CE-trained student on held-out F1 and NLL: distilling "
                         "from it would measure nothing; train it longer (configs/text/seqkd/docstring-qa-teacher.yaml)")
    arms_b = [Run(a.name, a.configs, [*a.overrides, *budget], group="students", export=True) for a in ARMS_B]
    results_b = launch(expand(arms_b, ns.seeds), ROOT, workers=2, cwd=REPO)
    weight = gradmag_weight(by_arm(results_b)["B: CE + ALM (gradmag)"])
    print(f"ALM weight measured by GradMagStep (relative to CE): {weight:.1f}")
    on_policy = Run(ALM_ON_POLICY, [ULD], [losses(ALM % f"{weight:.1f}"), step(0.5), *budget], group="students",
                    export=True)
    results_b += launch(expand([on_policy], ns.seeds), ROOT, workers=2, cwd=REPO)
    results = results_a + launch(expand(arms_a[1:], ns.seeds), ROOT, workers=2, cwd=REPO)
    adaspec = Run(ADASPEC_ARM.name, ADASPEC_ARM.configs, [*ADASPEC_ARM.overrides, *budget], group="students", export=True)
    # the authors' budget: 1/k = 2.5x the steps, so AdaSPEC trains on as many tokens as the other arms
    long_steps = round(ns.steps / 0.4)
    adaspec_long = Run("A: AdaSPEC, 2.5x steps (as many tokens)", ADASPEC_ARM.configs,
                       [*ADASPEC_ARM.overrides, *budget, f"--trainer.max_steps={long_steps}",
                        f"--model.init_args.scheduler.init_args.total_steps={long_steps}",
                        f"--trainer.val_check_interval={long_steps // 4}"], group="students", export=True)
    results += launch(expand([adaspec, adaspec_long], ns.seeds), ROOT, workers=2, cwd=REPO)
    rows = evaluate(results, None, drafts=True)
    rows.update(evaluate(results_b, ROOT / "tokenizer_unigram", drafts=False))
    teacher["gradients"] = divergence_gradients(results_a[0].export_dir)
    report(rows, teacher, results + results_b, ns.out, ns.steps, weight)


if __name__ == "__main__":
    main()
