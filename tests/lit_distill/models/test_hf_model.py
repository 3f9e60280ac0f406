"""HFModel: one adapter for every transformers family, from a config or a saved directory."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.losses import CrossEntropy, ForwardKL
from lit_distill.models import HFModel
from lit_distill.models.hf_model import mean_pool

BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "max_position_embeddings": 64}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


def inputs(batch=3, length=7, vocab=50):
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    return {"input_ids": torch.randint(0, vocab, (batch, length), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("task, config, logits_shape", [
    ("masked-lm", BERT, (3, 7, 50)), ("sequence-classification", BERT, (3, 4)),
    ("token-classification", BERT, (3, 7, 4)), ("feature-extraction", BERT, None), ("causal-lm", LLAMA, (3, 7, 50))])
def test_every_task_gives_one_model_output(task, config, logits_shape):
    torch.manual_seed(0)
    model = HFModel(task=task, config=config, vocab_size=50, num_classes=4, output_hidden_states=True).eval()
    out = model(**inputs())
    assert (out.logits is None) == (logits_shape is None)
    if logits_shape:
        assert tuple(out.logits.shape) == logits_shape and model.output_size == logits_shape[-1]
    assert len(out.hidden_states) == 3 and out.features["cls_pooled"].shape == (3, 32)
    last = out.hidden_states[-1]
    torch.testing.assert_close(out.features["mean_pooled"][0], last[0, :4].mean(0))  # padding left out
    spec = model.output_spec()
    assert spec.closed and spec.hidden_states == 3 and set(out.features) == set(spec.features)


# Families without a line of their own in lit_distill: a new family is a config and touches no file.
ENCODER_FAMILIES = {
    "roberta": {"max_position_embeddings": 66, "pad_token_id": 1},
    "distilbert": {"dim": 32, "hidden_dim": 64, "n_layers": 2, "n_heads": 2, "max_position_embeddings": 64},
    "electra": {"embedding_size": 16, "max_position_embeddings": 64},
}
CAUSAL_FAMILIES = {"gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64},
                   "qwen2": {"num_key_value_heads": 1, "max_position_embeddings": 64},
                   "mistral": {"num_key_value_heads": 1, "max_position_embeddings": 64}}
_COMMON = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.mark.parametrize("family", sorted(ENCODER_FAMILIES))
def test_an_encoder_family_without_code_of_its_own_classifies_and_pools(family, tmp_path):
    fields = {"model_type": family, **_COMMON, **ENCODER_FAMILIES[family]}
    torch.manual_seed(0)
    model = HFModel(task="sequence-classification", config=fields, vocab_size=50, num_classes=3).eval()
    model.export(str(tmp_path))
    loaded = HFModel(task="sequence-classification", path=str(tmp_path), num_classes=3).eval()
    out = loaded(**inputs())
    assert out.logits.shape == (3, 3) and out.features["mean_pooled"].shape[0] == 3
    torch.testing.assert_close(out.logits, model(**inputs()).logits)


@pytest.mark.parametrize("family", sorted(CAUSAL_FAMILIES))
def test_a_causal_family_without_code_of_its_own_runs_with_and_without_its_head(family, tmp_path):
    fields = {"model_type": family, **_COMMON, **CAUSAL_FAMILIES[family]}
    torch.manual_seed(0)
    HFModel(task="causal-lm", config=fields, vocab_size=50).export(str(tmp_path))
    full = HFModel(task="causal-lm", path=str(tmp_path)).eval()
    lean = HFModel(task="causal-lm", path=str(tmp_path), compute_logits=False).eval()
    ids = {"input_ids": inputs()["input_ids"]}
    features = lean(**ids).features
    logits = features["last_hidden_state"] @ features["lm_head.weight"].T
    torch.testing.assert_close(logits, full(**ids).logits, rtol=1e-4, atol=1e-5)
    assert full.output_size == 50


def test_attention_maps_are_features_that_sum_to_one():
    model = HFModel(task="feature-extraction", config=BERT, vocab_size=50, output_attentions=True).eval()
    out = model(**inputs())
    assert set(model.output_spec().features) >= {"attentions.0", "attentions.1"}
    attention = out.features["attentions.1"]
    assert attention.shape == (3, 2, 7, 7)
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 2, 7))


def test_save_and_load_through_the_real_loading_code(tmp_path):
    torch.manual_seed(0)
    model = HFModel(task="sequence-classification", config=BERT, vocab_size=50, num_classes=4).eval()
    model.export(str(tmp_path / "clf"))
    loaded = HFModel(task="sequence-classification", path=str(tmp_path / "clf"), num_classes=4).eval()
    torch.testing.assert_close(loaded(**inputs()).logits, model(**inputs()).logits)
    encoder = HFModel(task="feature-extraction", path=str(tmp_path / "clf")).eval()  # the same weights, no head
    torch.testing.assert_close(encoder(**inputs()).features["last_hidden_state"],
                               model(**inputs()).features["last_hidden_state"])
    with pytest.raises(ConfigError, match="embeds 50 tokens but the data's tokenizer has 60"):
        HFModel(task="masked-lm", path=str(tmp_path / "clf"), vocab_size=60)


def test_bad_arguments_are_one_line():
    with pytest.raises(ConfigError, match="HFModel.task: 'seq2seq'"):
        HFModel(task="seq2seq", config=BERT)
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        HFModel(task="masked-lm")
    with pytest.raises(ConfigError, match="needs 'model_type'"):
        HFModel(task="masked-lm", config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="no directory"):
        HFModel(task="masked-lm", path="/no/such/dir")


def test_mean_pool_matches_a_direct_computation():
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])
    torch.testing.assert_close(mean_pool(hidden, mask), expected)


def test_a_classifier_distils_with_logit_kd_and_checks_sources_first():
    torch.manual_seed(0)
    student = HFModel(task="sequence-classification", config=BERT, vocab_size=50, num_classes=4)
    teacher = HFModel(task="sequence-classification", config={**BERT, "num_hidden_layers": 3}, vocab_size=50,
                      num_classes=4)
    with pytest.raises(ConfigError, match="attentions.0.*no such feature"):
        DistillationModule(student, {"kd": ForwardKL(sources={"student_logits": "student.features.attentions.0"})},
                           teacher=teacher)
    module = DistillationModule(student, {"kd": ForwardKL(temperature=2.0), "ce": CrossEntropy()}, teacher=teacher)
    batches = [{"inputs": inputs(), "labels": torch.tensor([0, 3, 1])} for _ in range(2)]
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_loaded_model_trains_with_its_dropout_like_a_fresh_one(tmp_path):
    fields = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "vocab_size": 50, "hidden_dropout_prob": 0.5}
    HFModel(task="sequence-classification", config=fields, num_classes=3).export(str(tmp_path))
    loaded = HFModel(task="sequence-classification", path=str(tmp_path), num_classes=3)
    assert all(m.training for m in loaded.modules())  # from_pretrained alone returns eval mode
    ids = torch.randint(0, 50, (2, 6))
    assert not torch.equal(loaded(input_ids=ids).logits, loaded(input_ids=ids).logits)  # dropout is on


# The speech tasks: waveforms through a front end of their own.
HUBERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 2], "conv_kernel": [10, 4, 2],
          "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
WHISPER = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
           "num_mel_bins": 80, "max_source_positions": 50}


def waveforms():
    """``[2, 1, 6000]`` waveform and its bool mask ``[2, 6000]`` (the second utterance 3500 samples long)."""
    g = torch.Generator().manual_seed(3)
    mask = torch.arange(6000)[None] < torch.tensor([6000, 3500])[:, None]
    return torch.randn(2, 1, 6000, generator=g) * 0.2, mask


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
@pytest.mark.parametrize("normalize", [False, True])
def test_speech_encoder_is_the_model_on_the_waveform_bit_for_bit(tmp_path, model_type, normalize):
    from transformers import AutoModel

    from lit_distill.models.speech_front_end import normalize_waveform

    torch.manual_seed(0)
    HFModel(task="speech-encoder", config={"model_type": model_type, **HUBERT}).export(str(tmp_path))
    model = HFModel(task="speech-encoder", path=str(tmp_path), normalize=normalize, output_hidden_states=True).eval()
    reference = AutoModel.from_pretrained(tmp_path).eval()
    wave, mask = waveforms()
    x = normalize_waveform(wave[:, 0], mask) if normalize else wave[:, 0]
    with torch.no_grad():
        out, expected = model(waveform=wave, waveform_mask=mask), reference(input_values=x, output_hidden_states=True)
        lean = HFModel(task="speech-encoder", path=str(tmp_path), normalize=normalize).eval()(waveform=wave[:, 0],
                                                                                             waveform_mask=mask)
    assert len(out.hidden_states) == 3 and all(torch.equal(a, b) for a, b in zip(out.hidden_states,
                                                                                 expected.hidden_states, strict=True))
    assert torch.equal(out.features["last_hidden_state"], expected.last_hidden_state) and out.logits is None
    assert lean.hidden_states is None and torch.equal(lean.features["last_hidden_state"], expected.last_hidden_state)
    spec = model.output_spec()
    assert spec.closed and spec.hidden_states == 3 and spec.features == {"last_hidden_state"} and not spec.logits
    assert lean.features.keys() == HFModel(task="speech-encoder", path=str(tmp_path)).output_spec().features
    assert (model.total_stride, model.normalize, model.hidden_size, model.output_size) == (40, normalize, 32, None)


@pytest.fixture
def whisper_dir(tmp_path):
    import transformers

    torch.manual_seed(0)
    fields = {**WHISPER, "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 32, "vocab_size": 64,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}
    transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(**fields)).save_pretrained(tmp_path / "w")
    return tmp_path / "w"


def test_whisper_encoder_is_the_encoder_on_the_log_mel_bit_for_bit(whisper_dir):
    from transformers import WhisperModel

    from lit_distill.models.whisper_front_end import whisper_log_mel, whisper_mel_filters

    model = HFModel(task="whisper-encoder", path=str(whisper_dir), output_hidden_states=True).eval()
    reference = WhisperModel.from_pretrained(whisper_dir).get_encoder().eval()
    wave, mask = waveforms()
    mel = whisper_log_mel(wave[:, 0] * mask, 16000, whisper_mel_filters(80))
    with torch.no_grad():
        out, expected = model(waveform=wave, waveform_mask=mask), reference(input_features=mel,
                                                                            output_hidden_states=True)
        assert torch.equal(model.encode_mel(mel), expected.last_hidden_state)
    assert torch.equal(out.features["last_hidden_state"], expected.last_hidden_state)
    assert all(torch.equal(a, b) for a, b in zip(out.hidden_states, expected.hidden_states, strict=True))
    # encoder frame e covers mel frame 2e: real when 2e < ceil(length / 160)
    assert out.features["frame_mask"].sum(-1).tolist() == [19, 11]
    assert torch.equal(model.prepare(wave, mask)[0], mel)
    assert (model.num_frames, model.num_samples, model.window_seconds, model.num_mel_bins, model.sample_rate,
            model.hidden_size, model.output_size) == (50, 16000, 1.0, 80, 16000, 32, None)
    spec = model.output_spec()
    assert spec.closed and spec.hidden_states == 3 and spec.features == {"last_hidden_state", "frame_mask"}


@pytest.mark.parametrize("task, config", [("speech-encoder", {"model_type": "hubert", **HUBERT}),
                                          ("whisper-encoder", WHISPER)])
def test_a_speech_task_exports_and_reloads_through_its_path(tmp_path, task, config):
    torch.manual_seed(0)
    built = HFModel(task=task, config=dict(config), output_hidden_states=True).eval()
    built.export(str(tmp_path / "out"))
    loaded = HFModel(task=task, path=str(tmp_path / "out"), output_hidden_states=True)
    assert all(m.training for m in loaded.modules())  # as a loaded text model: a student trains with its dropout
    assert list(loaded.state_dict()) == list(built.state_dict()) and all(k.startswith("module.")
                                                                        for k in built.state_dict())
    wave, mask = waveforms()
    with torch.no_grad():
        a, b = built(waveform=wave, waveform_mask=mask), loaded.eval()(waveform=wave, waveform_mask=mask)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))
    assert all(torch.equal(a.features[k], b.features[k]) for k in a.features)


@pytest.mark.parametrize("task, fields, message", [
    ("masked-lm", {"normalize": True}, "HFModel.normalize: true is for task speech-encoder, not masked-lm"),
    ("speech-encoder", {"sample_rate": 24000}, "HFModel.sample_rate: 24000 is for task whisper-encoder"),
    ("whisper-encoder", {"normalize": True}, "HFModel.normalize: true is for task speech-encoder"),
    ("whisper-encoder", {"vocab_size": 50}, "HFModel.vocab_size: 50 is for the text tasks, not whisper-encoder"),
    ("speech-encoder", {"num_classes": 3}, "HFModel.num_classes: 3 is for the text tasks"),
    ("speech-encoder", {"lora": {"r": 4}}, "HFModel.lora: .* is for the text tasks"),
    ("speech-encoder", {"output_attentions": True}, "HFModel.output_attentions: true is for the text tasks"),
    ("whisper-encoder", {"compute_logits": False}, "HFModel.compute_logits: false is for task causal-lm"),
])
def test_a_field_of_other_tasks_is_refused_in_one_line(task, fields, message):
    config = WHISPER if task == "whisper-encoder" else {"model_type": "hubert", **HUBERT} if task == "speech-encoder" \
        else BERT
    with pytest.raises(ConfigError, match=message) as err:
        HFModel(task=task, config=dict(config), **fields)
    assert "\n" not in str(err.value)


def test_front_end_members_belong_to_their_task_and_follow_copies(tmp_path):
    import copy

    text = HFModel(task="feature-extraction", config=BERT, vocab_size=50)
    with pytest.raises(AttributeError):
        text.prepare  # noqa: B018 - the access is the test
    speech = HFModel(task="speech-encoder", config={"model_type": "hubert", **HUBERT})
    with pytest.raises(AttributeError):
        speech.num_samples  # noqa: B018 - Whisper's, not a speech encoder's
    text.export(str(tmp_path / "bert"))
    with pytest.raises(ConfigError, match="HFModel.path: BertModel is not a waveform encoder"):
        HFModel(task="speech-encoder", path=str(tmp_path / "bert"))
    whisper = HFModel(task="whisper-encoder", config=WHISPER).eval()
    twin = copy.deepcopy(whisper)
    with torch.no_grad():
        for p in twin.module.parameters():
            p.add_(0.1)
        mel, _ = whisper.prepare(waveforms()[0])
        # the copy's encode_mel runs the copy's weights, not the original's
        assert torch.equal(twin.encode_mel(mel), twin(waveform=waveforms()[0]).features["last_hidden_state"])
        assert not torch.equal(twin.encode_mel(mel), whisper.encode_mel(mel))
