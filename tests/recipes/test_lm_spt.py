"""LM-SPT from YAML: the recipe's 2-step fit, frame-rate arithmetic of the configs, tokenize/decode."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from datamodules.speech import read_audio, synthesize_speech_corpus
from lit_distill.cli import run_cli
from lit_distill.codec_cli import decode_files, load_codec, tokenize_files
from lit_distill.models import LMSPTCodec
from recipes.lm_spt import FRAME_RATES, config_path, fit_args, main, run

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
             "Two birds were building a nest under the roof.", "We walked along the beach at sunset."]


@pytest.mark.parametrize(("rate", "hop"), [("25", 640), ("12.5", 1280), ("6.25", 2560)])
def test_config_frame_rate_arithmetic(rate, hop):
    config = yaml.safe_load(config_path(rate).read_text())
    student = config["model"]["init_args"]["student"]["init_args"]
    codec = LMSPTCodec(**student)
    assert codec.hop_length == hop and codec.frame_rate == float(rate) and codec.sample_rate == 16000
    assert config["data"]["init_args"]["sample_rate"] == 16000
    # the Whisper window covers the crops: 2 mel frames (of 160 samples) per encoder frame
    whisper = config["model"]["init_args"]["losses"]["semantic"]["init_args"]["encoder"]["init_args"]["config"]
    window_s = 2 * whisper["max_source_positions"] * 160 / 16000
    assert window_s >= config["data"]["init_args"]["crop_seconds"]
    assert FRAME_RATES[rate] in config["trainer"]["default_root_dir"]


def tiny_args(manifest: Path, max_steps: int) -> list[str]:
    return [f"--data.init_args.manifest={manifest}", "--data.init_args.synthesize=false",
            "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
            "--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dilations=[1]",
            f"--trainer.max_steps={max_steps}", "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false", "--trainer.num_sanity_val_steps=0"]


def test_recipe_fits_exports_and_tokenizes(tmp_path):
    manifest = synthesize_speech_corpus(tmp_path / "synth", SENTENCES, voices=["en-us"], speeds=[175])
    result = run("12.5", workdir=str(tmp_path / "work"), extra_args=tiny_args(manifest, 2))
    metrics = result["metrics"]
    for key in ("val/loss", "val/mel", "val/commit", "val/semantic_commit", "val/semantic", "val/si_snr",
                "val/codebook_usage_q0", "val/codebook_usage_q3"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["val/semantic"] > 0
    assert 0 < metrics["val/codebook_usage_q0"] <= 1
    assert (Path(result["export"]) / "model_state_dict.pt").exists()

    ckpt = next((tmp_path / "work" / "run").rglob("last.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert not any(".encoder.module." in k for k in state)  # the frozen Whisper encoder is not saved
    assert any(k.startswith("student.semantic_quantizer.") for k in state)

    codec = load_codec(str(ckpt))
    assert isinstance(codec, LMSPTCodec) and codec.num_quantizers == 4
    audio = sorted((tmp_path / "synth").rglob("*.wav"))[:2]
    written = tokenize_files(str(ckpt), [str(p) for p in audio], str(tmp_path / "codes"))
    record = torch.load(written[0], weights_only=True)
    waveform, rate = read_audio(audio[0])
    assert rate == 16000 and record["frame_rate"] == 12.5
    assert record["codes"].shape == (4, codec.num_frames(waveform.shape[-1])) and record["codes"].dtype == torch.int16
    wavs = decode_files(str(ckpt), [str(p) for p in written], str(tmp_path / "decoded"))
    decoded, decoded_rate = read_audio(wavs[0])
    expected = codec.decode(record["codes"].long()[None])[0, 0, : record["num_samples"]]
    assert decoded_rate == 16000 and decoded.shape[-1] == record["num_samples"]
    # 16-bit PCM: within one quantisation step of the clipped decoder output
    torch.testing.assert_close(decoded.reshape(-1), expected.clamp(-1, 1), atol=2 / 32768, rtol=0)


def test_realistic_config_names_the_hub_encoder():
    config = yaml.safe_load((REPO / "configs/speech/lm_spt/lm-spt-12.5hz_from_whisper-large-v3.yaml").read_text())
    encoder = config["model"]["init_args"]["losses"]["semantic"]["init_args"]["encoder"]
    assert encoder["class_path"] == "lit_distill.models.HFWhisperEncoder"
    assert encoder["init_args"]["path"] == "openai/whisper-large-v3" and encoder["init_args"]["sample_rate"] == 24000
    student = LMSPTCodec(**{**config["model"]["init_args"]["student"]["init_args"], "channels": 1, "dim": 2,
                            "max_channels": 2, "semantic_codebook_size": 4, "codebook_size": 4})
    assert student.frame_rate == 12.5 and student.hop_length == 1920


@pytest.mark.slow
def test_adversarial_recipe_fits_one_epoch(tmp_path):
    manifest = synthesize_speech_corpus(tmp_path / "synth", SENTENCES, voices=["en-us"], speeds=[175])
    # 3 training utterances in batches of 2: 2 batches, each stepping the discriminator and the codec
    result = run("25", adversarial=True, workdir=str(tmp_path / "work"), extra_args=tiny_args(manifest, 4))
    metrics = result["metrics"]
    for key in ("val/loss", "val/mel", "val/semantic", "val/si_snr"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    ckpt = torch.load(next((tmp_path / "work" / "run").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["training_step_state"] == {"generator_steps": 2} and len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("step.discriminator.") for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["step"]["init_args"]["feature_weight"] == 2.0
    assert (Path(result["export"]) / "model_state_dict.pt").exists()


def test_adversarial_overlays_stack_on_the_config(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", *fit_args("25", adversarial=True), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    step = config["model"]["init_args"]["step"]
    assert step["class_path"] == "recipes.codec_gan.AdversarialStep"
    # the paper's feature weight, the LM-SPT configs' learning rate
    assert (step["init_args"]["adversarial_weight"], step["init_args"]["feature_weight"]) == (1.0, 2.0)
    assert step["init_args"]["disc_optimizer"]["init_args"]["lr"] == 2.0e-4
    assert step["init_args"]["grad_clip"] == 1.0 and config["trainer"]["gradient_clip_val"] is None
    assert config["model"]["init_args"]["student"]["class_path"] == "lit_distill.models.LMSPTCodec"


def test_help_lists_the_recipe_options_and_where_the_rest_go(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--frame-rate", "--config", "--adversarial", "--workdir"):
        assert option in out, option
    assert "passed to `python -m lit_distill fit`" in out and "python -m lit_distill fit --help" in out


def test_lm_spt_overlay_is_the_generic_one_but_for_the_paper_weight_and_the_learning_rate():
    overlays = REPO / "configs" / "speech" / "overlays"
    generic = yaml.safe_load((overlays / "adversarial.yaml").read_text())
    lm_spt = yaml.safe_load((overlays / "adversarial_lm-spt.yaml").read_text())
    args = lm_spt["model"]["init_args"]["step"]["init_args"]
    assert (args.pop("feature_weight"), args["disc_optimizer"]["init_args"].pop("lr")) == (2.0, 2.0e-4)
    generic_args = generic["model"]["init_args"]["step"]["init_args"]
    del generic_args["feature_weight"], generic_args["disc_optimizer"]["init_args"]["lr"]
    assert lm_spt == generic
