"""HFCausalLM (HFModel for causal LMs): local directories through from_pretrained, configs, dtype, errors."""

from __future__ import annotations

import inspect

import pytest
import torch

from lit_distill import ConfigError
from lit_distill.models import HFCausalLM, HFModel

CONFIG = {"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = HFCausalLM(config=dict(CONFIG))
    model.module.save_pretrained(tmp_path / "m")
    return model, str(tmp_path / "m")


def test_loaded_model_matches_saved_one(saved):
    original, path = saved
    loaded = HFCausalLM(path=path)
    ids = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(loaded(input_ids=ids).logits, original(input_ids=ids).logits)
    assert loaded.output_size == 50


def test_dtype_and_hidden_states(saved):
    _, path = saved
    model = HFCausalLM(path=path, dtype="bfloat16", output_hidden_states=True)
    out = model(input_ids=torch.randint(0, 50, (1, 5)))
    assert out.logits.dtype == torch.bfloat16
    assert len(out.hidden_states) == CONFIG["num_hidden_layers"] + 1
    assert out.hidden_states[-1].shape == (1, 5, 16)


def test_config_build_takes_linked_vocab_and_pad():
    model = HFCausalLM(config=dict(CONFIG), vocab_size=77, pad_token_id=3)
    assert model.output_size == 77 and model.module.config.pad_token_id == 3


def test_hooks_record_features(saved):
    _, path = saved
    model = HFCausalLM(path=path, hooks=["model.layers.0.mlp"])
    out = model(input_ids=torch.randint(0, 50, (2, 4)))
    assert out.features["model.layers.0.mlp"].shape == (2, 4, 16)


def test_unknown_hook_path_names_it(saved):
    with pytest.raises(ConfigError, match="no submodule 'model.layers.9.mlp'"):
        HFCausalLM(path=saved[1], hooks=["model.layers.9.mlp"])


def test_errors_name_the_field(tmp_path, saved):
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        HFCausalLM()
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        HFCausalLM(path=saved[1], config=dict(CONFIG))
    with pytest.raises(ConfigError, match="no directory"):
        HFCausalLM(path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="model_type"):
        HFCausalLM(config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="has 50 output logits but the data's tokenizer has 60"):
        HFCausalLM(path=saved[1], vocab_size=60)
    with pytest.raises(ConfigError, match="not a floating dtype"):
        HFCausalLM(path=saved[1], dtype="int8")


def test_trust_remote_code_is_off_by_default(saved, monkeypatch):
    import transformers

    seen = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    HFCausalLM(path=saved[1])
    assert seen["trust_remote_code"] is False


def test_export_writes_a_from_pretrained_directory(saved, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = saved
    model.export(str(tmp_path / "out"))
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.randint(0, 50, (1, 6))
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_unreachable_hub_id_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="could not load 'nobody/no-such-model' as a hub id"):
        HFCausalLM(path="nobody/no-such-model")


def test_hfcausallm_is_hfmodel_for_causal_lms_with_the_same_fields():
    own = inspect.signature(HFCausalLM).parameters
    general = inspect.signature(HFModel).parameters
    assert issubclass(HFCausalLM, HFModel)
    # every HFCausalLM field is an HFModel field with the same default; what it leaves out is fixed
    # (task) or does not apply to causal LMs (classes, attention maps, the speech tasks' fields)
    assert {name: p.default for name, p in own.items()} == {
        name: p.default for name, p in general.items()
        if name not in {"task", "num_classes", "output_attentions", "normalize", "sample_rate"}}
    torch.manual_seed(0)
    named = HFCausalLM(config=dict(CONFIG))
    torch.manual_seed(0)
    general_model = HFModel(task="causal-lm", config=dict(CONFIG))
    ids = torch.randint(0, 50, (2, 7))
    assert named.task == "causal-lm"
    torch.testing.assert_close(named(input_ids=ids).logits, general_model(input_ids=ids).logits)


def test_a_causal_lm_pools_only_when_it_returns_hidden_states(saved):
    _, path = saved
    ids, mask = torch.randint(0, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
    plain = HFCausalLM(path=path).eval()
    assert plain(input_ids=ids, attention_mask=mask).features == {}
    assert plain.output_spec().features == frozenset()
    hidden = HFCausalLM(path=path, output_hidden_states=True).eval()
    out = hidden(input_ids=ids, attention_mask=mask)
    assert set(out.features) == set(hidden.output_spec().features) == {"last_hidden_state", "cls_pooled",
                                                                         "mean_pooled"}
    torch.testing.assert_close(out.features["last_hidden_state"], out.hidden_states[-1])
    torch.testing.assert_close(out.features["mean_pooled"], out.hidden_states[-1].mean(1))


def test_compute_logits_false_is_for_causal_lms_and_matches_the_logits(saved):
    _, path = saved
    ids = torch.randint(0, 50, (2, 7))
    full = HFModel(task="causal-lm", path=path).eval()
    lean = HFModel(task="causal-lm", path=path, compute_logits=False, output_hidden_states=True).eval()
    out = lean(input_ids=ids)
    assert out.logits is None and set(out.features) == set(lean.output_spec().features)
    logits = out.features["last_hidden_state"] @ out.features["lm_head.weight"].T
    torch.testing.assert_close(logits, full(input_ids=ids).logits)
    with pytest.raises(ConfigError, match="HFModel.compute_logits: false is for task causal-lm"):
        HFModel(task="masked-lm", config={"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                          "num_attention_heads": 2, "intermediate_size": 32}, compute_logits=False)
