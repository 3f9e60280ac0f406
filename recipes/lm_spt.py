"""LM-SPT in one command: fit a semantic + acoustic speech tokenizer, export it, print its metrics.

The method needs no new training step: ``configs/speech/lm_spt/*.yaml`` compose the codec
(:class:`lit_distill.models.LMSPTCodec`), the reconstruction and commitment terms and the indirect
semantic distillation (:class:`lit_distill.losses.IndirectSemanticDistillation`) for
:class:`lit_distill.DistillationModule`. With ``--adversarial`` the same config runs under
:class:`recipes.codec_gan.CodecGANModule` with a multi-scale STFT discriminator (paper weights:
adversarial 1, feature matching 2)::

    python -m recipes.lm_spt                                   # 12.5 Hz, the tiny synthesised setup
    python -m recipes.lm_spt --frame-rate 25 --adversarial
    python -m recipes.lm_spt --trainer.max_epochs=2            # any extra flag goes to `fit`

which is ``fit --config CONFIG`` then ``export`` of its ``last.ckpt`` into ``WORKDIR/export``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "speech" / "lm_spt"
FRAME_RATES = {"25": "lm-spt-25hz", "12.5": "lm-spt-12.5hz", "6.25": "lm-spt-6.25hz"}


def config_path(frame_rate: str) -> Path:
    """The tiny synthesised-corpus config of a frame rate (``25``, ``12.5`` or ``6.25``)."""
    return CONFIGS / f"{FRAME_RATES[frame_rate]}_from_whisper-tiny_synth.yaml"


def run(frame_rate: str = "12.5", adversarial: bool = False, workdir: str = "artifacts/speech/lm_spt/recipe",
        config: str | None = None, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Fit, export, and return ``{"export": dir, "metrics": {val/...: float}}``."""
    from lit_distill.pipeline import fit_and_export
    from recipes.codec_gan import with_discriminator

    path = Path(config) if config is not None else config_path(frame_rate)
    if adversarial:
        os.makedirs(workdir, exist_ok=True)
        gan = Path(workdir) / f"{path.stem}_adversarial.yaml"
        config_dict = with_discriminator(yaml.safe_load(path.read_text()), feature_weight=2.0)  # the paper's 2
        gan.write_text(yaml.safe_dump(config_dict, sort_keys=False))
        path = gan
    return fit_and_export(["--config", str(path), *extra_args], str(Path(workdir) / "run"),
                          str(Path(workdir) / "export"))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m recipes.lm_spt``."""
    parser = argparse.ArgumentParser(prog="python -m recipes.lm_spt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame-rate", choices=sorted(FRAME_RATES), default="12.5",
                        help="tokens per second of the tiny synthesised-corpus config")
    parser.add_argument("--config", default=None, help="another LM-SPT config (overrides --frame-rate)")
    parser.add_argument("--adversarial", action="store_true",
                        help="train with the multi-scale STFT discriminator (recipes.codec_gan)")
    parser.add_argument("--workdir", default="artifacts/speech/lm_spt/recipe", help="run and export go here")
    ns, extra = parser.parse_known_args(argv)
    result = run(ns.frame_rate, ns.adversarial, ns.workdir, ns.config, extra)
    print(f"exported the codec to {result['export']}")
    for key in sorted(result["metrics"]):
        print(f"{key} {result['metrics'][key]:.4f}")


if __name__ == "__main__":
    main()
