"""Student initialisation from the teacher: chosen layers (DistilBERT) and truncated width."""

from __future__ import annotations

import pytest
import torch

from lit_distill import ConfigError
from lit_distill.cli import main
from lit_distill.models import HFModel
from lit_distill.models.init_from_teacher import choose_layers, student_from_teacher

BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
        "num_attention_heads": 4, "max_position_embeddings": 32}
LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 32}


def test_layer_choice():
    assert choose_layers("every:2", 12) == [0, 2, 4, 6, 8, 10]
    assert choose_layers("0,2,4,7,9,11", 12) == [0, 2, 4, 7, 9, 11]
    assert choose_layers([3], 4) == [3]
    with pytest.raises(ConfigError, match=r"in \[0, 4\)"):
        choose_layers("0,4", 4)


@pytest.mark.parametrize("config, layer", [(BERT, "bert.encoder.layer.{}.output.dense.weight"),
                                           (LLAMA, "model.layers.{}.mlp.down_proj.weight")])
def test_kept_layers_are_the_teachers_layers(config, layer):
    torch.manual_seed(0)
    teacher = HFModel(task="masked-lm" if config is BERT else "causal-lm", config=config, vocab_size=40).module
    student = student_from_teacher(teacher, [1, 3])
    assert student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(s[layer.format(0)], t[layer.format(1)])
    torch.testing.assert_close(s[layer.format(1)], t[layer.format(3)])
    assert all(torch.equal(s[k], t[k]) for k in s if ".layer" not in k and ".layers." not in k)


def test_narrower_student_keeps_the_first_heads_and_features():
    torch.manual_seed(0)
    teacher = HFModel(task="masked-lm", config=BERT, vocab_size=40).module
    student = student_from_teacher(teacher, "every:2", hidden_size=16)
    assert (student.config.hidden_size, student.config.num_attention_heads, student.config.intermediate_size) == \
        (16, 2, 32)
    query = "bert.encoder.layer.1.attention.self.query.weight"
    torch.testing.assert_close(student.state_dict()[query],
                               teacher.state_dict()["bert.encoder.layer.2.attention.self.query.weight"][:16, :16])
    ids = torch.randint(0, 40, (2, 5))
    assert student(input_ids=ids).logits.shape == (2, 5, 40)
    with pytest.raises(ConfigError, match="head width"):
        student_from_teacher(teacher, "every:2", hidden_size=20)


def test_command_writes_a_loadable_student(tmp_path, capsys):
    torch.manual_seed(0)
    HFModel(task="masked-lm", config=BERT, vocab_size=40).export(str(tmp_path / "teacher"))
    main(["init-student", "--teacher", str(tmp_path / "teacher"), "--layers", "every:2", "--out",
          str(tmp_path / "student")])
    assert "teacher layers [0, 2]" in capsys.readouterr().out
    student = HFModel(task="masked-lm", path=str(tmp_path / "student"))
    assert student.module.config.num_hidden_layers == 2


def _llama_teacher(tie: bool = True):
    torch.manual_seed(0)
    config = {**LLAMA, "num_key_value_heads": 2, "tie_word_embeddings": tie}
    teacher = HFModel(task="causal-lm", config=config, vocab_size=40).module.double()
    with torch.no_grad():  # norms with gains other than 1, so folding them matters
        for name, parameter in teacher.named_parameters():
            if "norm" in name:
                parameter.copy_(1 + 0.3 * torch.randn_like(parameter))
    return teacher


@pytest.mark.parametrize("tie", [True, False])
def test_projection_at_full_width_is_the_teacher_rotated(tie):
    """RMSNorm commutes with rotations: the projected student at the teacher's width computes its logits."""
    teacher = _llama_teacher(tie)
    student = student_from_teacher(teacher, "every:1", hidden_size=32, width_method="projection")
    ids = torch.randint(0, 40, (2, 7))
    # float32 rounding inside transformers' RMSNorm (it upcasts to float32) bounds the difference
    torch.testing.assert_close(student(input_ids=ids).logits, teacher(input_ids=ids).logits, rtol=0, atol=1e-5)
    assert not torch.equal(student.state_dict()["model.layers.0.mlp.up_proj.weight"],
                           teacher.state_dict()["model.layers.0.mlp.up_proj.weight"])  # rotated, not copied


def test_projection_narrows_only_the_residual_stream():
    from lit_distill.models.width_projection import embedding_basis

    teacher = _llama_teacher()
    student = student_from_teacher(teacher, [0, 3], hidden_size=16, width_method="projection")
    config = student.config
    assert (config.hidden_size, config.num_attention_heads, config.head_dim, config.intermediate_size,
            config.num_hidden_layers) == (16, 4, 8, 64, 2)
    t, s = teacher.state_dict(), student.state_dict()
    basis = embedding_basis(t["model.embed_tokens.weight"])[:, :16]
    torch.testing.assert_close(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"] @ basis)
    gain = t["model.layers.3.post_attention_layernorm.weight"]
    torch.testing.assert_close(s["model.layers.1.mlp.up_proj.weight"], (t["model.layers.3.mlp.up_proj.weight"] * gain)
                               @ basis)
    torch.testing.assert_close(s["model.layers.1.mlp.down_proj.weight"], basis.T @ t["model.layers.3.mlp.down_proj.weight"])
    torch.testing.assert_close(s["model.norm.weight"], torch.full((16,), 2 ** 0.5, dtype=torch.float64))
    assert student(input_ids=torch.randint(0, 40, (2, 5))).logits.shape == (2, 5, 40)


def test_projection_refuses_what_it_cannot_project():
    bert = HFModel(task="masked-lm", config=BERT, vocab_size=40).module
    with pytest.raises(ConfigError, match="truncation"):
        student_from_teacher(bert, "every:2", hidden_size=16, width_method="projection")
    with pytest.raises(ConfigError, match="intermediate-size"):
        student_from_teacher(_llama_teacher(), "every:2", hidden_size=16, intermediate_size=32, width_method="projection")
    with pytest.raises(ConfigError, match="width-method"):
        student_from_teacher(_llama_teacher(), "every:2", hidden_size=16, width_method="pca")
