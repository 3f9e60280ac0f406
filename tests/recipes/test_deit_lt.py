"""``python -m recipes.deit_lt``: both stages in one command, both models exported."""

from __future__ import annotations

import pytest
import torch

from recipes.deit_lt import main


def test_one_command_trains_exports_and_distils(tmp_path, capsys):
    main(["--workdir", str(tmp_path), "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
          "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=8"])
    out = capsys.readouterr().out
    assert "student avg: overall" in out and "tail" in out
    teacher = torch.load(tmp_path / "teacher" / "model_state_dict.pt", weights_only=True)
    student = torch.load(tmp_path / "student" / "model_state_dict.pt", weights_only=True)
    assert "fc.weight" in teacher and "head_dist.weight" in student  # ResNet teacher, distilled DeiT student
    assert (tmp_path / "student" / "timm_config.json").exists()


def test_help_lists_the_recipe_options_and_where_the_rest_go(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--teacher-config", "--student-config", "--workdir"):
        assert option in out, option
    assert "passed to both `python -m lit_distill fit` runs" in out and "python -m lit_distill fit --help" in out
