"""LM-SPT in one command: fit a semantic + acoustic speech tokenizer, export it, print its metrics.

The method needs no new training step: ``configs/speech/lm_spt/*.yaml`` compose the codec
(:class:`lit_distill.models.LMSPTCodec`), the reconstruction and commitment terms and the indirect
semantic distillation (:class:`lit_distill.losses.IndirectSemanticDistillation`) for
:class:`lit_distill.DistillationModule`. With ``--adversarial`` the overlay
``configs/speech/overlays/adversarial_lm-spt.yaml`` is stacked on the config:
:class:`recipes.codec_gan.AdversarialStep` with a multi-scale STFT discriminator (paper weights:
adversarial 1, feature matching 2)::

    python -m recipes.lm_spt                                   # 12.5 Hz, the tiny synthesised setup
    python -m recipes.lm_spt --frame-rate 25 --adversarial
    python -m recipes.lm_spt --trainer.max_epochs=2            # any extra flag goes to `fit`

which is ``python -m lit_distill fit --config CONFIG [--config OVERLAY] [your flags]``, then
``export`` of its ``last.ckpt`` into ``WORKDIR/export``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "speech" / "lm_spt"
ADVERSARIAL = REPO / "configs" / "speech" / "overlays" / "adversarial_lm-spt.yaml"
FRAME_RATES = {"25": "lm-spt-25hz", "12.5": "lm-spt-12.5hz", "6.25": "lm-spt-6.25hz"}


def config_path(frame_rate: str) -> Path:
    """The tiny synthesised-corpus config of a frame rate (``25``, ``12.5`` or ``6.25``)."""
    return CONFIGS / f"{FRAME_RATES[frame_rate]}_from_whisper-tiny_synth.yaml"


def fit_args(frame_rate: str = "12.5", adversarial: bool = False, config: str | None = None) -> list[str]:
    """The ``--config`` arguments of a run: the frame rate's (or ``config``), then the adversarial overlay."""
    configs = [Path(config) if config is not None else config_path(frame_rate), *([ADVERSARIAL] if adversarial else [])]
    return [arg for path in configs for arg in ("--config", str(path))]


def run(frame_rate: str = "12.5", adversarial: bool = False, workdir: str = "artifacts/speech/lm_spt/recipe",
        config: str | None = None, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Fit, export, and return ``{"export": dir, "metrics": {val/...: float}}``."""
    from lit_distill.pipeline import fit_and_export

    return fit_and_export([*fit_args(frame_rate, adversarial, config), *extra_args], str(Path(workdir) / "run"),
                          str(Path(workdir) / "export"))


def parser() -> argparse.ArgumentParser:
    """The recipe's own options; every other flag goes to ``fit``."""
    parser = argparse.ArgumentParser(
        prog="python -m recipes.lm_spt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any other --x.y=z flag is passed to `python -m lit_distill fit` after the configs (so it wins),\n"
               "e.g. --trainer.max_epochs=2 or --model.init_args.step.init_args.disc_start_step=1000;\n"
               "`python -m lit_distill fit --help` lists them all.")
    parser.add_argument("--frame-rate", choices=sorted(FRAME_RATES), default="12.5",
                        help="tokens per second of the tiny synthesised-corpus config")
    parser.add_argument("--config", default=None, help="another LM-SPT config (overrides --frame-rate)")
    parser.add_argument("--adversarial", action="store_true",
                        help=f"stack {ADVERSARIAL.relative_to(REPO)} (recipes.codec_gan.AdversarialStep, "
                             "feature-matching weight 2)")
    parser.add_argument("--workdir", default="artifacts/speech/lm_spt/recipe", help="run and export go here")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m recipes.lm_spt``."""
    ns, extra = parser().parse_known_args(argv)
    result = run(ns.frame_rate, ns.adversarial, ns.workdir, ns.config, extra)
    print(f"exported the codec to {result['export']}")
    for key in sorted(result["metrics"]):
        print(f"{key} {result['metrics'][key]:.4f}")


if __name__ == "__main__":
    main()
