"""The speech experiment's teachers, trained by ``python -m lit_distill fit`` (part of ``scripts/experiment_speech.py``).

Each teacher is a :class:`lit_distill.experiment.Run` of a config (``configs/speech/ctc/*.yaml``,
``configs/speech/lm/tiny-llama_transcripts.yaml``) on the corpus's TRAINING split, at the sizes of
``speech_setup.sizes``, launched, exported and copied to ``<work>/teachers/<name>/`` (where the
DM-Codec and LM-SPT configs load it), then checked and measured on the held-out utterances:

- ``hubert_ctc`` (``HFModel`` task ``speech-ctc``): greedy CER of the export's own CTC head, and
  ``HFSpeechEncoder(path=..., normalize=True)`` must reproduce the trained model's hidden states;
- ``whisper_ctc`` (``CTCHead`` on ``HFWhisperEncoder``): the same with ``HFWhisperEncoder(path=...)``;
- ``lm``: a WordPiece tokenizer trained on the training text, then the Llama with early stopping
  (the checkpoint of the best loss on a dev slice of the TRAINING text is exported); perplexities.

The validation split of the CTC runs is the held-out set: its loss is logged as a trajectory only
(the exported model is the last step's, nothing is selected on it).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules
from speech_probes import CHARS, corpus_cer, greedy_ctc, ids_to_text, text_to_ids  # noqa: E402
from speech_setup import REPO, load_split, load_waveforms, longest_seconds, sizes  # noqa: E402

from lit_distill.experiment import Run, RunResult, last_checkpoint, launch, read_metrics  # noqa: E402

CONFIGS = {"hubert_ctc": REPO / "configs" / "speech" / "ctc" / "hubert-ctc-tiny_synth.yaml",
           "whisper_ctc": REPO / "configs" / "speech" / "ctc" / "whisper-ctc-tiny_synth.yaml",
           "lm": REPO / "configs" / "speech" / "lm" / "tiny-llama_transcripts.yaml"}
TEACHERS = tuple(CONFIGS)
STUDENT = "--model.init_args.student.init_args"
RELOAD_TOLERANCE = 1e-4


def student_config(name: str) -> dict:
    """The model fields of a teacher's config (the Whisper encoder's for ``whisper_ctc``)."""
    args = yaml.safe_load(CONFIGS[name].read_text())["model"]["init_args"]["student"]["init_args"]
    return dict(args["encoder"]["init_args"]["config"] if name == "whisper_ctc" else args["config"])


def model_config(name: str, work: Path, smoke: bool, tokenizer=None) -> dict:
    """The config's model fields with the experiment's sizes (and, for Whisper, a window that holds
    the corpus's longest utterance: 50 encoder frames per second)."""
    config, size = student_config(name), sizes(smoke)["lm" if name == "lm" else name.split("_")[0]]
    if name == "hubert_ctc":
        config.update(hidden_size=size["hidden"], num_hidden_layers=size["layers"],
                      intermediate_size=2 * size["hidden"], conv_dim=[size["conv"]] * 3)
    elif name == "whisper_ctc":
        config.update(d_model=size["d_model"], encoder_layers=size["layers"], encoder_ffn_dim=4 * size["d_model"],
                      max_source_positions=50 * math.ceil(longest_seconds(work) + 0.1))
    else:
        config.update(hidden_size=size["hidden"], intermediate_size=2 * size["hidden"],
                      num_hidden_layers=size["layers"], bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id)
    return config


def teacher_run(name: str, work: Path, smoke: bool) -> Run:
    """The ``fit`` of one teacher: its config with the experiment's data, sizes and steps."""
    size = sizes(smoke)["lm" if name == "lm" else name.split("_")[0]]
    steps = size["steps"]
    common = [f"--data.init_args.batch_size={size['batch']}", f"--trainer.max_steps={steps}",
              f"--model.init_args.scheduler.init_args.total_steps={steps}", "--trainer.accelerator=cpu",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if name == "lm":
        from datamodules.tokenizer_training import load_tokenizer

        data = prepare_lm_data(work, smoke)
        config = model_config(name, work, smoke, load_tokenizer(str(data)))
        overrides = [f"--data.init_args.tokenizer={data}", f"--data.init_args.train_path={data / 'train.jsonl'}",
                     f"--data.init_args.val_path={data / 'dev.jsonl'}", f"--trainer.val_check_interval={min(100, steps)}",
                     f"{STUDENT}.config={json.dumps(config)}"]
        return Run(name, [CONFIGS[name]], [*common, *overrides], group="teachers")
    field = f"{STUDENT}.encoder.init_args.config" if name == "whisper_ctc" else f"{STUDENT}.config"
    # The validation data is the held-out set: its loss is a trajectory, never a selection. With the
    # CLI's monitor (val/loss) Lightning rewrites last.ckpt only when the loss improves, so the export
    # would be the best-on-held-out step; without a monitor every validation saves, the last one at
    # the final step (the interval divides the steps).
    overrides = [f"--data.init_args.manifest={load_split(work)['manifest']}", "--data.init_args.synthesize=false",
                 f"--trainer.val_check_interval={validation_interval(steps)}", "--checkpoint.monitor=null",
                 "--checkpoint.filename=step{step}", f"{field}={json.dumps(model_config(name, work, smoke))}"]
    return Run(name, [CONFIGS[name]], [*common, *overrides], group="teachers", export=True)


def validation_interval(steps: int) -> int:
    """The largest divisor of ``steps`` that is at most a quarter of it (at least 1): about four
    validations, the last one after the final step."""
    return max(d for d in range(1, max(1, steps // 4) + 1) if steps % d == 0)


def prepare_lm_data(work: Path, smoke: bool) -> Path:
    """Training / dev sentences (JSONL) and the WordPiece tokenizer, in ``<work>/teachers/lm_data``.

    The training transcripts plus local English prose (held-out transcripts excluded); 5 % of it
    (at least 2 sentences) is the dev slice that early stopping reads.
    """
    from datamodules.speech_corpus import english_sentences
    from datamodules.tokenizer_training import train_tokenizer

    out = work / "teachers" / "lm_data"
    if (out / "dev.jsonl").is_file():
        return out
    split, size = load_split(work), sizes(smoke)["lm"]
    held = {it["text"] for it in split["heldout"]}
    train_texts = [it["text"] for it in split["train"]]
    # english_sentences falls back to (and mixes in) its built-in list when asked for more than it finds
    extra = [s for s in english_sentences(size["extra"], seed=1) if s not in held and s not in set(train_texts)]
    texts = train_texts + extra
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    n_dev = max(2, len(texts) // 20)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_text.txt").write_text("\n".join(texts) + "\n")
    train_tokenizer([out / "train_text.txt"], out, vocab_size=size["vocab"], algorithm="wordpiece")
    for file, part in (("train.jsonl", order[n_dev:]), ("dev.jsonl", order[:n_dev])):
        (out / file).write_text("".join(json.dumps({"text": texts[i]}) + "\n" for i in part))
    return out


def stage_teachers(work: Path, smoke: bool, jobs: int, names: Sequence[str] = TEACHERS,
                   threads: int | None = None) -> dict[str, dict]:
    """Train the teachers ``names`` (default all three) through ``fit``, ``jobs`` at a time with
    ``threads`` torch threads each (default: the toolkit's, cores // jobs); each finished one is
    skipped (``<work>/teachers/<name>/result.json``)."""
    todo = [name for name in names if not (work / "teachers" / name / "result.json").is_file()]
    runs = [teacher_run(name, work, smoke) for name in todo]
    results = launch(runs, work / "teachers" / "runs", workers=max(1, jobs), cwd=REPO, threads=threads) if runs else []
    for name, result in zip(todo, results, strict=True):
        measured = finish_lm(result, work) if name == "lm" else finish_ctc(name, result, work)
        measured.update(train_seconds=result.seconds, run_dir=str(result.directory), trained_by="lit_distill fit")
        (work / "teachers" / name / "result.json").write_text(json.dumps(measured, indent=1) + "\n")
        print(f"[teachers] {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in measured.items()
                                                if isinstance(v, float)), flush=True)
    return {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in names}


def _copy_export(source: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)


def finish_ctc(name: str, result: RunResult, work: Path) -> dict:
    """Copy the export to ``<work>/teachers/<name>``, check that the adapters the distillation
    configs use reproduce the trained model, and measure the held-out CER of its CTC head."""
    from lit_distill.export import build_student, load_checkpoint_file
    from lit_distill.models import CTCHead, HFModel, HFSpeechEncoder, HFWhisperEncoder

    out = work / "teachers" / name
    _copy_export(result.export_dir, out)
    (out / "chars.json").write_text(json.dumps({"blank": 0, "chars": CHARS}) + "\n")
    checkpoint = load_checkpoint_file(str(last_checkpoint(result.directory)), "checkpoint")
    steps = int(checkpoint["global_step"])
    if steps != requested_steps(result):  # the export is the final state, not an earlier one
        raise RuntimeError(f"{name}: the last checkpoint is of step {steps}, not the run's last step "
                           f"{requested_steps(result)}; see its checkpoint settings")
    trained = build_student(checkpoint).eval()
    classes = len(CHARS) + 1
    if name == "hubert_ctc":
        loaded = HFModel("speech-ctc", path=str(out), normalize=True, num_classes=classes).eval()
        adapter = HFSpeechEncoder(path=str(out), normalize=True).eval()
        trained.output_hidden_states = True  # to compare every layer the DM-Codec configs may read
    else:
        loaded = CTCHead(HFWhisperEncoder(path=str(out)), num_classes=classes, path=str(out)).eval()
        adapter = HFWhisperEncoder(path=str(out)).eval()
    split = load_split(work)
    held = load_waveforms(split["heldout"])
    hyps, loader_diff, adapter_diff = [], 0.0, 0.0
    with torch.no_grad():
        for i, wave in enumerate(held):
            out_loaded = loaded(waveform=wave[None, None])
            frames = int(out_loaded.features["frame_mask"][0].sum())
            hyps.append(greedy_ctc(out_loaded.logits[0, :frames].argmax(-1).tolist()))
            if i < 4:  # the reload checks
                mine, theirs = trained(waveform=wave[None, None]), adapter(waveform=wave[None, None])
                loader_diff = max(loader_diff, float((mine.logits - out_loaded.logits).abs().max()))
                pairs = (zip(mine.hidden_states, theirs.hidden_states, strict=True) if name == "hubert_ctc" else
                         [(mine.features["last_hidden_state"], theirs.features["last_hidden_state"])])
                adapter_diff = max(adapter_diff, *(float((a - b).abs().max()) for a, b in pairs))
    if max(loader_diff, adapter_diff) > RELOAD_TOLERANCE:
        raise RuntimeError(f"the export in {out} does not reproduce the trained {name} (logits {loader_diff}, "
                           f"{type(adapter).__name__} {adapter_diff})")
    refs = [text_to_ids(it["text"]) for it in split["heldout"]]
    model = trained.model if name == "hubert_ctc" else trained.module.model
    config = model.config
    curve = read_metrics(result.directory).trajectories
    measured = {"teacher": name, "path": str(out), "layers": int(config.num_hidden_layers),
                "parameters": sum(p.numel() for p in model.parameters()), "steps": steps,
                "heldout_cer": corpus_cer(refs, hyps), "loader_max_abs_diff": loader_diff,
                "adapter_max_abs_diff": adapter_diff, "val_ctc": curve.get("val/ctc", []),
                "train_ctc_last": (curve.get("train/ctc") or [(0, math.nan)])[-1][1],
                "example": {"ref": split["heldout"][0]["text"], "hyp": ids_to_text(hyps[0])}}
    if name == "hubert_ctc":
        measured["hidden_size"] = int(config.hidden_size)
    else:
        measured.update(d_model=int(config.d_model), max_source_positions=int(config.max_source_positions))
    return measured


def requested_steps(result: RunResult) -> int:
    """The run's ``--trainer.max_steps``."""
    return int(next(o.split("=", 1)[1] for o in reversed(result.run.overrides) if o.startswith("--trainer.max_steps=")))


def finish_lm(result: RunResult, work: Path) -> dict:
    """Export the checkpoint of the best dev loss (early stopping) with its tokenizer to
    ``<work>/teachers/lm``, check that ``HFCausalLM`` loads it as the configs do, and measure perplexities."""
    from datamodules.text import PadCollator, encode_records
    from datamodules.tokenizer_training import load_tokenizer
    from lit_distill.export import export_checkpoint
    from lit_distill.models import HFCausalLM

    best = min(result.directory.rglob("best-step*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    best_step = int(torch.load(best, map_location="cpu", weights_only=True)["global_step"])
    out = work / "teachers" / "lm"
    if out.exists():
        shutil.rmtree(out)
    data = work / "teachers" / "lm_data"
    export_checkpoint(str(best), str(out), tokenizer=str(data))
    tok = load_tokenizer(str(out))
    model = HFCausalLM(path=str(out), output_hidden_states=True, vocab_size=len(tok)).eval()
    if model.output_size != len(tok):
        raise RuntimeError(f"HFCausalLM(path={out}) has {model.output_size} outputs for {len(tok)} tokens")

    def perplexity(texts: list[str]) -> float:
        """exp(token-mean NLL) with the datamodule's encoding (EOS appended, first token not predicted)."""
        samples, _ = encode_records(texts, tok, 128, pack=False, add_eos=True)
        total, count, collate = 0.0, 0, PadCollator(tok.pad_token_id)
        with torch.no_grad():
            for i in range(0, len(samples), 64):
                batch = collate(samples[i:i + 64])
                logits = model(**batch["inputs"]).logits
                total += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["labels"],
                                                                 ignore_index=-100, reduction="sum"))
                count += int(batch["loss_mask"].sum())
        return math.exp(total / count)

    lines = lambda file: [json.loads(line)["text"] for line in (data / file).read_text().splitlines()]  # noqa: E731
    fit_texts, dev = lines("train.jsonl"), lines("dev.jsonl")
    config = model.model.config
    return {"teacher": "lm", "path": str(out), "hidden_size": int(config.hidden_size),
            "layers": int(config.num_hidden_layers), "vocab_size": len(tok),
            "parameters": sum(p.numel() for p in model.parameters()), "train_sentences": len(fit_texts),
            "dev_sentences": len(dev), "steps": requested_steps(result), "best_step": best_step,
            "dev_perplexity": perplexity(dev),
            "heldout_perplexity": perplexity(sorted({it["text"] for it in load_split(work)["heldout"]})),
            "train_perplexity": perplexity(fit_texts[:64])}
