"""FSDP2 sharding: block discovery, sharded modules, 2-process equality, consolidated checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lit_distill.consolidate import consolidate_checkpoint
from lit_distill.errors import ConfigError
from lit_distill.sharding import ShardingConfig, data_parallel_mesh, find_blocks

REPO = Path(__file__).resolve().parents[2]
FSDP2_CONFIG = REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher_fsdp2.yaml"


def tiny_llama(layers: int = 3):
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=layers, num_attention_heads=2,
                                        num_key_value_heads=1, max_position_embeddings=32))


# ----------------------------------------------------------- block discovery
def test_hf_blocks_are_the_decoder_layers():
    model = tiny_llama(3)
    assert find_blocks(model) == list(model.model.layers)


def test_timm_vit_blocks_and_resnet_stages():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=3)
    assert find_blocks(vit) == list(vit.blocks)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=10)
    blocks = find_blocks(resnet)
    # the BasicBlocks of layer1..layer4, not the convs inside them
    assert blocks == [b for stage in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4) for b in stage]


def test_user_given_paths_and_class_names():
    model = tiny_llama(3)
    assert find_blocks(model, ["model.layers"]) == list(model.model.layers)
    assert find_blocks(model, ["model.layers.1"]) == [model.model.layers[1]]
    assert find_blocks(model, ["LlamaMLP"]) == [layer.mlp for layer in model.model.layers]
    # nested choices keep only the outermost
    assert find_blocks(model, ["LlamaMLP", "LlamaDecoderLayer"]) == list(model.model.layers)


def test_unknown_block_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.init_args.sharding.blocks: 'NoSuchLayer'"):
        find_blocks(tiny_llama(1), ["NoSuchLayer"])


def test_plain_module_without_repeats_has_no_blocks():
    assert find_blocks(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))) == []


def test_bad_dtype_names_the_field():
    with pytest.raises(ConfigError, match="model.init_args.sharding.param_dtype: 'int8'"):
        ShardingConfig(param_dtype="int8").mp_policy()
    policy = ShardingConfig(param_dtype="bf16", reduce_dtype="float32").mp_policy()
    assert policy.param_dtype == torch.bfloat16 and policy.reduce_dtype == torch.float32


def test_tensor_parallel_mesh_is_refused():
    class Mesh:  # the two calls data_parallel_mesh makes on a (dp=1, tp=2) DeviceMesh
        mesh_dim_names = ("data_parallel", "tensor_parallel")

        def __getitem__(self, name):
            return type("Sub", (), {"size": lambda _self: 2 if name == "tensor_parallel" else 1})()

        def size(self):
            return 2

    with pytest.raises(ConfigError, match="tensor_parallel_size.*data_parallel_size: 2"):
        data_parallel_mesh(Mesh())


# ----------------------------------------------------- sharding in-process
@pytest.fixture
def one_rank_mesh(tmp_path):
    """A 1-process gloo group and ModelParallelStrategy's (data_parallel, tensor_parallel) mesh."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    finally:
        dist.destroy_process_group()


