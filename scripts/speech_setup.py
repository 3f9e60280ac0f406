"""The speech experiment's fixed setup (part of ``scripts/experiment_speech.py``): arms, the student
codec they share, sizes, the corpus and its train / held-out split.

The corpus is synthesised once with ``espeak-ng`` and split exactly as ``SpeechDataModule`` (and
``ASRDataModule``) split it with ``VAL_FRACTION`` and ``SPLIT_SEED``; ``corpus/split.json`` records
both halves so that every stage (teachers, codecs, probes) reads the same utterances.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

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
SAMPLE_RATE = 16000
VAL_FRACTION, SPLIT_SEED = 0.125, 0  # the speech configs' split
# The student codec every arm shares (ConvCodec args; an LM-SPT student gets those it has).
STUDENT = {"strides": [2, 4, 5, 8], "channels": 8, "max_channels": 256, "dim": 64, "dilations": [1, 3, 9],
           "num_quantizers": 4, "codebook_size": 256}


def sizes(smoke: bool) -> dict:
    """Every size knob of the experiment; ``smoke`` shrinks everything to seconds.

    The full teacher sizes are those of ``configs/speech/ctc/*.yaml`` (a test checks it).
    """
    if smoke:
        return {"sentences": 24, "hubert": {"hidden": 32, "layers": 1, "conv": 16, "steps": 6, "batch": 4},
                "whisper": {"d_model": 32, "layers": 1, "steps": 6, "batch": 4},
                "lm": {"hidden": 32, "layers": 1, "steps": 6, "batch": 8, "vocab": 128, "extra": 50},
                "max_steps": 3, "batch_size": 2, "probe_steps": 20, "kmeans_iters": 3}
    return {"sentences": 512, "hubert": {"hidden": 96, "layers": 3, "conv": 64, "steps": 850, "batch": 8},
            "whisper": {"d_model": 64, "layers": 2, "steps": 2000, "batch": 8},
            "lm": {"hidden": 64, "layers": 2, "steps": 1500, "batch": 32, "vocab": 512, "extra": 100000},
            "max_steps": 400, "batch_size": 4, "probe_steps": 120, "kmeans_iters": 10}


def load_split(work: Path) -> dict:
    """The split written by the ``corpus`` stage."""
    return json.loads((work / "corpus" / "split.json").read_text())


def load_waveforms(items: Sequence[dict]) -> list[Tensor]:
    """Mono 16 kHz waveforms ``[T]`` of split records."""
    from datamodules.speech import read_audio, to_mono

    return [to_mono(*read_audio(it["path"]), SAMPLE_RATE) for it in items]


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


def longest_seconds(work: Path) -> float:
    """Duration of the corpus's longest utterance (from its manifest)."""
    manifest = Path(load_split(work)["manifest"])
    return max(json.loads(line)["duration"] for line in manifest.read_text().splitlines() if line)
