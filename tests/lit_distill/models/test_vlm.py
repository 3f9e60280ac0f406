"""LLaVA-style composition: placeholder insertion, MoE aux feature, export/init_from, freezing, HF Llava."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models import HFVisionTower, LlavaComposition, TimmModel
from lit_distill.models.moe import MoEFeedForward
from lit_distill.models.vlm import HFLlava

VOCAB, IMAGE_ID, N_IMG = 40, 5, 4
LM = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
      "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32}


def vit() -> TimmModel:
    return TimmModel("vit_tiny_patch16_224", num_classes=0,
                     model_kwargs={"img_size": 32, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2})


def composition(seed=0, **kwargs) -> LlavaComposition:
    torch.manual_seed(seed)
    return LlavaComposition(vit(), image_token_id=IMAGE_ID, lm_config=dict(LM), vocab_size=VOCAB,
                            pad_token_id=0, **kwargs).eval()


def inputs(batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, VOCAB, (batch, 10), generator=gen)
    ids[:, 2:2 + N_IMG] = IMAGE_ID
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.randn(batch, 3, 32, 32, generator=gen)}


def test_image_features_replace_the_placeholders():
    model = composition()
    batch = inputs()
    assert model.num_image_tokens == N_IMG
    with torch.no_grad():
        got = model(**batch).logits
        embeds = model.module.get_input_embeddings()(batch["input_ids"]).clone()
        embeds[:, 2:2 + N_IMG] = model.projector(model.vision(pixel_values=batch["pixel_values"]).features["tokens"])
        expected = model.module(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    assert got.shape == (2, 10, VOCAB)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # causal: the image changes nothing before the first placeholder, and something after it
    other = {**batch, "pixel_values": batch["pixel_values"] + 1.0}
    with torch.no_grad():
        changed = model(**other).logits
    torch.testing.assert_close(changed[:, :2], got[:, :2], rtol=0, atol=0)
    assert (changed[:, 2:] - got[:, 2:]).abs().max() > 1e-4


def test_wrong_number_of_placeholders_is_a_config_error():
    batch = inputs()
    batch["input_ids"][0, 2] = 7
    with pytest.raises(ConfigError, match="image placeholder"):
        composition()(**batch)


def test_moe_student_reports_aux_loss_and_export_round_trips(tmp_path):
    moe = {"every": 2, "num_experts": 4, "top_k": 2, "capacity_factor": 1.5}
    model = composition(moe=moe)
    batch = inputs()
    with torch.no_grad():
        for p in model.parameters():  # move away from the initialisation
            p.add_(0.01 * torch.randn_like(p))
        out = model(**batch)
    assert isinstance(model.module.model.layers[0].mlp, MoEFeedForward)
    assert not isinstance(model.module.model.layers[1].mlp, MoEFeedForward)
    assert out.features["moe_aux_loss"].ndim == 0
    model.export(str(tmp_path / "exp"))
    loaded = composition(seed=1, moe=moe, init_from=str(tmp_path / "exp"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, out.logits, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="moe"):
        composition(init_from=str(tmp_path / "exp"))  # dense architecture, MoE weights


def test_dense_export_lm_loads_natively(tmp_path):
    from transformers import AutoModelForCausalLM

    model = composition()
    model.export(str(tmp_path))
    native = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    ids = torch.randint(6, VOCAB, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(native(input_ids=ids).logits, model.module(input_ids=ids).logits)


def test_trainable_patterns_freeze_the_rest():
    model = composition(moe={"every": 2}, trainable=["lm.*.experts.*", "lm.*.router.*", "projector.*"])
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".experts." in n or ".router." in n or n.startswith("projector.") for n in trained)
    assert any(n.startswith("projector.") for n in trained) and any(".router." in n for n in trained)
    assert not model.vision.module.patch_embed.proj.weight.requires_grad
    with pytest.raises(ConfigError, match="matches no parameter"):
        composition(trainable=["nothing.*"])


def test_cnn_feature_map_tokens_and_hf_vision_tower():
    cnn = TimmModel("resnet18", num_classes=0, model_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8},
                    hooks=["layer3"])
    model = LlavaComposition(cnn, image_token_id=IMAGE_ID, lm_config=dict(LM), vocab_size=VOCAB,
                             vision_image_size=32, vision_feature="layer3")
    assert model.num_image_tokens == 4  # 32 / 16 = 2 x 2 map
    tower = HFVisionTower(config={"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                                  "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32,
                                  "patch_size": 16})
    out = tower(pixel_values=torch.randn(2, 3, 32, 32))
    assert out.features["tokens"].shape == (2, 4, 16)  # class token dropped
    model = LlavaComposition(tower, image_token_id=IMAGE_ID, lm_config=dict(LM), vocab_size=VOCAB)
    assert model(**inputs()).logits.shape == (2, 10, VOCAB)


def test_hf_llava_adapter_builds_offline_upcycles_and_saves(tmp_path):
    from transformers import LlavaForConditionalGeneration

    config = {"vision_config": {"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                                "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32,
                                "patch_size": 16, "projection_dim": 16},
              "text_config": dict(LM), "image_token_index": IMAGE_ID, "vision_feature_layer": -1}
    torch.manual_seed(0)
    model = HFLlava(config=config, vocab_size=VOCAB).eval()
    batch = inputs()
    with torch.no_grad():
        dense = model(**batch).logits
    assert dense.shape == (2, 10, VOCAB)
    model.export(str(tmp_path / "dense"))
    native = LlavaForConditionalGeneration.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        torch.testing.assert_close(native(**batch).logits, dense)
    torch.manual_seed(0)
    moe = HFLlava(config=config, vocab_size=VOCAB, moe={"every": 1, "capacity_factor": 2.0}).eval()
    with torch.no_grad():
        out = moe(**batch)
    assert "moe_aux_loss" in out.features
    torch.testing.assert_close(out.logits, dense)  # identical experts, gates summing to 1: equal at init
    moe.export(str(tmp_path / "moe"))
    reloaded = HFLlava(config=config, vocab_size=VOCAB, moe={"every": 1, "capacity_factor": 2.0},
                       init_from=str(tmp_path / "moe")).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, out.logits, rtol=0, atol=0)


def test_frozen_cnn_tower_keeps_its_batchnorm_statistics():
    cnn = TimmModel("resnet18", num_classes=0, model_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8},
                    hooks=["layer3"])
    model = LlavaComposition(cnn, image_token_id=IMAGE_ID, lm_config=dict(LM), vocab_size=VOCAB,
                             vision_image_size=32, vision_feature="layer3", trainable=["lm.*", "projector.*"])
    model.train()
    assert model.lm.training and not model.vision.training
    before = model.vision.module.bn1.running_mean.clone()
    model(**inputs())
    assert torch.equal(model.vision.module.bn1.running_mean, before)
