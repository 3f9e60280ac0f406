"""SLURM: the sbatch renderer, multi-node ranks from SLURM_* variables, a real sbatch job on one host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lit_distill.cli import main
from lit_distill.errors import ConfigError
from lit_distill.slurm import SlurmJob, render_sbatch

REPO = Path(__file__).resolve().parents[2]
DDP_CONFIG = "configs/text/kd/quickstart-student_from_quickstart-teacher_ddp.yaml"
FSDP2_CONFIG = "configs/text/kd/quickstart-student_from_quickstart-teacher_fsdp2.yaml"

# Callbacks the training processes import from a temporary directory. WorldProbe: each
# rank writes what Lightning made of its environment, and a checksum of the trained
# student (equal on every rank only if the gradients were synchronised). HoldForPreemption:
# in a SLURM job's first run, every rank stops after its first step and waits to be
# preempted (the test sends SIGUSR1); a requeued run trains on.
PROBE = '''
import json, os, time
import torch
from lightning.pytorch.callbacks import Callback


class HoldForPreemption(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if os.environ.get("SLURM_RESTART_COUNT", "0") != "0":
            return
        open(os.path.join(self.out_dir, f"holding{trainer.global_rank}"), "w").close()
        deadline = time.monotonic() + 240  # SIGUSR1 runs Lightning's handler in this sleep
        while time.monotonic() < deadline:
            time.sleep(0.1)


class WorldProbe(Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        env = trainer.strategy.cluster_environment
        checksum = sum(float(p.detach().double().sum()) for p in pl_module.student.parameters())
        info = {"global_rank": trainer.global_rank, "node_rank": trainer.node_rank,
                "local_rank": trainer.local_rank, "world_size": trainer.world_size,
                "num_nodes": trainer.num_nodes, "environment": type(env).__name__,
                "auto_requeue": getattr(env, "auto_requeue", None), "global_step": trainer.global_step,
                "job_id": os.environ.get("SLURM_JOB_ID"), "student_checksum": checksum,
                "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)
'''


def tiny_fit_args(root: Path, probe_dir: Path, text_dir, tokenizer_dir, teacher_dir,
                  callbacks: tuple[str, ...] = ("WorldProbe",)) -> list[str]:
    """``fit`` overrides: tiny test assets, batch 2 per process, 3 steps, the probe callbacks."""
    return [
        f"--data.init_args.tokenizer={tokenizer_dir}",
        f"--data.init_args.train_path={text_dir / 'train.txt'}",
        f"--data.init_args.val_path={text_dir / 'val.txt'}",
        "--data.init_args.max_length=32", "--data.init_args.batch_size=2",
        f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
        "--trainer.max_steps=3", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
        *(f"--trainer.callbacks+={json.dumps({'class_path': f'slurm_probe.{name}', 'init_args': {'out_dir': str(probe_dir)}})}"
          for name in callbacks),
    ]


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    (tmp_path / "probe_pkg").mkdir()
    (tmp_path / "probe_pkg" / "slurm_probe.py").write_text(PROBE)
    (tmp_path / "probe_out").mkdir()
    return tmp_path


def read_probes(out_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]


# ------------------------------------------------------------------ renderer
def job(**kwargs) -> SlurmJob:
    return SlurmJob(**{"configs": [DDP_CONFIG], "workdir": str(REPO), **kwargs})


def test_rendered_script_matches_the_request():
    script = render_sbatch(job(nodes=2, ntasks_per_node=4, gpus_per_node=4, cpus_per_task=8,
                               time="2-00:00:00", partition="gpu", job_name="kd",
                               setup=["module load cuda", "source .venv/bin/activate"],
                               fit_args=["--trainer.max_steps=10"]))
    directives = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    for expected in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--cpus-per-task=8",
                     "--time=2-00:00:00", "--partition=gpu", "--job-name=kd", "--signal=SIGUSR1@90", "--requeue"):
        assert expected in directives, expected
    assert not any(d.startswith("--ntasks=") for d in directives)  # Lightning refuses it
    lines = script.splitlines()
    srun = next(line for line in lines if line.startswith("srun "))
    assert lines.index("module load cuda") < lines.index("source .venv/bin/activate") < lines.index(srun)
    assert f"fit --config {DDP_CONFIG}" in srun
    for expected in ("--trainer.num_nodes=2", "--trainer.devices=4", "--trainer.accelerator=gpu",
                     "SLURMEnvironment", '"auto_requeue":true'):
        assert expected in srun, expected
    assert srun.endswith("--trainer.max_steps=10")  # user overrides come last and win
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_fsdp2_config_gets_the_data_parallel_size_of_the_allocation():
    command = job(configs=[FSDP2_CONFIG], nodes=3, ntasks_per_node=2).fit_command()
    assert "--trainer.strategy.init_args.data_parallel_size=6" in command
    assert "--trainer.strategy.init_args.tensor_parallel_size=1" in command
    assert not any("data_parallel_size" in a for a in job(nodes=3, ntasks_per_node=2).fit_command())


def test_rendered_overrides_resolve_in_lightning_cli(capsys):
    """The trainer arguments the script adds are valid for the CLI (printed, not run)."""
    command = job(configs=[FSDP2_CONFIG], nodes=2, ntasks_per_node=2).fit_command()
    with pytest.raises(SystemExit):
        main([*command[3:], "--print_config"])
    printed = capsys.readouterr().out
    assert "num_nodes: 2" in printed and "data_parallel_size: 4" in printed
    assert "class_path: lightning.pytorch.plugins.environments.SLURMEnvironment" in printed
    assert "auto_requeue: true" in printed


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"time": "12h"}, "slurm --time: '12h' is not a SLURM time"),
    ({"gpus_per_node": 2, "ntasks_per_node": 4}, "slurm --gpus-per-node: 2 GPUs but --ntasks-per-node 4"),
    ({"nodes": 0}, "slurm --nodes: must be at least 1"),
    ({"job_name": "interactive"}, "slurm --job-name: 'interactive' is not usable"),
    ({"configs": ["configs/no_such.yaml"]}, "slurm --config: no file 'configs/no_such.yaml'"),
    ({"partition": "a b"}, "slurm --partition: 'a b'"),
])
def test_bad_requests_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        render_sbatch(job(**kwargs))


@pytest.mark.parametrize("good", ["30", "90:00", "12:00:00", "2-00", "2-12:30", "1-00:00:00"])
def test_slurm_time_formats_are_accepted(good):
    assert f"--time={good}" in render_sbatch(job(time=good))


def test_slurm_subcommand_saves_the_script_and_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "job.sbatch"
    main(["slurm", "--config", DDP_CONFIG, "--ntasks-per-node", "2", "--save", str(out),
          "--", "--trainer.max_steps=5"])
    text = out.read_text()
    assert text.startswith("#!/bin/bash") and "--trainer.max_steps=5" in text and os.access(out, os.X_OK)
    with pytest.raises(SystemExit) as exit_info:
        main(["slurm", "--config", DDP_CONFIG, "--time", "soon"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: slurm --time: 'soon'")


# ------------------------------------------------- multi-node logic by hand
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_from_slurm_variables_form_world_size_two(probe_dir, text_dir, tokenizer_dir, teacher_dir):
    """Two processes, each "one node with one task" by its SLURM_* variables, train as one DDP job."""
    root = probe_dir / "run"
    command = job(nodes=2, ntasks_per_node=1, python=sys.executable, fit_args=tiny_fit_args(
        root, probe_dir / "probe_out", text_dir, tokenizer_dir, teacher_dir)).fit_command()
    port = free_port()
    procs = []
    for node in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        env.update({
            "PYTHONPATH": f"{REPO}{os.pathsep}{probe_dir / 'probe_pkg'}", "OMP_NUM_THREADS": "1",
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit_distill", "SLURM_NNODES": "2",
            "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), "SLURM_LOCALID": "0",
            "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "node[0-1]",
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        })
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    probes = read_probes(probe_dir / "probe_out")
    assert [(p["global_rank"], p["node_rank"], p["local_rank"]) for p in probes] == [(0, 0, 0), (1, 1, 0)]
    assert all(p["world_size"] == 2 and p["num_nodes"] == 2 and p["global_step"] == 3 for p in probes)
    assert all(p["environment"] == "SLURMEnvironment" and p["auto_requeue"] is True for p in probes)
    # each rank saw its own half of the data; identical students mean the gradients were all-reduced
    assert probes[0]["student_checksum"] == pytest.approx(probes[1]["student_checksum"], rel=1e-9, abs=1e-9)
    ckpt = torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3


# ------------------------------------------------------- a real SLURM job
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "scancel")


def _stop(pid_files: list[Path]) -> None:
    """SIGTERM the daemons whose pids are in ``pid_files``; SIGKILL those still there after 10 s."""
    pids = []
    for pid_file in pid_files:
        if pid_file.is_file():
            pid = int(pid_file.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.1)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as stopped)."""
    try:
        os.kill(pid, 0)
        status = Path(f"/proc/{pid}/status").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return "\nState:\tZ" not in status


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """munged + slurmctld + slurmd on this host, configured in a temporary directory.

    Yields the environment for SLURM's client commands (``SLURM_CONF``). Fails,
    never skips, when SLURM is missing (``bash scripts/setup.sh`` installs it)
    or its daemons cannot start. Always stops the daemons it started.
    """
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"SLURM is not installed (missing {missing}); run `bash scripts/setup.sh` "
                    "(installs Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.fail("the single-host SLURM test starts slurmd, which needs root")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "spool_ctld", "spool_d", "log"):
        (d / sub).mkdir()
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    sock = d / "munge" / "munge.sock"
    host = socket.gethostname()
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=litdistilltest", f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={sock}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SlurmdParameters=config_overrides",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmdSpoolDir={d / 'spool_d'}", f"StateSaveLocation={d / 'spool_ctld'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
        "SlurmUser=root", "SlurmdUser=root", "ReturnToService=2", "MinJobAge=600", "KillWait=3",
        "MessageTimeout=60",  # a loaded CI machine can be slow to answer srun
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={max(2, os.cpu_count() or 2)} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pid_files = [d / "munge" / "munged.pid", d / "slurmctld.pid", d / "slurmd.pid"]
    starts = [
        ["munged", "--force", f"--socket={sock}", f"--key-file={key}", f"--pid-file={pid_files[0]}",
         f"--log-file={d / 'log' / 'munged.log'}", f"--seed-file={d / 'munge' / 'munged.seed'}"],
        ["slurmctld", "-f", str(conf)],
        ["slurmd", "-f", str(conf)],
    ]
    try:
        for command, pid_file in zip(starts, pid_files, strict=True):
            started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
            deadline = time.monotonic() + 15
            while not pid_file.is_file() and time.monotonic() < deadline:
                time.sleep(0.1)
            if started.returncode != 0 or not pid_file.is_file():
                logs = "\n".join(p.read_text()[-1500:] for p in (d / "log").glob("*.log"))
                pytest.fail(f"{command[0]} did not start (rc {started.returncode}): {started.stderr}\n{logs}")
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the SLURM node never became idle (sinfo: {state!r})")
        yield env
    finally:
        _stop(pid_files)


def job_state(job_id: str, env: dict) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(field.split("=", 1) for field in text.split() if "=" in field)


def wait_for(predicate, timeout: float, what: str, describe=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\n{describe()}")
        time.sleep(0.5)


@pytest.mark.slow
def test_sbatch_job_trains_with_world_size_two_and_survives_preemption(
        slurm_cluster, probe_dir, text_dir, tokenizer_dir, teacher_dir):
    """The rendered script, submitted with sbatch: 2 tasks train with world size 2; SIGUSR1
    (what ``--signal=SIGUSR1@90`` sends before the time limit) makes Lightning save an HPC
    checkpoint and requeue the job, which resumes from it and finishes, writing a checkpoint."""
    env = slurm_cluster
    root, script, out = probe_dir / "run", probe_dir / "job.sbatch", probe_dir / "probe_out"
    main(["slurm", "--config", DDP_CONFIG, "--nodes", "1", "--ntasks-per-node", "2", "--time", "00:10:00",
          "--job-name", "lit_distill_test", "--output", str(probe_dir / "job-%j.log"), "--workdir", str(REPO),
          "--python", sys.executable,
          "--setup", f"export PYTHONPATH={REPO}{os.pathsep}{probe_dir / 'probe_pkg'}",
          "--setup", "export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1",
          "--save", str(script), "--",
          *tiny_fit_args(root, out, text_dir, tokenizer_dir, teacher_dir,
                         callbacks=("WorldProbe", "HoldForPreemption"))])
    submitted = subprocess.run(["sbatch", "--parsable", str(script)], env=env, capture_output=True, text=True)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    log_file = probe_dir / f"job-{job_id}.log"

    def describe() -> str:
        return f"{job_state(job_id, env)}\n{log_file.read_text()[-4000:] if log_file.is_file() else '(no log)'}"

    terminal = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")

    def holding() -> bool:
        if job_state(job_id, env).get("JobState") in terminal:
            pytest.fail(f"the job ended before it was preempted\n{describe()}")
        return (out / "holding0").exists() and (out / "holding1").exists()

    wait_for(holding, 300, "both ranks to finish a step", describe)
    signalled = subprocess.run(["scancel", "--signal=USR1", job_id], env=env, capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    requeued = {"Restarts": "1", "JobState": "PENDING"}
    wait_for(lambda: requeued.items() <= job_state(job_id, env).items(), 120, "the job to be requeued", describe)
    # A requeued job waits about two minutes before it is eligible again; start it now.
    wait_for(lambda: subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                                    env=env, capture_output=True).returncode == 0, 30, "scontrol update", describe)
    wait_for(lambda: job_state(job_id, env).get("JobState") in terminal, 300, "the job to end", describe)
    state, log = job_state(job_id, env), log_file.read_text()
    assert state.get("JobState") == "COMPLETED" and state.get("ExitCode") == "0:0", describe()
    assert f"lit_distill: job {job_id}" in log and "2 processes (restart 0)" in log and "(restart 1)" in log
    hpc = root / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == 1
    assert f"Restored all states from the checkpoint at {hpc}" in log
    probes = read_probes(out)
    assert [p["global_rank"] for p in probes] == [0, 1]
    for probe in probes:
        assert probe["world_size"] == 2 and probe["job_id"] == job_id and probe["restart_count"] == 1
        assert probe["environment"] == "SLURMEnvironment" and probe["auto_requeue"] is True
        assert probe["global_step"] == 3
    ckpt = torch.load(next(root.rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
