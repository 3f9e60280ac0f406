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
