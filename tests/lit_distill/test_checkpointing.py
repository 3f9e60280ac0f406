"""Atomic checkpoint writes, generator states, and exact mid-epoch resume after a SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_distill.checkpointing import (
    AtomicCheckpointIO,
    DistillationCheckpoint,
    ResumableDataLoader,
    ResumableSampler,
    atomic_torch_save,
)
from lit_distill.cli import run_cli

REPO = Path(__file__).resolve().parents[2]


def test_a_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path):
    """The writer process SIGKILLs itself half-way through pickling the second checkpoint."""
    target = tmp_path / "last.ckpt"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from lit_distill.checkpointing import atomic_torch_save

        class DiesWhilePickled:
            def __reduce__(self):
                os.kill(os.getpid(), signal.SIGKILL)

        atomic_torch_save({{"step": 1, "weights": torch.arange(1000)}}, {str(target)!r})
        atomic_torch_save({{"step": 2, "weights": torch.zeros(1000), "boom": DiesWhilePickled()}}, {str(target)!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL
    saved = torch.load(target, weights_only=True)
    assert saved["step"] == 1 and torch.equal(saved["weights"], torch.arange(1000))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most a stray temp file


def test_atomic_io_round_trips_and_replaces(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    io.save_checkpoint({"x": torch.ones(3)}, path)
    io.save_checkpoint({"x": torch.zeros(3)}, path)
    assert torch.equal(io.load_checkpoint(path)["x"], torch.zeros(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ckpt"]
    atomic_torch_save([1, 2], tmp_path / "plain.pt")
    assert torch.load(tmp_path / "plain.pt") == [1, 2]


def test_checkpoint_callback_restores_every_generator():
    callback = DistillationCheckpoint()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = callback.state_dict()
    atomic_torch_save(state, Path(os.environ.get("TMPDIR", "/tmp")) / f"rng-{os.getpid()}.pt")
    state = torch.load(Path(os.environ.get("TMPDIR", "/tmp")) / f"rng-{os.getpid()}.pt", weights_only=True)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every stream on
    resumed = DistillationCheckpoint()
    resumed.load_state_dict(state)
    torch.rand(2)  # e.g. the resumed epoch's DataLoader iterator draws a seed
    resumed.on_train_batch_start(None, None, None, 0)  # restored right before the first batch
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def _batches(loader):
    return [b.tolist() for b in loader]


def test_resumable_loader_skips_exactly_the_batches_already_seen():
    data = list(range(23))
    make = lambda: ResumableDataLoader(data, batch_size=4, sampler=ResumableSampler(  # noqa: E731
        data, num_replicas=1, rank=0, shuffle=True, seed=5))
    full = make()
    full.sampler.set_epoch(2)
    everything = _batches(full)
    interrupted = make()
    interrupted.sampler.set_epoch(2)
    iterator = iter(interrupted)
    seen = [next(iterator).tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches": 3} and seen == everything[:3]

    resumed = make()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    rest = _batches(resumed)
    assert seen + rest == everything
    assert resumed.state_dict() == {"epoch": 2, "batches": len(everything)}
    resumed.sampler.set_epoch(3)  # the next epoch is whole again
    assert len(_batches(resumed)) == len(everything)


def test_a_state_from_another_epoch_or_the_epoch_end_skips_nothing():
    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=2, sampler=ResumableSampler(data, num_replicas=1, rank=0))
    loader.load_state_dict({"epoch": 0, "batches": 5})  # saved after the last batch
    assert len(_batches(loader)) == 5
    loader.load_state_dict({"epoch": 4, "batches": 2})
    loader.sampler.set_epoch(1)
    assert len(_batches(loader)) == 5
    plain = ResumableDataLoader(data, batch_size=2)  # e.g. rebuilt by Lightning around its own sampler
    assert not plain.resumable and plain.state_dict() == {}
    plain.load_state_dict({"epoch": 0, "batches": 2})
    assert len(_batches(plain)) == 5


KILL_CALLBACK = '''
import os, signal
import lightning as L

class KillAt(L.Callback):
    """SIGKILL this process right after optimizer step ``step`` (a crash, not an exit)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    """Killed after step 5 (checkpoint at step 4, mid-epoch), resumed to step 10: bitwise equal."""
    (tmp_path / "killer.py").write_text(KILL_CALLBACK)
    dropout = tmp_path / "dropout.yaml"  # dropout makes the resumed generator state matter
    dropout.write_text(textwrap.dedent("""
        model:
          init_args:
            student:
              class_path: lit_distill.models.HFCausalLM
              init_args:
                config: {model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
                         num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64,
                         attention_dropout: 0.2}
    """))
    kill = tmp_path / "kill.yaml"
    kill.write_text("trainer:\n  callbacks:\n    - {class_path: killer.KillAt, init_args: {step: 5}}\n")

    def args(root: Path, *extra: str) -> list[str]:
        return ["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"), "--config", str(dropout), *extra,
                f"--data.init_args.tokenizer={tokenizer_dir}", f"--data.init_args.train_path={text_dir / 'train.txt'}",
                f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=16",
                "--data.init_args.batch_size=2",
                f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
                "--model.init_args.scheduler.init_args.total_steps=40", "--trainer.max_steps=10",
                "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
                "--trainer.enable_progress_bar=false", "--checkpoint.monitor=null",
                "--checkpoint.every_n_train_steps=2", f"--trainer.default_root_dir={root}"]

    straight = run_cli(args(tmp_path / "straight"))
    assert straight.trainer.num_training_batches > 6, "the kill must land mid-epoch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    killed = subprocess.run([sys.executable, "-m", "lit_distill", *args(tmp_path / "killed", "--config", str(kill))],
                            cwd=REPO, env=env, capture_output=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    last = next((tmp_path / "killed").rglob("last.ckpt"))
    assert torch.load(last, weights_only=False)["global_step"] == 4

    resumed = run_cli(args(tmp_path / "killed", f"--ckpt_path={last}"))
    assert resumed.trainer.global_step == 10
    a, b = straight.model.student.state_dict(), resumed.model.student.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_last_checkpoint_is_the_final_step_when_the_monitored_loss_stops_improving(tmp_path, text_dir, tokenizer_dir,
                                                                                   teacher_dir):
    """At lr 0 the validation loss never improves after the first validation, so Lightning's callback
    would leave last.ckpt at step 2; ours rewrites it after every validation and at the end."""
    root = tmp_path / "run"
    run = run_cli(["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                   f"--data.init_args.tokenizer={tokenizer_dir}", f"--data.init_args.train_path={text_dir / 'train.txt'}",
                   f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=16",
                   "--data.init_args.batch_size=2",
                   f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
                   "--model.init_args.scheduler=null", "--model.init_args.optimizer.init_args.lr=0.0",
                   "--trainer.max_steps=7", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2",
                   "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}"])
    assert run.trainer.global_step == 7
    (best,) = root.rglob("best-step*.ckpt")
    assert torch.load(best, weights_only=False)["global_step"] == 2  # the monitored loss never improved again
    assert torch.load(next(root.rglob("last.ckpt")), weights_only=False)["global_step"] == 7
