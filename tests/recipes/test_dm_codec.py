"""DM-Codec: 2-step fits of the tiny speech-teacher (SM), text-teacher (LM) and combined configs; the recipe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from datamodules.speech import synthesize_speech_corpus
from datamodules.tokenizer_training import load_tokenizer, train_tokenizer
from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from lit_distill.models import HFCausalLM, HFSpeechEncoder

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "speech" / "dm_codec" / "codec_from_hubert-tiny_synth.yaml"
LM_CONFIG = REPO / "configs" / "speech" / "dm_codec" / "codec_from_tiny-lm_synth.yaml"
COMBINED_CONFIG = REPO / "configs" / "speech" / "dm_codec" / "codec_from_hubert-tiny+tiny-lm_synth.yaml"
TINY_CODEC = ["--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dilations=[1]",
              "--model.init_args.student.init_args.codebook_size=16"]
TWO_STEPS = ["--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
             "--trainer.num_sanity_val_steps=0"]
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
             "Two birds were building a nest under the roof.", "We walked along the beach at sunset."]


def test_tiny_hubert_teacher_fits_two_steps(tmp_path):
    manifest = synthesize_speech_corpus(tmp_path / "synth", SENTENCES, voices=["en-us"], speeds=[175])
    cli = run_cli([
        "--config", str(CONFIG), f"--data.init_args.manifest={manifest}",
        "--data.init_args.synthesize=false", "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
        "--data.init_args.crop_seconds=0.5",
        *TINY_CODEC, *TWO_STEPS, f"--trainer.default_root_dir={tmp_path / 'run'}",
    ], run=False)
    module = cli.model
    teacher = module.teacher
    assert isinstance(teacher.model, HFSpeechEncoder)
    # the config's frame-rate claim: teacher and codec both take 320 samples per frame
    assert teacher.model.total_stride == module.student.hop_length == 320
    projector = module.losses["distill"].projector
    assert (projector.in_features, projector.out_features) == (64, teacher.model.hidden_size)
    fit_and_check_distillation(cli, projector, teacher)


@pytest.fixture
def corpus_and_tokenizer(tmp_path):
    """A 4-sentence espeak corpus and a WordPiece tokenizer of its transcripts."""
    manifest = synthesize_speech_corpus(tmp_path / "synth", SENTENCES, voices=["en-us"], speeds=[175])
    (tmp_path / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    tok_dir = train_tokenizer([tmp_path / "texts.txt"], tmp_path / "tokenizer", vocab_size=96, algorithm="wordpiece")
    return manifest, tok_dir, load_tokenizer(str(tok_dir))


def test_tiny_lm_teacher_fits_two_steps(tmp_path, corpus_and_tokenizer):
    manifest, tok_dir, tok = corpus_and_tokenizer
    lm = "--model.init_args.teacher.init_args.model.init_args"
    cli = run_cli([
        "--config", str(LM_CONFIG), f"--data.init_args.manifest={manifest}",
        "--data.init_args.synthesize=false", "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
        f"--data.init_args.teacher_tokenizer={tok_dir}",
        f"{lm}.vocab_size={len(tok)}", f"{lm}.pad_token_id={tok.pad_token_id}",
        *TINY_CODEC, *TWO_STEPS, f"--trainer.default_root_dir={tmp_path / 'run'}",
    ], run=False)
    module, dm = cli.model, cli.datamodule
    teacher = module.teacher
    assert isinstance(teacher.model, HFCausalLM) and teacher.model.output_size == len(tok)
    distill = module.losses["distill"]
    assert distill.alignment == "interpolate" and distill.sources["teacher_mask"] == "batch.teacher_token_mask"
    projector = distill.projector
    assert (projector.in_features, projector.out_features) == (64, 32)

    # the teacher reads the transcript tokens, the codec the waveform
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    ids = batch["teacher_inputs"]["input_ids"]
    assert tok.decode(ids[0][batch["teacher_token_mask"][0]], skip_special_tokens=True) == batch["texts"][0]
    with torch.no_grad():
        student_out, teacher_out = module(batch)
    assert teacher_out.hidden_states[-1].shape == (*ids.shape, 32)
    assert student_out.features["layer_outputs.0"].shape[:2] == (batch["waveform"].shape[0], 64)

    fit_and_check_distillation(cli, projector, teacher)


def test_combined_teachers_fit_two_steps(tmp_path, corpus_and_tokenizer):
    """DM-Codec's combined mode: HuBERT on the waveform + LM on the transcript, one term each."""
    manifest, tok_dir, tok = corpus_and_tokenizer
    lm = "--model.init_args.teacher.init_args.model.init_args.members.text.init_args"
    cli = run_cli([
        "--config", str(COMBINED_CONFIG), f"--data.init_args.manifest={manifest}",
        "--data.init_args.synthesize=false", "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
        f"--data.init_args.teacher_tokenizer={tok_dir}", f"{lm}.vocab_size={len(tok)}",
        f"{lm}.pad_token_id={tok.pad_token_id}", *TINY_CODEC, *TWO_STEPS,
        f"--trainer.default_root_dir={tmp_path / 'run'}",
    ], run=False)
    module, dm = cli.model, cli.datamodule
    members = module.teacher.model.module
    assert isinstance(members["speech"], HFSpeechEncoder) and isinstance(members["text"], HFCausalLM)
    sm, lm_term = module.losses["distill_sm"], module.losses["distill_lm"]
    assert sm.weight == lm_term.weight == 60.0  # the paper's average of two 120-weighted terms
    assert (sm.alignment, lm_term.alignment) == ("position", "interpolate")

    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        student_out, teacher_out = module(batch)
    # each member saw its own inputs: frames of the waveform, tokens of the transcript
    ids = batch["teacher_inputs"]["input_ids"]
    speech_states = teacher_out.features["speech.hidden_states.-1"]
    assert teacher_out.features["text.hidden_states.-1"].shape == (*ids.shape, 32)
    expected = members["speech"](waveform=batch["waveform"]).hidden_states[-1]
    assert torch.equal(speech_states, expected)
    # the combined loss is exactly the weighted sum of the two single-teacher terms
    total, values = module.compute_losses(batch, student_out, teacher_out)
    others = sum(module.losses[n].weight * values[n] for n in ("mel", "wave", "commit"))
    assert torch.allclose(total, others + 60.0 * values["distill_sm"] + 60.0 * values["distill_lm"])

    lm_before = lm_term.projector.weight.detach().clone()
    fit_and_check_distillation(cli, sm.projector, module.teacher, distill_terms=("distill_sm", "distill_lm"))
    assert not torch.equal(lm_term.projector.weight.detach(), lm_before)