def build_module(sharding: ShardingConfig | None = None):
    from lit_distill import DistillationModule
    from lit_distill.losses import CrossEntropy, ForwardKL
    from lit_distill.models import HFCausalLM

    torch.manual_seed(0)
    config = {"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "max_position_embeddings": 32}
    student = HFCausalLM(config=config)
    teacher = HFCausalLM(config={**config, "hidden_size": 24, "num_hidden_layers": 3})
    return DistillationModule(student=student, teacher=teacher, sharding=sharding,
                              losses={"kd": ForwardKL(weight=0.5), "ce": CrossEntropy(weight=0.5)})


def test_configure_model_is_a_no_op_without_a_mesh():
    module = build_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    module.configure_model()
    from torch.distributed.tensor import DTensor

    assert not any(isinstance(p, DTensor) for p in module.parameters())
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_configure_model_shards_student_and_frozen_teacher(one_rank_mesh):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    batch = {"inputs": {"input_ids": torch.randint(0, 64, (2, 8))}, "labels": torch.randint(0, 64, (2, 8))}
    reference = build_module()
    with torch.no_grad():
        ref_student, ref_teacher = reference(batch)
    module = build_module(ShardingConfig())
    module._device_mesh = one_rank_mesh  # what ModelParallelStrategy.setup_environment does
    module.configure_model()
    module.configure_model()  # idempotent (Lightning may call it again for validate/test)
    layers = [*module.student.model.model.layers, *module.teacher.model.model.model.layers]
    assert all(isinstance(m, FSDPModule) for m in [module.student, module.teacher.model, *layers])
    for name, param in module.named_parameters():
        assert isinstance(param, DTensor), name
        assert param.requires_grad == (not name.startswith("teacher.")), name
    with torch.no_grad():
        student, teacher = module(batch)
    torch.testing.assert_close(student.logits, ref_student.logits, rtol=0, atol=0)
    torch.testing.assert_close(teacher.logits, ref_teacher.logits, rtol=0, atol=0)
    # gradients reach the sharded student only
    total, _ = module.compute_losses(batch, *module(batch))
    total.backward()
    assert all(p.grad is not None for p in module.student.parameters())
    assert all(p.grad is None for p in module.teacher.parameters())


# ------------------------------------------------- 2 processes, end to end
def fit_args(root: Path, text_dir, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(FSDP2_CONFIG),
        f"--data.init_args.tokenizer={tokenizer_dir}",
        f"--data.init_args.train_path={text_dir / 'train.txt'}",
        f"--data.init_args.val_path={text_dir / 'val.txt'}",
        "--data.init_args.max_length=32",
        f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
        # SGD: Adam's m/sqrt(v) turns float rounding in near-zero gradients into lr-sized steps.
        "--model.init_args.scheduler=null", "--model.init_args.optimizer.class_path=torch.optim.SGD",
        "--model.init_args.optimizer.init_args.lr=0.5",
        "--trainer.max_steps=3", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
        "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", *extra,
    ]


def run_fit(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "lit_distill", *args], cwd=REPO, env=env, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def student_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("student.")}


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_process_and_consolidate(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    """FSDP2 on 2 CPU processes x batch 2 == 1 process x batch 4 after 3 SGD steps (fp32).

    The sharded run stops after 2 steps and resumes from its sharded checkpoint (one
    step per epoch, so the data order is the same either way). Its last checkpoint is
    a directory; consolidated into one file it loads in a single process and exports
    like any other checkpoint.
    """
    single_root, sharded_root = tmp_path / "one", tmp_path / "two"
    one_step_epochs = "--trainer.limit_train_batches=1"
    run_fit(fit_args(single_root, text_dir, tokenizer_dir, teacher_dir, "--data.init_args.batch_size=4",
                     "--trainer.devices=1", "--trainer.strategy=auto", "--model.init_args.sharding=null",
                     one_step_epochs))
    sharded = fit_args(sharded_root, text_dir, tokenizer_dir, teacher_dir, "--data.init_args.batch_size=2",
                       one_step_epochs)
    run_fit([*sharded, "--trainer.max_steps=2"])
    first_dir = next(sharded_root.rglob("last.ckpt"))
    resumed = run_fit([*sharded, f"--ckpt_path={first_dir}"])
    assert f"Restored all states from the checkpoint at {first_dir}" in resumed.stdout + resumed.stderr
    single = torch.load(next(single_root.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    sharded_dir = max(sharded_root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    assert sharded_dir != first_dir
    assert sharded_dir.is_dir() and len(list(sharded_dir.glob("*.distcp"))) == 2  # one shard per process
    merged_file = consolidate_checkpoint(sharded_dir, tmp_path / "merged.ckpt")
    merged = torch.load(merged_file, map_location="cpu", weights_only=False)
    assert merged["global_step"] == single["global_step"] == 3
    expected, got = student_state(single["state_dict"]), student_state(merged["state_dict"])
    assert sorted(got) == sorted(expected) and not any(k.startswith("teacher.") for k in merged["state_dict"])
    # The initial student is identical (seeded); after 3 steps both runs moved it the same way.
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)

    from transformers import AutoModelForCausalLM

    from lit_distill.cli import main
    from lit_distill.export import build_student

    main(["export", "--ckpt", str(merged_file), "--out", str(tmp_path / "exported")])
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    reference = build_student(single).eval()
    ids = torch.randint(0, exported.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_mixed_precision_computes_in_bf16_and_keeps_fp32_master_weights(one_rank_mesh):
    batch = {"inputs": {"input_ids": torch.randint(0, 64, (2, 8))}, "labels": torch.randint(0, 64, (2, 8))}
    reference = build_module()
    with torch.no_grad():
        ref_student, _ = reference(batch)
    module = build_module(ShardingConfig(param_dtype="bfloat16", reduce_dtype="float32", output_dtype="float32"))
    module._device_mesh = one_rank_mesh
    module.configure_model()
    student, teacher = module(batch)
    assert student.logits.dtype == teacher.logits.dtype == torch.float32  # output_dtype
    # computed in bf16 (8 mantissa bits): close to the fp32 model, but not equal
    error = (student.logits - ref_student.logits).abs().max()
    assert 0 < error < 0.05 * ref_student.logits.abs().max()
    total, _ = module.compute_losses(batch, student, teacher)
    total.backward()
    for param in module.student.parameters():
        assert param.dtype == param.grad.dtype == torch.float32  # sharded master copy and its gradient


def test_consolidate_refuses_what_is_not_a_sharded_checkpoint(tmp_path, capsys):
    from lit_distill.consolidate import main as consolidate_main

    plain = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, plain)
    with pytest.raises(ConfigError, match="is not a distributed checkpoint directory"):
        consolidate_checkpoint(plain, tmp_path / "out.ckpt")
    with pytest.raises(SystemExit, match="error: consolidate: .* is not a distributed checkpoint"):
        consolidate_main([str(tmp_path), "--out", str(tmp_path / "out.ckpt")])
    assert not (tmp_path / "out.ckpt").exists()


def test_timm_student_and_teacher_shard_and_match_the_unsharded_module(one_rank_mesh):
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from lit_distill import DistillationModule
    from lit_distill.losses import CrossEntropy, ForwardKL
    from lit_distill.models import TimmModel

    def build():
        torch.manual_seed(0)
        student = TimmModel("vit_tiny_patch16_224", num_classes=10,
                            model_kwargs={"img_size": 16, "patch_size": 4, "depth": 2}, mean=[0.5] * 3, std=[0.5] * 3)
        teacher = TimmModel("resnet10t", num_classes=10, mean=[0.5] * 3, std=[0.5] * 3)
        return DistillationModule(student=student, teacher=teacher,
                                  losses={"kd": ForwardKL(weight=0.5), "ce": CrossEntropy(weight=0.5)})

    batch = {"inputs": {"pixel_values": torch.randn(2, 3, 16, 16)}, "labels": torch.tensor([1, 7])}
    reference = build()
    with torch.no_grad():
        ref_student, ref_teacher = reference(batch)
    module = build()
    module._device_mesh = one_rank_mesh
    module.configure_model()
    assert all(isinstance(b, FSDPModule) for b in module.student.model.blocks)
    assert all(isinstance(b, FSDPModule) for b in module.teacher.model.model.layer4)
    assert all(isinstance(p, DTensor) for p in module.parameters())
    with torch.no_grad():
        student, teacher = module(batch)
    torch.testing.assert_close(student.logits, ref_student.logits, rtol=0, atol=0)
    torch.testing.assert_close(teacher.logits, ref_teacher.logits, rtol=0, atol=0)
    total, _ = module.compute_losses(batch, *module(batch))
    total.backward()
    assert all(p.grad is not None for p in module.student.parameters())
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
