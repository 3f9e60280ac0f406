"""LLaVA-MoD end to end on CPU: teacher SFT → stage 1 (mimic) → stage 2 (DPO), and make-pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.vlm import VLMDataModule, write_digit_vqa
from lit_distill.cli import run_cli
from lit_distill.export import build_student, export_checkpoint
from lit_distill.losses import DPO, MoEAuxLoss
from lit_distill.models.moe import MoEFeedForward
from recipes.llava_mod import main as recipe_main
from recipes.llava_mod import make_pairs, vision_tower

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs/vlm/llava_mod"
TEACHER = CONFIGS / "tiny-teacher_sft.yaml"
STAGE1 = CONFIGS / "tiny-moe-student_from_tiny-teacher_stage1-mimic.yaml"
STAGE2 = CONFIGS / "tiny-moe-student_from_tiny-teacher_stage2-preference.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false"]


def data_args(vqa: dict, pairs: bool = False) -> list[str]:
    kind = "_pairs" if pairs else ""
    return [f"--data.init_args.tokenizer={vqa['tokenizer']}", f"--data.init_args.train_path={vqa['train' + kind]}",
            f"--data.init_args.val_path={vqa['val' + kind]}", "--data.init_args.batch_size=4"]


def teacher_args(teacher_dir: Path) -> list[str]:
    prefix = "--model.init_args.teacher.init_args.model.init_args"
    return [f"{prefix}.lm_path={teacher_dir / 'lm'}", f"{prefix}.init_from={teacher_dir}"]


def fit_steps(config, tmp: Path, *extra: str) -> Path:
    run_cli(["fit", "--config", str(config), *extra, *QUIET, "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
             f"--trainer.default_root_dir={tmp}"])
    return max(tmp.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)


@pytest.mark.slow
def test_stage_switch_and_both_stages_run(tmp_path):
    vqa = write_digit_vqa(tmp_path / "data", num_train=4, num_val=2)
    vision = tmp_path / "vision.pt"  # an untrained tower: its pretraining fit is tests/recipes/test_llava_mod_vision.py's
    torch.save(vision_tower().module.state_dict(), vision)
    pretrained = [f"--model.init_args.student.init_args.vision.init_args.checkpoint={vision}"]
    teacher_ckpt = fit_steps(TEACHER, tmp_path / "teacher_run", *data_args(vqa), *pretrained)
    export_checkpoint(str(teacher_ckpt), str(tmp_path / "teacher"))

    # stage 1 (mimic): forward KL + LM loss + aux, student upcycled to MoE
    stage1_ckpt = fit_steps(STAGE1, tmp_path / "stage1_run", *data_args(vqa), *teacher_args(tmp_path / "teacher"),
                            *pretrained)
    export_checkpoint(str(stage1_ckpt), str(tmp_path / "stage1"))
    stage1_losses = torch.load(stage1_ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["losses"]
    assert {k: v["class_path"] for k, v in stage1_losses.items()} == {
        "kd": "lit_distill.losses.ForwardKL", "ce": "lit_distill.losses.CrossEntropy",
        "aux": "lit_distill.losses.MoEAuxLoss"}

    # stage 2 starts from stage 1's export exactly, and optimises DPO (+ aux) against the teacher
    stage2_args = ["--config", str(STAGE2), *data_args(vqa, pairs=True), *teacher_args(tmp_path / "teacher"),
                   f"--model.init_args.student.init_args.init_from={tmp_path / 'stage1'}", *QUIET,
                   "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path / 'stage2_run'}"]
    cli = run_cli(stage2_args, run=False)
    module = cli.model
    assert {k: type(v) for k, v in module.losses.items()} == {"dpo": DPO, "aux": MoEAuxLoss}
    assert module.losses["dpo"].beta == 0.1 and module.losses["aux"].weight == 0.01
    stage1_student = build_student(torch.load(stage1_ckpt, map_location="cpu", weights_only=False)).eval()
    student = module.student.eval()
    assert isinstance(student.module.model.layers[0].mlp, MoEFeedForward)
    assert not any(p.requires_grad for p in student.vision.parameters())  # frozen pretrained tower
    assert torch.equal(student.vision.module.conv1.weight, torch.load(vision)["conv1.weight"])
    data = VLMDataModule(str(vqa["tokenizer"]), str(vqa["val"]), str(vqa["val"]))
    data.setup()
    batch = data.collate(data.val_dataset[:4])
    with torch.no_grad():
        torch.testing.assert_close(student(**batch["inputs"]).logits, stage1_student(**batch["inputs"]).logits,
                                   rtol=0, atol=0)

    # stage 2 through the CLI (stage 1 ran above, two steps with a checkpoint)
    run_cli(["fit", *stage2_args])

    # student-proposed, teacher-ranked pairs (candidates from the records' meta)
    teacher = build_student(torch.load(teacher_ckpt, map_location="cpu", weights_only=False))
    pairs = make_pairs(stage1_student, teacher, data, str(vqa["val"]))
    records = json.loads(vqa["val"].read_text())
    assert len(pairs) == len(records)
    for pair, rec in zip(pairs, records, strict=True):
        assert pair["chosen"] != pair["rejected"]
        assert {pair["chosen"], pair["rejected"]} <= set(rec["meta"]["candidates"])
        assert pair["teacher_margin"] >= 0
    out = tmp_path / "generated_pairs.json"
    out.write_text(json.dumps(pairs))
    # the generated pairs are valid stage-2 data
    VLMDataModule(str(vqa["tokenizer"]), str(out), str(out)).setup()


def test_sampled_proposals_without_candidates(tmp_path):
    """Records without meta.candidates: answers are sampled from the student, ranked by the teacher."""
    from lit_distill.models import LlavaComposition, TimmModel

    vqa = write_digit_vqa(tmp_path / "data", num_train=2, num_val=1)
    records = json.loads(vqa["val"].read_text())[:1]
    for rec in records:
        del rec["meta"]
    path = tmp_path / "plain.json"
    path.write_text(json.dumps([{**r, "image": str(vqa["val"].parent / r["image"])} for r in records]))
    data = VLMDataModule(str(vqa["tokenizer"]), str(path), str(path))

    def model(seed):
        torch.manual_seed(seed)
        vit = TimmModel("vit_tiny_patch16_224", num_classes=0,
                        model_kwargs={"img_size": 64, "patch_size": 16, "embed_dim": 16, "depth": 1, "num_heads": 2})
        return LlavaComposition(vit, image_token_id=data.image_token_id, vocab_size=data.vocab_size,
                                lm_config={"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
                                           "num_hidden_layers": 1, "num_attention_heads": 2,
                                           "num_key_value_heads": 1, "max_position_embeddings": 64})

    student, teacher = model(0), model(1)
    pairs = make_pairs(student, teacher, data, str(path), num_samples=3, max_new_tokens=2)
    again = make_pairs(student, teacher, data, str(path), num_samples=3, max_new_tokens=2)
    assert pairs == again and len(pairs) == 1  # seeded sampling; random models propose distinct answers
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and pair["teacher_margin"] > 0
        assert "<image>" not in pair["chosen"] + pair["rejected"]  # never sampled


def test_help_lists_every_command_with_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("make-data", "--train-scenes", "upcycle", "--moe", "make-pairs", "--student-ckpt",
                   "--teacher-ckpt", "--num-samples", "--tokenizer"):
        assert option in out, option
    assert "pretrain-vision" not in out  # the tower is pretrained by fit (tiny-vision_presence.yaml)


def _tiny_composition(data: VLMDataModule, **kwargs):
    from lit_distill.models import LlavaComposition

    lm = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
    return LlavaComposition(vision_tower(), image_token_id=data.image_token_id, lm_config=lm, vocab_size=data.vocab_size,
                            pad_token_id=data.pad_token_id, vision_image_size=64, vision_feature="layer3", **kwargs)


def test_upcycled_export_starts_the_moe_student_at_the_dense_student(tmp_path):
    """upcycle: the MoE model loaded with init_from computes what the dense student computed."""
    from recipes.llava_mod import upcycle_export

    vqa = write_digit_vqa(tmp_path / "data", num_train=2, num_val=2)
    data = VLMDataModule(str(vqa["tokenizer"]), str(vqa["val"]), str(vqa["val"]))
    data.setup()
    torch.manual_seed(0)
    dense = _tiny_composition(data).eval()
    dense.export(str(tmp_path / "dense"))
    moe = {"every": 2, "num_experts": 4, "top_k": 2, "capacity_factor": None}  # no drops: exact
    upcycle_export(tmp_path / "dense", tmp_path / "moe", moe, seed=3)
    student = _tiny_composition(data, moe=moe, init_from=str(tmp_path / "moe")).eval()
    assert isinstance(student.module.model.layers[0].mlp, MoEFeedForward)
    batch = data.collate(data.val_dataset[:4])
    with torch.no_grad():
        torch.testing.assert_close(student(**batch["inputs"]).logits, dense(**batch["inputs"]).logits,
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="already a MoE export"):
        upcycle_export(tmp_path / "moe", tmp_path / "twice", moe)


def test_answer_statistics_and_metrics_on_known_logits():
    from recipes.llava_mod import answer_statistics, vqa_metrics

    # 2 pairs, 3 positions, vocab 5 (yes=1, no=2); the answer is predicted at position 0, EOS (4) at 1
    labels = torch.tensor([[1, 4, -100], [3, 4, -100], [2, 4, -100], [0, 4, -100]])  # chosen rows, then rejected
    mask = labels != -100
    logits = torch.zeros(4, 3, 5)
    logits[:, 0] = torch.tensor([0.0, 2.0, 1.0, 0.0, 0.0])  # both prompts: "yes" most likely
    logits[:, 1, 4] = 10.0
    stats = answer_statistics(logits, labels, mask, yes=1, no=2)
    first = logits[0, 0].log_softmax(-1)
    eos = logits[0, 1].log_softmax(-1)[4]
    torch.testing.assert_close(stats["logp_chosen"], torch.stack([first[1] + eos, first[3] + eos]))
    torch.testing.assert_close(stats["logp_rejected"], torch.stack([first[2] + eos, first[0] + eos]))
    assert stats["correct"].tolist() == [1.0, 0.0] and stats["says_yes"].tolist() == [1.0, 1.0]
    meta = [{"type": "presence", "answer": "yes"}, {"type": "presence", "answer": "no"}]
    metrics = vqa_metrics(stats, meta)
    assert metrics["acc_all"] == metrics["acc_presence"] == 0.5
    assert metrics["pope_acc"] == 0.5 and metrics["pope_yes_ratio"] == 1.0 and metrics["false_yes_absent"] == 1.0
    assert metrics["pope_f1"] == pytest.approx(2 / 3)
    probs = first.exp()
    assert metrics["p_chosen"] == pytest.approx(float(probs[1] + probs[3]) / 2)
    assert metrics["p_other"] == pytest.approx(1 - float(probs[1] + probs[3] + probs[2] + probs[0]) / 2)


def test_digit_vqa_metrics_callback_logs_every_metric(tmp_path):
    from types import SimpleNamespace

    from recipes.llava_mod import DigitVQAMetrics

    vqa = write_digit_vqa(tmp_path / "data", num_train=2, num_val=3)
    data = VLMDataModule(str(vqa["tokenizer"]), str(vqa["val"]), str(vqa["val"]))
    data.setup()
    torch.manual_seed(0)
    logged = {}
    module = SimpleNamespace(student=_tiny_composition(data).eval(), device=torch.device("cpu"),
                             log=lambda name, value: logged.__setitem__(name, value))
    trainer = SimpleNamespace(sanity_checking=False, datamodule=data,
                              strategy=SimpleNamespace(batch_to_device=lambda batch, device: batch))
    callback = DigitVQAMetrics(str(vqa["val_pairs"]), batch_size=4)
    callback.on_validation_epoch_end(trainer, module)
    assert {"val/acc_all", "val/acc_count", "val/acc_presence", "val/pope_f1", "val/logp_chosen", "val/logp_rejected",
            "val/p_other"} <= set(logged)
    assert all(0.0 <= logged[f"val/{k}"] <= 1.0 for k in ("acc_all", "pope_acc", "p_chosen", "p_rejected", "p_other"))
    assert logged["val/logp_chosen"] < 0 and logged["val/logp_rejected"] < 0
    records = json.loads(vqa["val"].read_text())
    counts = sum(r["meta"]["type"] == "count" for r in records)
    assert counts and logged["val/acc_count"] * counts == pytest.approx(round(logged["val/acc_count"] * counts))
    with pytest.raises(Exception, match="no preference pairs"):
        DigitVQAMetrics(str(vqa["val"])).on_validation_epoch_end(trainer, module)


def test_teacher_gap_is_zero_against_itself_and_the_answer_position_kl_otherwise(tmp_path):
    from recipes.llava_mod import teacher_gap

    vqa = write_digit_vqa(tmp_path / "data", num_train=1, num_val=3)
    data = VLMDataModule(str(vqa["tokenizer"]), str(vqa["val"]), str(vqa["val"]))
    torch.manual_seed(0)
    student, teacher = _tiny_composition(data).eval(), _tiny_composition(data).eval()
    same = teacher_gap(teacher, teacher, data, str(vqa["val_pairs"]), batch_size=2)
    kinds = {r["meta"]["type"] for r in json.loads(vqa["val"].read_text())}
    assert set(same) == {f"{m}_{k}" for m in ("kl", "agree") for k in ["all", *kinds]}
    assert all(abs(same[f"kl_{k}"]) < 1e-6 and same[f"agree_{k}"] == 1.0 for k in ["all", *kinds])
    gap = teacher_gap(student, teacher, data, str(vqa["val_pairs"]), batch_size=2)
    assert gap["kl_all"] > 0 and 0.0 <= gap["agree_all"] <= 1.0
    first = json.loads(vqa["val_pairs"].read_text())[0]
    one = tmp_path / "one.json"  # the first question alone: its KL, computed here directly
    one.write_text(json.dumps([{**first, "image": str(vqa["val_pairs"].parent / first["image"])}]))
    batch = data.collate(data.build_samples(str(one), "one")[0])
    inputs = {k: v[:1] for k, v in batch["inputs"].items()}
    position = int(batch["response_mask"][0].float().argmax())
    with torch.no_grad():
        log_s, log_t = (m(**inputs).logits[0, position].log_softmax(-1) for m in (student, teacher))
    direct = float((log_t.exp() * (log_t - log_s)).sum())
    alone = teacher_gap(student, teacher, data, str(one))
    assert alone["kl_all"] == pytest.approx(direct, rel=1e-5) == alone[f"kl_{first['meta']['type']}"]
    assert alone["agree_all"] == float(log_s.argmax() == log_t.argmax())
