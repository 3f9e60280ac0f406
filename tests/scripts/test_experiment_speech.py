"""scripts/experiment_speech.py and its teacher module: the teachers are fit runs of the configs at
the experiment's sizes (the pipeline itself takes minutes even in --smoke)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiment_speech.py"


@pytest.fixture
def work(tmp_path):
    """A work directory with a corpus split whose longest utterance lasts 4.3 s."""
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("".join(json.dumps({"path": f"u{i}.wav", "text": "a b", "duration": d}) + "\n"
                                for i, d in enumerate([1.5, 4.3, 2.0])))
    split = {"manifest": str(manifest), "train": [{"path": "u0.wav", "text": "a b"}],
             "heldout": [{"path": "u1.wav", "text": "a b"}]}
    (tmp_path / "corpus" / "split.json").write_text(json.dumps(split))
    return tmp_path


def overrides(run) -> dict[str, str]:
    return dict(o.split("=", 1) for o in run.overrides)


def test_the_configs_hold_the_full_experiment_sizes(exp):
    import speech_teachers as teachers

    size = exp.sizes(smoke=False)
    for name, key in (("hubert_ctc", "hubert"), ("whisper_ctc", "whisper"), ("lm", "lm")):
        config = yaml.safe_load(teachers.CONFIGS[name].read_text())
        assert config["trainer"]["max_steps"] == size[key]["steps"], name
        assert config["model"]["init_args"]["scheduler"]["init_args"]["total_steps"] == size[key]["steps"], name
        assert config["data"]["init_args"]["batch_size"] == size[key]["batch"], name
    hubert, whisper, lm = (teachers.student_config(n) for n in teachers.TEACHERS)
    assert (hubert["hidden_size"], hubert["num_hidden_layers"], hubert["conv_dim"]) == (96, 3, [64] * 3)
    assert (whisper["d_model"], whisper["encoder_layers"], whisper["encoder_ffn_dim"]) == (64, 2, 256)
    assert (lm["hidden_size"], lm["num_hidden_layers"], lm["intermediate_size"]) == (64, 2, 128)


@pytest.mark.parametrize("smoke", [False, True])
def test_ctc_teachers_are_exported_fit_runs_on_the_corpus_at_the_experiments_sizes(exp, work, smoke):
    import speech_teachers as teachers

    size = exp.sizes(smoke)
    hubert, whisper = (teachers.teacher_run(name, work, smoke) for name in ("hubert_ctc", "whisper_ctc"))
    for run, key in ((hubert, "hubert"), (whisper, "whisper")):
        args = overrides(run)
        assert run.export and run.group == "teachers" and run.seed == 0
        assert args["--data.init_args.manifest"] == str(work / "corpus" / "manifest.jsonl")
        assert args["--trainer.max_steps"] == args["--model.init_args.scheduler.init_args.total_steps"] \
            == str(size[key]["steps"])
        assert args["--data.init_args.batch_size"] == str(size[key]["batch"])
    for run in (hubert, whisper):  # held-out validation is a trajectory: no monitor, a save after the last step
        args = overrides(run)
        assert args["--checkpoint.monitor"] == "null"
        assert int(args["--trainer.max_steps"]) % int(args["--trainer.val_check_interval"]) == 0
    config = json.loads(overrides(hubert)["--model.init_args.student.init_args.config"])
    assert config["hidden_size"] == size["hubert"]["hidden"] and config["conv_dim"] == [size["hubert"]["conv"]] * 3
    assert config["model_type"] == "hubert" and config["do_stable_layer_norm"]  # the rest of the config stays
    encoder = json.loads(overrides(whisper)["--model.init_args.student.init_args.encoder.init_args.config"])
    assert encoder["d_model"] == size["whisper"]["d_model"]
    assert encoder["max_source_positions"] == 250  # 50 frames/s x ceil(4.3 s + 0.1 s)


def test_validation_interval_divides_the_steps_about_four_times(exp):
    import speech_teachers as teachers

    assert [teachers.validation_interval(n) for n in (850, 2000, 6, 1, 7)] == [170, 500, 1, 1, 1]


def test_lm_teacher_trains_on_training_text_only_with_a_dev_slice(exp, work, monkeypatch):
    import speech_teachers as teachers

    split = json.loads((work / "corpus" / "split.json").read_text())
    split["train"] = [{"path": f"t{i}.wav", "text": f"Training sentence number {i}."} for i in range(30)]
    split["heldout"] = [{"path": "h.wav", "text": "A held out sentence here."}]
    (work / "corpus" / "split.json").write_text(json.dumps(split))
    monkeypatch.setattr("datamodules.speech_corpus.english_sentences",
                        lambda n, seed=0: ["A held out sentence here.", "Some more local prose to read."])
    run = teachers.teacher_run("lm", work, smoke=True)
    args = overrides(run)
    data = work / "teachers" / "lm_data"
    read = lambda f: [json.loads(line)["text"] for line in (data / f).read_text().splitlines()]  # noqa: E731
    train, dev = read("train.jsonl"), read("dev.jsonl")
    assert len(dev) == 2 and not set(train) & set(dev)
    assert set(train) | set(dev) == {it["text"] for it in split["train"]} | {"Some more local prose to read."}
    assert args["--data.init_args.tokenizer"] == str(data) and (data / "tokenizer.json").is_file()
    assert not run.export  # the best-dev checkpoint is exported afterwards, not the last one
    config = json.loads(args["--model.init_args.student.init_args.config"])
    assert config["hidden_size"] == exp.sizes(True)["lm"]["hidden"] and config["eos_token_id"] is not None


def test_public_names_other_experiments_read_are_still_there(exp):
    for name in ("load_split", "load_waveforms", "evaluate_run", "teacher_features", "kmeans", "sizes",
                 "stretch_tokens", "probe_tokens", "stage_corpus", "stage_teachers"):
        assert callable(getattr(exp, name)), name


def test_ctc_probe_is_trained_by_fit_and_cached_by_content(exp, tmp_path):
    import speech_eval

    g = torch.Generator().manual_seed(0)
    tokens, targets = [], []
    for _ in range(16):  # token k + 1 always sounds like character k + 1, token 0 is silence
        chars = torch.randint(1, 6, (5,), generator=g).tolist()
        tokens.append(torch.tensor([x for c in chars for x in (c, c, 0)]))
        targets.append(chars)
    args = (tokens[:12], targets[:12], tokens[12:], targets[12:], 6, tmp_path)
    table = speech_eval.fit_ctc_probe(*args, steps=150)
    assert table.shape == (6, 29)
    assert speech_eval.eval_ctc_probe(table, tokens[12:], targets[12:])["ctc_cer"] == 0.0
    runs = list((tmp_path / "eval" / "probes" / "ctc_probe").iterdir())
    assert len(runs) == 1 and (runs[0] / "seed0" / "done.json").is_file()
    torch.testing.assert_close(speech_eval.fit_ctc_probe(*args, steps=150), table)  # the same run, skipped
    assert len(list((tmp_path / "eval" / "probes" / "ctc_probe").iterdir())) == 1
    speech_eval.fit_ctc_probe(*args, steps=3)  # other steps: another run
    assert len(list((tmp_path / "eval" / "probes" / "ctc_probe").iterdir())) == 2
