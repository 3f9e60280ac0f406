"""DM-Codec in one command: a speech codec distilled from a speech model, a language model, or both.

The method is configuration (``configs/speech/dm_codec/``): a ``ConvCodec`` student whose RVQ
layer 0 is projected to the teacher's width and matched to the teacher's hidden states with
``CodecFeatureDistillation`` (cosine along time), beside the codec's reconstruction and
commitment terms. The three modes:

- ``sm``: a speech model (HuBERT / WavLM) on the waveform;
- ``lm``: a language model on the transcript, its token states stretched over the codec frames;
- ``combined``: both (``lit_distill.models.MultiModel``), the two terms averaged.

This file picks the mode's config, makes it adversarial when asked (the multi-scale STFT
discriminator of :mod:`recipes.codec_gan`), supplies a transcript tokenizer when the config's
is missing (one trained on the corpus's transcripts), fits, exports the codec and prints its
metrics::

    python -m recipes.dm_codec --mode sm
    python -m recipes.dm_codec --mode combined --adversarial --trainer.max_epochs=50
    python -m recipes.dm_codec --config configs/speech/dm_codec/codec_from_hubert-base.yaml

Any other flag goes to ``python -m lit_distill fit``. The config actually run is written to
``<workdir>/config.yaml``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lit_distill.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "speech" / "dm_codec"
MODE_CONFIGS = {"sm": CONFIGS / "codec_from_hubert-tiny_synth.yaml",
                "lm": CONFIGS / "codec_from_tiny-lm_synth.yaml",
                "combined": CONFIGS / "codec_from_hubert-tiny+tiny-lm_synth.yaml"}
REPORTED = ("val/mel_distance", "val/si_snr", "val/codebook_perplexity", "val/loss")


def text_members(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``init_args`` of every ``HFCausalLM`` teacher in a parsed config (the member of a
    ``MultiModel`` too), so that a tokenizer's size and pad id can be set on them."""
    teacher = ((config.get("model") or {}).get("init_args") or {}).get("teacher") or {}
    model = (teacher.get("init_args") or {}).get("model") or {}
    members = (model.get("init_args") or {}).get("members")
    candidates = list(members.values()) if isinstance(members, dict) else [model]
    return [m.setdefault("init_args", {}) for m in candidates
            if isinstance(m, dict) and str(m.get("class_path", "")).endswith("HFCausalLM")]


def supply_tokenizer(config: dict[str, Any], workdir: Path, vocab_size: int = 1024) -> Path | None:
    """Train a transcript tokenizer when the config names a local one (a path with a leading ``/``
    or ``.``, or two slashes or more: hub ids have one at most) that does not exist.

    The corpus is synthesised first when the config asks for it. The tokenizer (WordPiece, at
    most ``vocab_size`` entries) is trained on the TRAINING manifest's transcripts into
    ``workdir/tokenizer``; ``data.init_args.teacher_tokenizer`` and every text teacher's
    ``vocab_size`` / ``pad_token_id`` are set to match (in place).

    Returns:
        The tokenizer directory, or None when nothing was needed.
    """
    data = (config.get("data") or {}).get("init_args") or {}
    name = data.get("teacher_tokenizer")
    # a hub id has at most one slash; anything else names a local path
    local = name is not None and (name.startswith((".", "/")) or name.count("/") >= 2)
    if not local or Path(name).exists():
        return None
    from datamodules.speech import read_manifest, synthesize_speech_corpus
    from datamodules.tokenizer_training import load_tokenizer, train_tokenizer

    manifest = data.get("manifest")
    if manifest is None:
        raise ConfigError(f"data.init_args.teacher_tokenizer: '{name}' does not exist and there is no manifest "
                          "to train one on; give an existing tokenizer")
    if not Path(manifest).is_file():
        if not data.get("synthesize"):
            raise ConfigError(f"data.init_args.manifest: '{manifest}' does not exist")
        synthesize_speech_corpus(Path(manifest).parent, num_sentences=data.get("num_sentences", 64),
                                 sample_rate=data.get("sample_rate", 16000), seed=data.get("split_seed", 0))
    texts = workdir / "transcripts.txt"
    texts.parent.mkdir(parents=True, exist_ok=True)
    texts.write_text("\n".join(u.text for u in read_manifest(manifest)) + "\n")
    out = train_tokenizer([texts], workdir / "tokenizer", vocab_size=vocab_size, algorithm="wordpiece")
    tokenizer = load_tokenizer(str(out))
    data["teacher_tokenizer"] = str(out)
    for member in text_members(config):
        member.update(vocab_size=max(len(tokenizer), int(member.get("vocab_size") or 0)),
                      pad_token_id=tokenizer.pad_token_id)
    print(f"note: {name} does not exist; trained a {len(tokenizer)}-token transcript tokenizer into {out}")
    return out


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``args`` (``--flag=v`` or ``--flag v``), else None."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m recipes.dm_codec``; returns the export dir and final metrics."""
    parser = argparse.ArgumentParser(prog="python -m recipes.dm_codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=sorted(MODE_CONFIGS), default="sm",
                        help="which teacher guides the codec (default: sm)")
    parser.add_argument("--config", default=None, help="a DM-Codec config instead of the mode's default")
    parser.add_argument("--adversarial", action="store_true",
                        help="train with the multi-scale STFT discriminator (recipes.codec_gan)")
    parser.add_argument("--disc-start-step", type=int, default=0,
                        help="generator step from which the adversarial terms count")
    parser.add_argument("--workdir", default=None, help="run, config and export go here "
                        "(default: artifacts/speech/dm_codec/<mode>)")
    ns, extra = parser.parse_known_args(argv)
    from lit_distill.pipeline import fit_and_export
    from recipes.codec_gan import with_discriminator

    path = Path(ns.config) if ns.config else MODE_CONFIGS[ns.mode]
    if not path.is_file():
        raise ConfigError(f"--config: '{path}' does not exist")
    workdir = Path(ns.workdir or f"artifacts/speech/dm_codec/{ns.mode}")
    config = yaml.safe_load(path.read_text())
    if flag_value(extra, "--data.init_args.teacher_tokenizer") is None:
        manifest = flag_value(extra, "--data.init_args.manifest")
        if manifest is not None:  # the tokenizer is trained on the manifest that will be used
            config.setdefault("data", {}).setdefault("init_args", {})["manifest"] = manifest
        supply_tokenizer(config, workdir)
    if ns.adversarial:
        config = with_discriminator(config, disc_start_step=ns.disc_start_step)
    workdir.mkdir(parents=True, exist_ok=True)
    derived = workdir / "config.yaml"
    derived.write_text(yaml.safe_dump(config, sort_keys=False))
    result = fit_and_export(["--config", str(derived), *extra], str(workdir / "run"), str(workdir / "codec"))
    export, metrics = result["export"], result["metrics"]
    print(f"codec exported to {export}")
    print("  ".join(f"{k} {metrics[k]:.4f}" for k in REPORTED if k in metrics))
    return result


if __name__ == "__main__":
    main()
