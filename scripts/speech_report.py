"""The speech experiment's report: tables, a mechanical reading and caveats (part of ``scripts/experiment_speech.py``)."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules
from speech_eval import teacher_features  # noqa: E402
from speech_setup import ARMS, LABELS  # noqa: E402
from speech_teachers import TEACHERS  # noqa: E402

METRICS = [("log_mel_l1", "log-mel L1 ↓", 3), ("si_snr_db", "SI-SNR dB ↑", 2), ("cb0_usage", "cb0 usage ↑", 2),
           ("cb0_perplexity", "cb0 ppl", 1), ("ctc_cer", "probe CER ↓", 3),
           ("ctc_nats_per_char", "probe nats/char ↓", 3), ("sm_r2", "SM-feature R² ↑", 3)]


def summarise(results: list[dict]) -> list[dict]:
    """Mean and sample std over seeds per arm."""
    rows = []
    for arm in ARMS:
        runs = [r for r in results if r["arm"] == arm]
        if not runs:
            continue
        row = {"arm": arm, "label": LABELS[arm], "seeds": sorted(r["seed"] for r in runs)}
        for key, _, _ in METRICS:
            values = [r[key] for r in runs]
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict], refs: list[dict], teachers: dict[str, dict], meta: dict) -> str:
    head = "| arm | " + " | ".join(label for _, label, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 1)]
    for r in rows:
        cells = [f"{r[k]:.{d}f} ± {r[k + '_std']:.{d}f}" for k, _, d in METRICS]
        lines.append(f"| {r['label']} (n={len(r['seeds'])}) | " + " | ".join(cells) + " |")
    for r in refs:
        cells = [f"{r[k]:.{d}f}" if k in r else "–" for k, _, d in METRICS]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    t = teachers
    lines += ["", "Teachers (trained here on the training split only; held-out quality):", "",
              f"- SM: tiny HuBERT-CTC ({t['hubert_ctc']['parameters']:,} parameters, {t['hubert_ctc']['steps']} "
              f"steps, {t['hubert_ctc']['train_seconds']:.0f} s): held-out greedy CER "
              f"{t['hubert_ctc']['heldout_cer']:.3f}",
              f"- ASR encoder for LM-SPT: tiny Whisper encoder + CTC head ({t['whisper_ctc']['parameters']:,} "
              f"parameters, {t['whisper_ctc']['steps']} steps, {t['whisper_ctc']['train_seconds']:.0f} s): "
              f"held-out greedy CER {t['whisper_ctc']['heldout_cer']:.3f}",
              f"- LM: tiny Llama ({t['lm']['parameters']:,} parameters, WordPiece vocabulary "
              f"{t['lm']['vocab_size']}, {t['lm']['train_sentences']} sentences, {t['lm']['steps']} steps, "
              f"{t['lm']['train_seconds']:.0f} s): held-out perplexity {t['lm']['heldout_perplexity']:.1f} "
              f"(training {t['lm']['train_perplexity']:.1f})",
              "", f"Budget per run: {meta['max_steps']} steps, batch {meta['batch_size']} whole utterances, "
              f"student {meta['student']}."]
    return "\n".join(lines) + "\n"


def reading(rows: list[dict]) -> str:
    """A mechanical first reading: each distilled arm against the codec baseline, metric by metric,
    calling a difference only when it exceeds the two arms' standard deviations combined."""
    base = next((r for r in rows if r["arm"] == "codec"), None)
    if base is None:
        return "No baseline run; nothing to compare.\n"
    better = {"log_mel_l1": -1, "si_snr_db": 1, "cb0_usage": 1, "ctc_cer": -1, "ctc_nats_per_char": -1, "sm_r2": 1}
    out = []
    for r in rows:
        if r["arm"] == "codec":
            continue
        notes = []
        for key, sign in better.items():
            diff = r[key] - base[key]
            noise = r[f"{key}_std"] + base[f"{key}_std"]
            verdict = "within noise" if abs(diff) <= noise else ("better" if diff * sign > 0 else "worse")
            notes.append(f"{key} {diff:+.3g} ({verdict})")
        out.append(f"- {r['label']} vs codec: " + "; ".join(notes))
    return "\n".join(out) + "\n"


def teacher_caveats(teachers: dict[str, dict]) -> str:
    """Warnings about teachers too weak for their arm's comparison to mean much."""
    notes = []
    for name, arms in (("hubert_ctc", "DM-Codec SM and SM+LM"), ("whisper_ctc", "LM-SPT")):
        cer = teachers[name]["heldout_cer"]
        if cer >= 0.9:
            notes.append(f"- Caveat: the {name} teacher did not learn to transcribe (held-out CER {cer:.2f}); "
                         f"its features are acoustic rather than semantic, so {arms} distil a weak teacher.")
    return ("\n".join(notes) + "\n") if notes else ""


HAND_WRITTEN = "## Interpretation"


def time_free_d_axis(work: Path) -> dict[str, float]:
    """DM-Codec's d_axis loss that a sequence WITHOUT timing reaches against the SM teacher.

    For each held-out utterance the "student" is the teacher's own per-dimension time-mean
    repeated over every frame (no phonetic information at all); a perfect copy of the teacher
    reaches ``-log σ(1)``. When a distilled codec's training loss sits near the first number,
    the loss has been met without temporal structure.
    """
    from lit_distill.losses.speech_distill import cosine_time_loss

    feats = teacher_features(work)["heldout"]
    losses = [float(cosine_time_loss(f.mean(0, keepdim=True).expand_as(f)[None], f[None])) for f in feats]
    return {"time_constant": statistics.fmean(losses), "perfect": float(-F.logsigmoid(torch.tensor(1.0)))}


def stage_report(work: Path, arms: Sequence[str], seeds: Sequence[int], meta: dict, out: Path) -> str:
    results = [json.loads((work / "runs" / f"{a}_s{s}" / "eval.json").read_text())
               for a in arms for s in seeds if (work / "runs" / f"{a}_s{s}" / "eval.json").is_file()]
    refs = json.loads((work / "eval" / "references.json").read_text())
    teachers = {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in TEACHERS}
    rows = summarise(results)
    table = markdown(rows, refs, teachers, meta)
    d_axis = time_free_d_axis(work)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": rows, "references": refs,
                                                    "teachers": teachers, "d_axis_reference": d_axis,
                                                    "runs": results}, indent=1) + "\n")
    doc = ["# Speech codecs with and without semantic distillation", "",
           "Written by `scripts/experiment_speech.py` (see its docstring for the method). Held-out "
           "utterances of the espeak-ng corpus (never seen by teachers, codecs or probe fits), mean ± std "
           "over seeds. Probes read the FIRST codebook's tokens only.", "", table, "## Reading", "",
           "Mechanical comparison with the codec baseline (a difference counts only when larger than the "
           "two standard deviations added):", "", reading(rows), teacher_caveats(teachers),
           f"DM-Codec's d_axis loss against the SM teacher on held-out utterances: {d_axis['time_constant']:.3f} "
           "for a sequence without timing (the teacher's per-utterance mean repeated over every frame), "
           f"{d_axis['perfect']:.3f} for a perfect copy.", ""]
    md = out.with_suffix(".md")
    previous = md.read_text() if md.is_file() else ""
    if HAND_WRITTEN in previous:  # the reading written by hand after a run survives regeneration
        doc.append(previous[previous.index(HAND_WRITTEN):].lstrip("\n"))
    md.write_text("\n".join(doc))
    print(table)
    return table
