"""DM-Codec in one command: a speech codec distilled from a speech model, a language model, or both.

The method is configuration (``configs/speech/dm_codec/``): a ``ConvCodec`` student whose RVQ
layer 0 is projected to the teacher's width and matched to the teacher's hidden states with
``CodecFeatureDistillation`` (cosine along time), beside the codec's reconstruction and
commitment terms. The three modes:

- ``sm``: a speech model (HuBERT / WavLM) on the waveform;
- ``lm``: a language model on the transcript, its token states stretched over the codec frames;
- ``combined``: both (``lit_distill.models.MultiModel``), the two terms averaged.

This file picks the mode's config, stacks the adversarial overlay when asked
(``configs/speech/overlays/adversarial.yaml``: the multi-scale STFT discriminator of
:mod:`recipes.codec_gan`), supplies a transcript tokenizer when the config's is missing (one
trained on the corpus's transcripts, handed to ``fit`` as flags), fits, exports the codec and
prints its metrics::

    python -m recipes.dm_codec --mode sm
    python -m recipes.dm_codec --mode combined --adversarial --trainer.max_epochs=50
    python -m recipes.dm_codec --config configs/speech/dm_codec/codec_from_hubert-base.yaml

which is ``python -m lit_distill fit --config MODE_CONFIG [--config adversarial.yaml]
[tokenizer flags] [your flags]`` then ``export``. ``fit`` saves the config it ran (everything
merged) as ``config.yaml`` beside the run's logs under ``<workdir>/run``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from lit_distill.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "speech" / "dm_codec"
MODE_CONFIGS = {"sm": CONFIGS / "codec_from_hubert-tiny_synth.yaml",
                "lm": CONFIGS / "codec_from_tiny-lm_synth.yaml",
                "combined": CONFIGS / "codec_from_hubert-tiny+tiny-lm_synth.yaml"}
ADVERSARIAL = REPO / "configs" / "speech" / "overlays" / "adversarial.yaml"
REPORTED = ("val/mel_distance", "val/si_snr", "val/codebook_perplexity", "val/loss")


def text_teachers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every ``HFCausalLM`` teacher of a parsed config (the member of a ``MultiModel`` too), as
    ``{dotted field of its init_args: its init_args}``, so that flags can set a tokenizer's size
    and pad id on them."""
    field = "model.init_args.teacher.init_args.model"
    teacher = ((config.get("model") or {}).get("init_args") or {}).get("teacher") or {}
    model = (teacher.get("init_args") or {}).get("model") or {}
    members = (model.get("init_args") or {}).get("members")
    candidates = {f"{field}.init_args.members.{name}": m for name, m in members.items()} \
        if isinstance(members, dict) else {field: model}
    return {f"{path}.init_args": m.get("init_args") or {} for path, m in candidates.items()
            if isinstance(m, dict) and str(m.get("class_path", "")).endswith("HFCausalLM")}


def supply_tokenizer(config: dict[str, Any], workdir: Path, manifest: str | None = None,
                     vocab_size: int = 1024) -> list[str]:
    """Train a transcript tokenizer when the config names a local one (a path with a leading ``/``
    or ``.``, or two slashes or more: hub ids have one at most) that does not exist.

    The corpus is synthesised first when the config asks for it. The tokenizer (WordPiece, at
    most ``vocab_size`` entries) is trained on the TRAINING manifest's transcripts into
    ``workdir/tokenizer``. The config is only read.

    Args:
        config: the parsed config.
        workdir: where the transcripts and the tokenizer are written.
        manifest: the manifest ``fit`` will read when a flag overrides the config's.
        vocab_size: the tokenizer's maximum size.

    Returns:
        ``fit`` flags that use it: ``--data.init_args.teacher_tokenizer`` and every text
        teacher's ``vocab_size`` / ``pad_token_id``; none when nothing was needed.
    """
    data = (config.get("data") or {}).get("init_args") or {}
    name = data.get("teacher_tokenizer")
    # a hub id has at most one slash; anything else names a local path
    local = name is not None and (name.startswith((".", "/")) or name.count("/") >= 2)
    if not local or Path(name).exists():
        return []
    from datamodules.speech import read_manifest, synthesize_speech_corpus
    from datamodules.tokenizer_training import load_tokenizer, train_tokenizer

    manifest = manifest or data.get("manifest")
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
    flags = [f"--data.init_args.teacher_tokenizer={out}"]
    for field, args in text_teachers(config).items():
        flags += [f"--{field}.vocab_size={max(len(tokenizer), int(args.get('vocab_size') or 0))}",
                  f"--{field}.pad_token_id={tokenizer.pad_token_id}"]
    print(f"note: {name} does not exist; trained a {len(tokenizer)}-token transcript tokenizer into {out}")
    return flags


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``args`` (``--flag=v`` or ``--flag v``), else None."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def parser() -> argparse.ArgumentParser:
    """The recipe's own options; every other flag goes to ``fit``."""
    parser = argparse.ArgumentParser(
        prog="python -m recipes.dm_codec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --x.y=z flag is passed to `python -m lit_distill fit` after the configs (so it wins),\n"
               "e.g. --trainer.max_epochs=50 or --model.init_args.step.init_args.feature_weight=2;\n"
               "`python -m lit_distill fit --help` lists them all.")
    parser.add_argument("--mode", choices=sorted(MODE_CONFIGS), default="sm",
                        help="which teacher guides the codec (default: sm)")
    parser.add_argument("--config", default=None, help="a DM-Codec config instead of the mode's default")
    parser.add_argument("--adversarial", action="store_true",
                        help=f"stack {ADVERSARIAL.relative_to(REPO)} (recipes.codec_gan.AdversarialStep)")
    parser.add_argument("--disc-start-step", type=int, default=None,
                        help="with --adversarial: generator step from which the adversarial terms count "
                             "(default: the overlay's, 0)")
    parser.add_argument("--workdir", default=None, help="run, tokenizer and export go here "
                        "(default: artifacts/speech/dm_codec/<mode>)")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Entry point of ``python -m recipes.dm_codec``; returns the export dir and final metrics."""
    ns, extra = parser().parse_known_args(argv)
    from lit_distill.pipeline import fit_and_export

    path = Path(ns.config) if ns.config else MODE_CONFIGS[ns.mode]
    if not path.is_file():
        raise ConfigError(f"--config: '{path}' does not exist")
    if ns.disc_start_step is not None and not ns.adversarial:
        raise ConfigError("--disc-start-step: only with --adversarial")
    workdir = Path(ns.workdir or f"artifacts/speech/dm_codec/{ns.mode}")
    args = ["--config", str(path)]
    if ns.adversarial:
        args += ["--config", str(ADVERSARIAL)]
        if ns.disc_start_step is not None:
            args.append(f"--model.init_args.step.init_args.disc_start_step={ns.disc_start_step}")
    if flag_value(extra, "--data.init_args.teacher_tokenizer") is None:
        # the tokenizer is trained on the manifest that will be used
        args += supply_tokenizer(yaml.safe_load(path.read_text()), workdir,
                                 flag_value(extra, "--data.init_args.manifest"))
    result = fit_and_export([*args, *extra], str(workdir / "run"), str(workdir / "codec"))
    export, metrics = result["export"], result["metrics"]
    print(f"codec exported to {export}")
    print("  ".join(f"{k} {metrics[k]:.4f}" for k in REPORTED if k in metrics))
    return result


if __name__ == "__main__":
    main()
