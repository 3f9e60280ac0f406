"""Experiment: speech codecs with and without semantic distillation, on locally synthesised speech.

The issue's comparison: on the ``espeak-ng`` corpus (:func:`datamodules.speech.synthesize_speech_corpus`),
a codec trained alone vs DM-Codec (speech-model, language-model and combined teachers) vs LM-SPT,
with the same budget, judged by reconstruction metrics and by semantic probes on the FIRST
codebook's tokens.

There is no model hub here, so the teachers are trained first, on the corpus's TRAINING split
only (the held-out utterances are never seen by any teacher, student or probe fit):

- ``hubert_ctc``: a tiny HuBERT (conv strides 5, 8, 8 = 320 samples = 50 frames/s) trained with
  CTC on characters; saved with ``save_pretrained`` so ``HFSpeechEncoder(path=DIR, normalize=True)``
  loads its encoder (checked: the loaded hidden states equal the trained model's);
- ``whisper_ctc``: a tiny Whisper whose encoder is trained with CTC on characters (a linear head
  on the encoder output, Whisper log-mel from ``WhisperFeatureExtractor``); saved as a
  ``WhisperModel`` directory (+ its feature extractor) for LM-SPT's ASR encoder;
- ``lm``: a WordPiece tokenizer and a tiny Llama trained on the training transcripts plus more
  local English prose (held-out sentences excluded); model + tokenizer in one directory for
  ``HFCausalLM(path=DIR)`` and ``SpeechDataModule(teacher_tokenizer=DIR)``.

Arms (the same student codec, strides [2, 4, 5, 8] = 50 Hz, crop, batch size, steps, optimiser,
data, reconstruction and commitment terms; only the distillation terms / teacher differ):
``codec`` (no teacher), ``dm_sm``, ``dm_sm_t`` (the same with DM-Codec's per-frame ``t_axis``
loss), ``dm_lm``, ``dm_combined`` (DM-Codec) and ``lm_spt``. Each run's
YAML is the arm's config with the codec arm's student sizes, ``mel``/``wave``/``commit`` terms and
optimiser copied in (LM-SPT: 1 semantic + 3 acoustic codebooks = the codec's 4 x 256, quantiser
dropout 0 like the codec; its semantic terms stay), written to ``runs/<arm>_s<seed>/config.yaml``.

Evaluation on the HELD-OUT utterances (whole): log-mel L1 and SI-SNR of the reconstruction,
first-codebook usage and perplexity, and two probes on the first codebook's tokens:
(i) a linear CTC probe (an embedding table token -> character logits + blank, fit with CTC on the
training utterances' tokens; greedy CER and CTC nats per character on held-out), (ii) ridge
regression from one-hot tokens to the SM teacher's last hidden states (interpolated to codec
frames; R^2 on held-out). Reference rows: the teachers' own CTC heads, the probes on k-means
(same codebook size) units of the SM teacher's features, and uniformly random tokens (chance).

Budget (measured on the 2-core machine): the Whisper teacher takes ~4 min alone on one thread, the
HuBERT one ~5 min (both ~6.5 min when run side by side), the LM < 2 min; a codec step (batch 4 whole
utterances) ~0.8 s (LM-SPT ~1.5 s) with two runs in parallel, ~8 s start-up per run; evaluation
~2 min once (teacher features, references) + ~75 s per run. Defaults: 400 steps per run, so ``all``
with ``--jobs 2`` (6 arms x 3 seeds) takes ~85 min (measured for 5 arms: 61 min of fits, 8 min of
evaluation; the sixth adds ~15 min). Every arm trains on WHOLE utterances (crop
null): the LM teacher reads the whole transcript, and the budget must be the same for every arm.

Usage::

    python scripts/experiment_speech.py all --jobs 2            # everything (~85 min on 2 cores)
    python scripts/experiment_speech.py corpus|teachers|arms|evaluate|report [--arms ...] [--seeds ...]
    python scripts/experiment_speech.py all --smoke             # tiny everything, < 2 min

Every stage skips finished work (results live under ``--work-dir``); ``report`` writes
``docs/experiments/speech_codecs.{md,json}`` (``--smoke``: into the work dir instead).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module below, also in spawned workers
from speech_probes import (  # noqa: E402
    BLANK,
    CHARS,
    codebook_stats,
    corpus_cer,
    eval_ctc_probe,
    fit_ctc_probe,
    fit_ridge_probe,
    greedy_ctc,
    ids_to_text,
    interpolate_frames,
    kmeans,
    pad_sequences,
    ridge_r2,
    stretch_tokens,
    text_to_ids,
)

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "configs" / "speech"
ARMS = {
    "codec": SPEECH / "codec" / "codec_synth.yaml",
    "dm_sm": SPEECH / "dm_codec" / "codec_from_hubert-tiny_synth.yaml",
    "dm_sm_t": SPEECH / "dm_codec" / "codec_from_hubert-tiny_synth.yaml",  # the same, with mode t_axis
    "dm_lm": SPEECH / "dm_codec" / "codec_from_tiny-lm_synth.yaml",
    "dm_combined": SPEECH / "dm_codec" / "codec_from_hubert-tiny+tiny-lm_synth.yaml",
    "lm_spt": SPEECH / "lm_spt" / "lm-spt-12.5hz_from_whisper-tiny_synth.yaml",
}
LABELS = {"codec": "codec, no distillation", "dm_sm": "DM-Codec SM (HuBERT-CTC)",
          "dm_sm_t": "DM-Codec SM, t_axis loss (per-frame L1 + cosine)",
          "dm_lm": "DM-Codec LM (Llama)", "dm_combined": "DM-Codec SM+LM", "lm_spt": "LM-SPT (Whisper-CTC)"}
DEFAULT_WORK = REPO / "artifacts" / "speech" / "experiment"
DOC = REPO / "docs" / "experiments" / "speech_codecs"
SAMPLE_RATE = 16000
VAL_FRACTION, SPLIT_SEED = 0.125, 0  # the speech configs' split
# The student codec every arm shares (ConvCodec args; an LM-SPT student gets those it has).
STUDENT = {"strides": [2, 4, 5, 8], "channels": 8, "max_channels": 256, "dim": 64, "dilations": [1, 3, 9],
           "num_quantizers": 4, "codebook_size": 256}
SHARED_TERMS = ("mel", "wave", "commit")  # reconstruction + commitment, copied from the codec arm



# ----------------------------------------------------------------------------- sizes
def sizes(smoke: bool) -> dict:
    """Every size knob of the experiment; ``smoke`` shrinks everything to seconds."""
    if smoke:
        return {"sentences": 24, "hubert": {"hidden": 32, "layers": 1, "conv": 16, "steps": 6, "batch": 4},
                "whisper": {"d_model": 32, "layers": 1, "steps": 6, "batch": 4},
                "lm": {"hidden": 32, "layers": 1, "steps": 6, "batch": 8, "vocab": 128, "extra": 50},
                "max_steps": 3, "batch_size": 2, "probe_steps": 20, "kmeans_iters": 3}
    return {"sentences": 512, "hubert": {"hidden": 96, "layers": 3, "conv": 64, "steps": 850, "batch": 8},
            "whisper": {"d_model": 64, "layers": 2, "steps": 2000, "batch": 8},
            "lm": {"hidden": 64, "layers": 2, "steps": 1500, "batch": 32, "vocab": 512, "extra": 100000},
            "max_steps": 400, "batch_size": 4, "probe_steps": 120, "kmeans_iters": 10}



# ----------------------------------------------------------------------------- data
def load_split(work: Path) -> dict:
    """The split written by the ``corpus`` stage."""
    return json.loads((work / "corpus" / "split.json").read_text())


def load_waveforms(items: Sequence[dict]) -> list[Tensor]:
    """Mono 16 kHz waveforms ``[T]`` of split records."""
    from datamodules.speech import read_audio, to_mono

    return [to_mono(*read_audio(it["path"]), SAMPLE_RATE) for it in items]


def length_batches(lengths: Sequence[int], batch: int, seed: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (little padding), in a seeded random order."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    random.Random(seed).shuffle(batches)
    return batches


def stage_corpus(work: Path, smoke: bool) -> dict:
    """Synthesise the corpus and fix the train / held-out split exactly as SpeechDataModule does."""
    from datamodules.speech import SpeechDataModule, synthesize_speech_corpus

    split_path = work / "corpus" / "split.json"
    if split_path.is_file():
        print(f"[corpus] done: {split_path}")
        return load_split(work)
    start = time.time()
    manifest = synthesize_speech_corpus(work / "corpus", num_sentences=sizes(smoke)["sentences"], seed=0)
    dm = SpeechDataModule(manifest=str(manifest), val_fraction=VAL_FRACTION, split_seed=SPLIT_SEED, val_crop="full")
    dm.setup("fit")
    rec = lambda u: {"path": str(Path(u.path).resolve()), "text": u.text}  # noqa: E731
    split = {"manifest": str(manifest.resolve()), "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED,
             "train": [rec(u) for u in dm.train_dataset.items], "heldout": [rec(u) for u in dm.val_dataset.items]}
    split_path.write_text(json.dumps(split, indent=1) + "\n")
    print(f"[corpus] {len(split['train'])} training / {len(split['heldout'])} held-out utterances "
          f"in {time.time() - start:.0f}s")
    return split


# ----------------------------------------------------------------------------- teachers
def _schedule(opt: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _ctc_train(forward, lengths: Sequence[int], targets: list[list[int]], params, steps: int, batch: int,
               lr: float, tag: str) -> None:
    """Length-bucketed CTC training; ``forward(indices) -> (log_probs [B, F, C], out_lengths [B])``."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = _schedule(opt, steps, max(1, steps // 20))
    step, epoch, start = 0, 0, time.time()
    while step < steps:
        for idx in length_batches(lengths, batch, seed=epoch):
            log_probs, out_len = forward(idx)
            tgt, tgt_len = pad_sequences([torch.tensor(targets[i]) for i in idx])
            loss = F.ctc_loss(log_probs.transpose(0, 1), tgt, out_len, tgt_len, blank=BLANK, zero_infinity=True)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0 or step == steps:
                print(f"[{tag}] step {step}/{steps} ctc {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
            if step >= steps:
                break
        epoch += 1


def train_hubert(work: Path, smoke: bool) -> dict:
    """Tiny HuBERT + CTC head on characters over the training utterances; saved for HFSpeechEncoder."""
    from transformers import HubertConfig, HubertForCTC

    from lit_distill.models import HFSpeechEncoder
    from lit_distill.models.hf_audio import normalize_waveform

    size, out = sizes(smoke)["hubert"], work / "teachers" / "hubert_ctc"
    torch.manual_seed(0)
    split = load_split(work)
    train_w, held_w = load_waveforms(split["train"]), load_waveforms(split["heldout"])
    train_t = [text_to_ids(it["text"]) for it in split["train"]]
    config = HubertConfig(vocab_size=len(CHARS) + 1, pad_token_id=BLANK, hidden_size=size["hidden"],
                          num_hidden_layers=size["layers"], num_attention_heads=4, intermediate_size=2 * size["hidden"],
                          conv_dim=[size["conv"]] * 3, conv_stride=[5, 8, 8], conv_kernel=[10, 8, 8],
                          num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, hidden_dropout=0.05,
                          attention_dropout=0.05, activation_dropout=0.0, feat_proj_dropout=0.0,
                          final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.05, mask_time_length=4,
                          # pre-LN: the post-LN default collapsed to constant outputs (blank-only CTC)
                          feat_extract_norm="layer", do_stable_layer_norm=True)
    model = HubertForCTC(config)

    def batch_of(waves: list[Tensor]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([w.numel() for w in waves])
        x = torch.stack([F.pad(w, (0, int(lengths.max()) - w.numel())) for w in waves])
        mask = torch.arange(x.shape[1])[None] < lengths[:, None]
        return normalize_waveform(x, mask), lengths

    def forward(idx: list[int]) -> tuple[Tensor, Tensor]:
        x, lengths = batch_of([train_w[i] for i in idx])
        logits = model(input_values=x).logits
        out_len = model._get_feat_extract_output_lengths(lengths).clamp_max(logits.shape[1])
        return logits.log_softmax(-1), out_len

    start = time.time()
    model.train()
    _ctc_train(forward, [w.numel() for w in train_w], train_t, list(model.parameters()), size["steps"],
               size["batch"], 2e-3, "hubert_ctc")
    seconds = time.time() - start
    model.eval()
    hyps = []
    with torch.no_grad():
        for w in held_w:
            x, _ = batch_of([w])
            hyps.append(greedy_ctc(model(input_values=x).logits[0].argmax(-1).tolist()))
    refs = [text_to_ids(it["text"]) for it in split["heldout"]]
    model.save_pretrained(out)
    (out / "chars.json").write_text(json.dumps({"blank": BLANK, "chars": CHARS}) + "\n")
    # the adapter the distillation configs use must see exactly the trained encoder
    encoder = HFSpeechEncoder(path=str(out), normalize=True).eval()
    diffs = []
    with torch.no_grad():
        for w in held_w[:4]:
            x, _ = batch_of([w])
            mine = model.hubert(input_values=x, output_hidden_states=True).hidden_states
            loaded = encoder(waveform=w[None, None]).hidden_states
            diffs += [float((a - b).abs().max()) for a, b in zip(mine, loaded, strict=True)]
    if max(diffs) > 1e-4:
        raise RuntimeError(f"HFSpeechEncoder(path={out}) does not reproduce the trained encoder (max diff {max(diffs)})")
    return {"teacher": "hubert_ctc", "path": str(out), "hidden_size": size["hidden"], "layers": size["layers"],
            "parameters": sum(p.numel() for p in model.parameters()), "steps": size["steps"],
            "train_seconds": round(seconds, 1), "heldout_cer": corpus_cer(refs, hyps),
            "loader_max_abs_diff": max(diffs), "example": {"ref": split["heldout"][0]["text"],
                                                          "hyp": ids_to_text(hyps[0])}}


def _whisper_parts(work: Path, smoke: bool):
    """(config, feature extractor) of the tiny Whisper: ``max_source_positions`` covers the longest utterance."""
    from transformers import WhisperConfig, WhisperFeatureExtractor

    split = load_split(work)
    longest = max(json.loads(line)["duration"] for line in Path(split["manifest"]).read_text().splitlines() if line)
    chunk = math.ceil(longest + 0.1)  # seconds; 100 mel frames/s, 2 mel frames per encoder frame
    size = sizes(smoke)["whisper"]
    config = WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=size["d_model"], encoder_layers=size["layers"],
                           encoder_attention_heads=4, encoder_ffn_dim=4 * size["d_model"], decoder_layers=1,
                           decoder_attention_heads=4, decoder_ffn_dim=2 * size["d_model"],
                           max_source_positions=50 * chunk, max_target_positions=64, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, begin_suppress_tokens=None,
                           suppress_tokens=None, dropout=0.05)
    return config, WhisperFeatureExtractor(feature_size=80, sampling_rate=SAMPLE_RATE, chunk_length=chunk)


def whisper_features(extractor, waves: Sequence[Tensor]) -> Tensor:
    """Whisper log-mel ``[N, 80, 2 * max_source_positions]`` of waveforms (padded to the chunk)."""
    return extractor([w.numpy() for w in waves], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features


def train_whisper(work: Path, smoke: bool) -> dict:
    """Tiny Whisper encoder + linear CTC head on characters; saved as a WhisperModel directory."""
    from transformers import WhisperModel

    size, out = sizes(smoke)["whisper"], work / "teachers" / "whisper_ctc"
    torch.manual_seed(0)
    split = load_split(work)
    config, extractor = _whisper_parts(work, smoke)
    model = WhisperModel(config)
    encoder = model.get_encoder()
    head = torch.nn.Linear(config.d_model, len(CHARS) + 1)
    train_w, held_w = load_waveforms(split["train"]), load_waveforms(split["heldout"])
    train_mel = whisper_features(extractor, train_w)
    train_t = [text_to_ids(it["text"]) for it in split["train"]]
    frames = lambda w: min(config.max_source_positions, w.numel() // 320 + 1)  # noqa: E731

    def forward(idx: list[int]) -> tuple[Tensor, Tensor]:
        hidden = encoder(train_mel[idx]).last_hidden_state
        return head(hidden).log_softmax(-1), torch.tensor([frames(train_w[i]) for i in idx])

    start = time.time()
    model.train()
    _ctc_train(forward, [w.numel() for w in train_w], train_t, [*encoder.parameters(), *head.parameters()],
               size["steps"], size["batch"], 2e-3, "whisper_ctc")
    seconds = time.time() - start
    model.eval()
    held_mel = whisper_features(extractor, held_w)
    with torch.no_grad():
        logits = head(encoder(held_mel).last_hidden_state)
    hyps = [greedy_ctc(logits[i, :frames(w)].argmax(-1).tolist()) for i, w in enumerate(held_w)]
    refs = [text_to_ids(it["text"]) for it in split["heldout"]]
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    torch.save(head.state_dict(), out / "ctc_head.pt")
    (out / "chars.json").write_text(json.dumps({"blank": BLANK, "chars": CHARS}) + "\n")
    reloaded = WhisperModel.from_pretrained(out).eval()
    with torch.no_grad():
        diff = float((reloaded.get_encoder()(held_mel[:2]).last_hidden_state
                      - encoder(held_mel[:2]).last_hidden_state).abs().max())
    if diff > 1e-4:
        raise RuntimeError(f"WhisperModel.from_pretrained({out}) does not reproduce the trained encoder ({diff})")
    adapter_diff = whisper_adapter_diff(out, held_w[:2], encoder(held_mel[:2]).last_hidden_state.detach())
    return {"teacher": "whisper_ctc", "path": str(out), "d_model": config.d_model, "layers": config.encoder_layers,
            "max_source_positions": config.max_source_positions,
            "parameters": sum(p.numel() for p in encoder.parameters()), "steps": size["steps"],
            "train_seconds": round(seconds, 1), "heldout_cer": corpus_cer(refs, hyps), "loader_max_abs_diff": diff,
            "adapter_max_abs_diff": adapter_diff,
            "example": {"ref": split["heldout"][0]["text"], "hyp": ids_to_text(hyps[0])}}


def whisper_adapter_diff(path: Path, waves: Sequence[Tensor], expected: Tensor) -> float | None:
    """Max |difference| between ``HFWhisperEncoder(path=...)`` on waveforms and the trained encoder on the
    feature extractor's log-mel (``expected`` ``[N, T_enc, D]``); None if that adapter is not available."""
    try:
        from lit_distill.models import HFWhisperEncoder
    except ImportError:
        return None
    adapter = HFWhisperEncoder(path=str(path)).eval()
    with torch.no_grad():
        got = torch.cat([adapter(waveform=w[None, None]).features["last_hidden_state"] for w in waves])
    return float((got - expected).abs().max())


def train_lm(work: Path, smoke: bool) -> dict:
    """WordPiece tokenizer + tiny Llama on the training transcripts (+ local prose, held-out excluded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from datamodules.speech_corpus import english_sentences
    from datamodules.tokenizer_training import load_tokenizer, train_tokenizer
    from lit_distill.models import HFCausalLM

    size, out = sizes(smoke)["lm"], work / "teachers" / "lm"
    torch.manual_seed(0)
    split = load_split(work)
    held = {it["text"] for it in split["heldout"]}
    train_texts = [it["text"] for it in split["train"]]
    # english_sentences falls back to (and mixes in) its built-in list when asked for more than it finds
    extra = [s for s in english_sentences(size["extra"], seed=1) if s not in held and s not in set(train_texts)]
    texts = train_texts + extra
    # early stopping on a dev slice of the TRAINING text (the held-out transcripts stay unseen)
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    n_dev = max(2, len(texts) // 20)
    dev, fit_texts = [texts[i] for i in order[:n_dev]], [texts[i] for i in order[n_dev:]]
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_text.txt").write_text("\n".join(texts) + "\n")
    train_tokenizer([out / "train_text.txt"], out, vocab_size=size["vocab"], algorithm="wordpiece")
    tok = load_tokenizer(str(out))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=size["hidden"], intermediate_size=2 * size["hidden"],
                         num_hidden_layers=size["layers"], num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, tie_word_embeddings=False, attention_dropout=0.1)
    model = LlamaForCausalLM(config)

    def encode(batch_texts: list[str]) -> tuple[Tensor, Tensor]:
        # as the speech datamodule feeds the teacher: no BOS; EOS appended here for the LM objective
        ids = [tok(t)["input_ids"][:127] + [tok.eos_token_id] for t in batch_texts]
        x, lengths = pad_sequences([torch.tensor(i) for i in ids], tok.pad_token_id)
        mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long()
        return x, mask

    def nll(batch_texts: list[str]) -> tuple[Tensor, int]:
        x, mask = encode(batch_texts)
        logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]
        labels = x[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum"), int((labels >= 0).sum())

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = _schedule(opt, size["steps"], max(1, size["steps"] // 20))
    rng, start = random.Random(0), time.time()
    best = (math.inf, 0, None)
    for step in range(size["steps"]):
        model.train()
        loss, n = nll(rng.sample(fit_texts, min(size["batch"], len(fit_texts))))
        opt.zero_grad()
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == size["steps"]:
            model.eval()
            with torch.no_grad():
                dev_total, dev_count = nll(dev)
            dev_nll = float(dev_total) / dev_count
            if dev_nll < best[0]:
                best = (dev_nll, step + 1, {k: v.clone() for k, v in model.state_dict().items()})
            print(f"[lm] step {step + 1}/{size['steps']} nll {loss.item() / n:.3f} dev {dev_nll:.3f} "
                  f"({time.time() - start:.0f}s)", flush=True)
    seconds = time.time() - start
    model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad():
        total, count = nll(sorted(held))
        train_total, train_count = nll(fit_texts[:64])
    model.save_pretrained(out)
    adapter = HFCausalLM(path=str(out), output_hidden_states=True, vocab_size=len(tok))  # loads as the configs do
    if adapter.output_size != len(tok):
        raise RuntimeError(f"HFCausalLM(path={out}) has {adapter.output_size} outputs for {len(tok)} tokens")
    return {"teacher": "lm", "path": str(out), "hidden_size": size["hidden"], "layers": size["layers"],
            "vocab_size": len(tok), "parameters": sum(p.numel() for p in model.parameters()),
            "train_sentences": len(fit_texts), "dev_sentences": len(dev), "steps": size["steps"],
            "best_step": best[1], "dev_perplexity": math.exp(best[0]), "train_seconds": round(seconds, 1),
            "heldout_perplexity": math.exp(float(total) / count),
            "train_perplexity": math.exp(float(train_total) / train_count)}


TEACHERS = {"hubert_ctc": train_hubert, "whisper_ctc": train_whisper, "lm": train_lm}


def _teacher_job(job: tuple[str, str, bool]) -> dict:
    name, work, smoke = job
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result_path = Path(work) / "teachers" / name / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    result = TEACHERS[name](Path(work), smoke)
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[teachers] {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()
                                            if isinstance(v, float)), flush=True)
    return result


def _pool(fn, jobs: list, workers: int) -> list:
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with mp.get_context("spawn").Pool(min(workers, len(jobs)), maxtasksperchild=1) as pool:
        return pool.map(fn, jobs, chunksize=1)


def stage_teachers(work: Path, smoke: bool, jobs: int, names: Sequence[str] = tuple(TEACHERS)) -> dict[str, dict]:
    """Train the teachers ``names`` (default all three; in parallel processes, one thread each)."""
    results = _pool(_teacher_job, [(name, str(work), smoke) for name in names], jobs)
    return {r["teacher"]: r for r in results}


# ----------------------------------------------------------------------------- arms
def derive_config(arm: str, seed: int, work: Path, teachers: dict[str, dict], max_steps: int, batch_size: int) -> dict:
    """The arm's YAML as a dict with the shared budget, data and the trained teachers filled in."""
    import yaml

    base = yaml.safe_load(ARMS["codec"].read_text())
    cfg = yaml.safe_load(ARMS[arm].read_text())
    model = cfg["model"]["init_args"]
    student = model["student"]["init_args"]
    for key, value in STUDENT.items():
        if key == "strides" or key in student:
            student[key] = value
    if "semantic_codebook_size" in student:  # LM-SPT: 1 semantic + Q - 1 acoustic codebooks = the same bitrate
        student["semantic_codebook_size"] = STUDENT["codebook_size"]
        student["num_quantizers"] = STUDENT["num_quantizers"] - 1
    if "quantizer_dropout" in student:  # the codec arm trains every quantiser on every batch
        student["quantizer_dropout"] = 0.0
    losses = model["losses"]
    for name in SHARED_TERMS:
        losses[name] = base["model"]["init_args"]["losses"][name]
    model["optimizer"] = base["model"]["init_args"]["optimizer"]
    model.pop("scheduler", None)
    hubert = {"path": teachers["hubert_ctc"]["path"], "normalize": True}
    lm = {"path": teachers["lm"]["path"], "output_hidden_states": True}
    data = cfg["data"]["init_args"]
    teacher = model.get("teacher")
    if arm in ("dm_sm", "dm_sm_t"):
        teacher["init_args"]["model"]["init_args"] = hubert
        if arm == "dm_sm_t":
            losses["distill"]["init_args"]["mode"] = "t_axis"
    elif arm == "dm_lm":
        teacher["init_args"]["model"]["init_args"] = lm
        data["teacher_tokenizer"] = lm["path"]
    elif arm == "dm_combined":
        members = teacher["init_args"]["model"]["init_args"]["members"]
        members["speech"]["init_args"], members["text"]["init_args"] = hubert, lm
        data.update(teacher_tokenizer=lm["path"], teacher_waveform=True)
    for term in losses.values():
        args = term.get("init_args", {})
        if "teacher_dim" in args:
            source = str(args.get("sources", {}).get("teacher_features", ""))
            text = arm == "dm_lm" or ".text." in source
            args["teacher_dim"] = teachers["lm" if text else "hubert_ctc"]["hidden_size"]
        if isinstance(args.get("encoder"), dict):  # LM-SPT's ASR encoder
            enc_args = {k: v for k, v in args["encoder"].get("init_args", {}).items() if k not in ("config", "path")}
            args["encoder"]["init_args"] = {**enc_args, "path": teachers["whisper_ctc"]["path"]}
    cfg["seed_everything"] = seed
    trainer = cfg["trainer"]
    trainer.update(max_steps=max_steps, max_epochs=-1, default_root_dir=str(work / "runs" / f"{arm}_s{seed}"),
                   enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                   num_sanity_val_steps=0, log_every_n_steps=25)
    data.update(manifest=load_split(work)["manifest"], synthesize=False, val_fraction=VAL_FRACTION,
                split_seed=SPLIT_SEED, seed=seed, crop_seconds=None, val_crop="full", batch_size=batch_size)
    return cfg


def last_checkpoint(run_dir: Path, max_steps: int) -> Path | None:
    """The run's ``last.ckpt`` if it reached ``max_steps``."""
    for path in sorted(run_dir.rglob("last.ckpt")):
        if torch.load(path, map_location="cpu", weights_only=True).get("global_step") == max_steps:
            return path
    return None


def _fit(job: dict) -> dict:
    run_dir = Path(job["run_dir"])
    done = run_dir / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    ckpt = last_checkpoint(run_dir, job["max_steps"])
    seconds = None
    if ckpt is None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        start = time.time()
        with open(run_dir / "fit.log", "w") as log:
            rc = subprocess.run([sys.executable, "-m", "lit_distill", "fit", "--config", job["config"]], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        seconds = round(time.time() - start, 1)
        ckpt = last_checkpoint(run_dir, job["max_steps"])
        if rc != 0 or ckpt is None:
            tail = (run_dir / "fit.log").read_text().splitlines()[-15:]
            print(f"[arms] {run_dir.name} FAILED (exit {rc}); log tail:\n  " + "\n  ".join(tail), flush=True)
            return {**job, "failed": True}
    result = {**job, "checkpoint": str(ckpt), "fit_seconds": seconds}
    done.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[arms] {run_dir.name}: {job['max_steps']} steps in {seconds}s", flush=True)
    return result


def available_arms(arms: Sequence[str]) -> list[str]:
    """The requested arms whose config exists (a note for each that does not)."""
    kept = []
    for arm in arms:
        if ARMS[arm].is_file():
            kept.append(arm)
        else:
            print(f"[arms] skipping {arm}: {ARMS[arm].relative_to(REPO)} does not exist yet")
    return kept


def stage_arms(work: Path, arms: Sequence[str], seeds: Sequence[int], max_steps: int, batch_size: int,
               jobs: int) -> list[dict]:
    """Write each arm x seed's derived YAML and fit it in a subprocess (``jobs`` at a time)."""
    import yaml

    teachers = {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in TEACHERS}
    todo = []
    for seed in seeds:
        for arm in available_arms(arms):
            run_dir = work / "runs" / f"{arm}_s{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            config = run_dir / "config.yaml"
            cfg = derive_config(arm, seed, work, teachers, max_steps, batch_size)
            config.write_text(yaml.safe_dump(cfg, sort_keys=False))
            todo.append({"arm": arm, "seed": seed, "max_steps": max_steps, "batch_size": batch_size,
                         "run_dir": str(run_dir), "config": str(config)})
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(_fit, todo))


# ----------------------------------------------------------------------------- evaluation
def _tokens_and_targets(split: dict) -> tuple[list[list[int]], list[list[int]]]:
    return [text_to_ids(it["text"]) for it in split["train"]], [text_to_ids(it["text"]) for it in split["heldout"]]


def teacher_features(work: Path) -> dict[str, list[Tensor]]:
    """The SM teacher's last hidden states ``[F', D]`` per utterance (batch 1, no padding), cached."""
    cache = work / "eval" / "hubert_features.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from lit_distill.models import HFSpeechEncoder

    split = load_split(work)
    encoder = HFSpeechEncoder(path=str(work / "teachers" / "hubert_ctc"), normalize=True).eval()
    feats = {}
    with torch.no_grad():
        for part in ("train", "heldout"):
            feats[part] = [encoder(waveform=w[None, None]).hidden_states[-1][0]
                           for w in load_waveforms(split[part])]
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats


def probe_tokens(train_tok: list[Tensor], held_tok: list[Tensor], vocab: int, work: Path, smoke: bool) -> dict:
    """Both probes and codebook statistics for per-utterance token sequences of the two splits."""
    split = load_split(work)
    train_t, held_t = _tokens_and_targets(split)
    feats = teacher_features(work)
    table = fit_ctc_probe(train_tok, train_t, vocab, steps=sizes(smoke)["probe_steps"])
    stretch = lambda fs, toks: [interpolate_frames(f, len(t)) for f, t in zip(fs, toks, strict=True)]  # noqa: E731
    weights, mean = fit_ridge_probe(train_tok, stretch(feats["train"], train_tok), vocab)
    stats = codebook_stats(held_tok, vocab)
    return {**eval_ctc_probe(table, held_tok, held_t),
            "sm_r2": ridge_r2(weights, mean, held_tok, stretch(feats["heldout"], held_tok)),
            "cb0_usage": stats["usage"], "cb0_perplexity": stats["perplexity"]}


def evaluate_run(job: tuple[dict, str, bool]) -> dict:
    """Reconstruction metrics and probes of one finished run on the held-out utterances."""
    run, work_s, smoke = job
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lit_distill.export import build_student, load_checkpoint_file
    from lit_distill.losses.audio import MultiResolutionMelLoss, si_snr

    work = Path(work_s)
    out = Path(run["run_dir"]) / "eval.json"
    if out.is_file():
        return json.loads(out.read_text())
    start = time.time()
    student = build_student(load_checkpoint_file(run["checkpoint"], "checkpoint")).eval()
    # the first codebook: LM-SPT's semantic VQ, else RVQ layer 0 (the same size in this experiment)
    first = getattr(student, "semantic_quantizer", None)
    vocab = int(first.codebook_size if first is not None else student.codebook_size)
    split = load_split(work)
    mel = MultiResolutionMelLoss(SAMPLE_RATE, fft_sizes=[1024], n_mels=80)
    tokens: dict[str, list[Tensor]] = {}
    mel_l1, snr = [], []
    with torch.no_grad():
        for part in ("train", "heldout"):
            tokens[part] = []
            for w in load_waveforms(split[part]):
                if part == "train":  # tokens only: the encoder and quantisers, no decoder
                    tokens[part].append(student.encode(w[None, None])[0, 0].clone())
                else:
                    features = student(waveform=w[None, None]).features
                    tokens[part].append(features["codes"][0, 0].clone())
                    rec = features["reconstruction"]
                    mel_l1.append(float(mel(rec, w[None, None])))
                    snr.append(float(si_snr(rec, w[None, None])[0]))
    result = {"arm": run["arm"], "seed": run["seed"], "log_mel_l1": statistics.fmean(mel_l1),
              "si_snr_db": statistics.fmean(snr),
              **probe_tokens(tokens["train"], tokens["heldout"], vocab, work, smoke),
              "eval_seconds": round(time.time() - start, 1), "fit_seconds": run.get("fit_seconds")}
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[evaluate] {run['arm']} seed {run['seed']}: " + ", ".join(
        f"{k} {v:.3g}" for k, v in result.items() if isinstance(v, float)), flush=True)
    return result


def reference_rows(work: Path, smoke: bool) -> list[dict]:
    """Probes on k-means units of the SM teacher and on random tokens, plus the teachers' own CER."""
    path = work / "eval" / "references.json"
    if path.is_file():
        return json.loads(path.read_text())
    vocab = STUDENT["codebook_size"]
    feats = teacher_features(work)
    # centred float64: the teacher's frames share a large common component, and float32 distances lose
    # the small differences between them
    centre = torch.cat(feats["train"]).double().mean(0)
    feats = {part: [f.double() - centre for f in fs] for part, fs in feats.items()}
    centroids = kmeans(torch.cat(feats["train"]), vocab, sizes(smoke)["kmeans_iters"])
    codec_frames = lambda f: len(f) + 1  # noqa: E731 - ceil(T / 320) codec frames vs ~T / 320 - 1 teacher frames
    units = {part: [stretch_tokens(torch.cdist(f, centroids).argmin(1), codec_frames(f)) for f in feats[part]]
             for part in feats}
    g = torch.Generator().manual_seed(0)
    rand = {part: [torch.randint(vocab, (codec_frames(f),), generator=g) for f in feats[part]] for part in feats}
    teachers = {name: json.loads((work / "teachers" / name / "result.json").read_text()) for name in TEACHERS}
    rows = [{"arm": "ref_hubert_units", "label": f"reference: k-means({vocab}) units of the SM teacher",
             **probe_tokens(units["train"], units["heldout"], vocab, work, smoke)},
            {"arm": "ref_random", "label": "reference: uniformly random tokens (chance)",
             **probe_tokens(rand["train"], rand["heldout"], vocab, work, smoke)},
            {"arm": "ref_hubert_ctc", "label": "reference: SM teacher's own CTC head",
             "ctc_cer": teachers["hubert_ctc"]["heldout_cer"]},
            {"arm": "ref_whisper_ctc", "label": "reference: Whisper-CTC teacher's own CTC head",
             "ctc_cer": teachers["whisper_ctc"]["heldout_cer"]}]
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def stage_evaluate(work: Path, arms: Sequence[str], seeds: Sequence[int], jobs: int, smoke: bool) -> list[dict]:
    """Evaluate every finished run of the requested arms and seeds, and the reference rows."""
    teacher_features(work)  # cache once, before the parallel workers read it
    reference_rows(work, smoke)
    runs = []
    for arm in arms:
        for seed in seeds:
            done = work / "runs" / f"{arm}_s{seed}" / "done.json"
            if done.is_file():
                runs.append(json.loads(done.read_text()))
    return _pool(evaluate_run, [(r, str(work), smoke) for r in runs], jobs)


# ----------------------------------------------------------------------------- report
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


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["corpus", "teachers", "arms", "evaluate", "report", "all"])
    parser.add_argument("--work-dir", default=None, help=f"results (default {DEFAULT_WORK.relative_to(REPO)}; "
                                                         "--smoke: its sibling experiment_smoke)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=None, help="training steps of every codec run")
    parser.add_argument("--batch-size", type=int, default=None, help="utterances per batch of every codec run")
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes, one thread each")
    parser.add_argument("--smoke", action="store_true", help="tiny everything (< 2 min) to test the pipeline")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    size = sizes(args.smoke)
    work = Path(args.work_dir) if args.work_dir else (
        DEFAULT_WORK.with_name("experiment_smoke") if args.smoke else DEFAULT_WORK)
    work.mkdir(parents=True, exist_ok=True)
    seeds = [0] if args.smoke and args.seeds == [0, 1, 2] else args.seeds
    max_steps = args.max_steps or size["max_steps"]
    batch_size = args.batch_size or size["batch_size"]
    meta = {"max_steps": max_steps, "batch_size": batch_size, "student": STUDENT, "seeds": seeds,
            "smoke": args.smoke, "command": " ".join(["scripts/experiment_speech.py", *(argv or sys.argv[1:])])}
    stages = ["corpus", "teachers", "arms", "evaluate", "report"] if args.stage == "all" else [args.stage]
    start = time.time()
    for stage in stages:
        t0 = time.time()
        if stage == "corpus":
            stage_corpus(work, args.smoke)
        elif stage == "teachers":
            stage_teachers(work, args.smoke, args.jobs)
        elif stage == "arms":
            stage_arms(work, args.arms, seeds, max_steps, batch_size, args.jobs)
        elif stage == "evaluate":
            stage_evaluate(work, available_arms(args.arms), seeds, args.jobs, args.smoke)
        else:
            stage_report(work, args.arms, seeds, meta, work / "speech_codecs" if args.smoke else DOC)
        print(f"== {stage} finished in {time.time() - t0:.0f}s (total {time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