def test_recipe_trains_a_tokenizer_and_goes_adversarial(tmp_path):
    from recipes.dm_codec import main

    manifest = synthesize_speech_corpus(tmp_path / "synth", SENTENCES, voices=["en-us"], speeds=[175])
    config = yaml.safe_load(LM_CONFIG.read_text())
    config["data"]["init_args"]["teacher_tokenizer"] = str(tmp_path / "missing" / "tokenizer")
    (tmp_path / "lm.yaml").write_text(yaml.safe_dump(config))
    result = main(["--config", str(tmp_path / "lm.yaml"), "--adversarial", "--disc-start-step", "1",
                   "--workdir", str(tmp_path / "work"),
                   f"--data.init_args.manifest={manifest}", "--data.init_args.synthesize=false",
                   "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25", *TINY_CODEC,
                   "--trainer.max_steps=3", "--trainer.enable_progress_bar=false",
                   "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1"])
    work = tmp_path / "work"
    ran = yaml.safe_load(next((work / "run").rglob("config.yaml")).read_text())  # what fit merged and ran
    tok = load_tokenizer(str(work / "tokenizer"))
    # the config's tokenizer is missing: one was trained on this corpus and given to fit as flags
    assert ran["data"]["init_args"]["teacher_tokenizer"] == str(work / "tokenizer")
    teacher = ran["model"]["init_args"]["teacher"]["init_args"]["model"]["init_args"]
    assert teacher["pad_token_id"] == tok.pad_token_id and teacher["vocab_size"] >= len(tok)
    step = ran["model"]["init_args"]["step"]
    assert step["class_path"] == "recipes.codec_gan.AdversarialStep" and step["init_args"]["disc_start_step"] == 1
    assert ran["trainer"]["gradient_clip_val"] is None
    # 3 training utterances in batches of 2: generator, then discriminator + generator
    ckpt = torch.load(next((work / "run").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["training_step_state"] == {"generator_steps": 2}
    assert (Path(result["export"]) / "model_state_dict.pt").is_file()
    for key in ("val/mel_distance", "val/si_snr", "val/distill"):
        assert torch.isfinite(torch.tensor(result["metrics"][key])), key


def test_text_teachers_are_found_in_every_mode_config():
    from recipes.dm_codec import MODE_CONFIGS, text_teachers

    lm = "model.init_args.teacher.init_args.model.init_args"
    found = {mode: sorted(text_teachers(yaml.safe_load(path.read_text()))) for mode, path in MODE_CONFIGS.items()}
    assert found == {"sm": [], "lm": [lm], "combined": [f"{lm}.members.text.init_args"]}


def test_help_lists_the_recipe_options_and_where_the_rest_go(capsys):
    from recipes.dm_codec import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--mode", "--config", "--adversarial", "--disc-start-step", "--workdir"):
        assert option in out, option
    assert "passed to `python -m lit_distill fit`" in out and "python -m lit_distill fit --help" in out


def test_disc_start_step_needs_adversarial(tmp_path):
    from recipes.dm_codec import main

    with pytest.raises(ConfigError, match="--disc-start-step: only with --adversarial"):
        main(["--disc-start-step", "5", "--workdir", str(tmp_path)])


def test_recipe_rejects_a_missing_config(tmp_path):
    from recipes.dm_codec import main

    with pytest.raises(ConfigError, match="does not exist"):
        main(["--config", str(tmp_path / "nope.yaml")])


def fit_and_check_distillation(cli, projector, teacher, distill_terms=("distill",)) -> None:
    """Fit 2 steps; the distillation term is finite and in range, trains the projector, not the teacher."""
    module = cli.model
    projector_before = projector.weight.detach().clone()
    teacher_before = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
    grad_norms: list[float] = []
    projector.weight.register_hook(lambda g: grad_norms.append(float(g.norm())))

    cli.trainer.fit(module, datamodule=cli.datamodule)

    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("val/loss", "val/mel", "val/wave", "val/commit", *(f"val/{t}" for t in distill_terms)):
        assert torch.isfinite(metrics[key]), key
    for term in distill_terms:
        assert -1.0 <= metrics[f"val/teacher_cosine_{term}"] <= 1.0  # CodecMetrics through the term
        # -log sigmoid(cos) with cos in [-1, 1] lies in [-log sigmoid(1), -log sigmoid(-1)]
        assert -torch.nn.functional.logsigmoid(torch.tensor(1.0)) <= metrics[f"val/{term}"] \
            <= -torch.nn.functional.logsigmoid(torch.tensor(-1.0))
    assert len(grad_norms) == 2 and all(n > 0 and torch.isfinite(torch.tensor(n)) for n in grad_norms)
    assert not torch.equal(projector.weight.detach(), projector_before)
    assert not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
