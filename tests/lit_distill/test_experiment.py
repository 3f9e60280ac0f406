"""The experiment toolkit: arms × seeds, runs through ``python -m lit_distill fit``, metrics, tables."""

from __future__ import annotations

import ast
import json
import statistics
from pathlib import Path

import pytest

from lit_distill.errors import ConfigError
from lit_distill.experiment import (
    Run,
    RunFailed,
    by_arm,
    expand,
    fit_arguments,
    launch,
    markdown_table,
    mean_std,
    plot_trajectories,
    read_metrics,
    summarise,
    summary_table,
)

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml")


def test_the_toolkit_imports_neither_the_cli_nor_recipes_nor_scripts():
    tree = ast.parse((REPO / "lit_distill/experiment.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "lit_distill.errors" in imported
    assert not {name for name in imported if name.startswith(("lit_distill.cli", "recipes", "scripts"))}


def test_expand_crosses_every_arm_with_every_seed():
    arms = [Run("a", ["x.yaml"]), Run("b", ["y.yaml"], ["--trainer.max_steps=3"], group="students")]
    runs = expand(arms, seeds=[0, 1, 2])
    assert [(r.name, r.seed) for r in runs] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert all(r.overrides == ("--trainer.max_steps=3",) and r.group == "students" for r in runs[3:])
    assert runs[4].label == "students/b/seed1"


def test_run_directory_is_safe_and_under_its_group(tmp_path):
    run = Run("cache k=16 / online", ["c.yaml"], seed=2, group="stage 1")
    assert run.directory(tmp_path) == tmp_path / "stage_1" / "cache_k=16_online" / "seed2"


def test_runs_sharing_a_directory_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="share a directory"):
        launch([Run("a b", ["c.yaml"]), Run("a/b", ["c.yaml"])], tmp_path)


def test_fit_arguments_put_the_run_directory_and_seed_after_the_overrides(tmp_path):
    args = fit_arguments(Run("a", ["one.yaml", "two.yaml"], ["--trainer.max_steps=5"], seed=3), tmp_path)
    assert args[:5] == ["fit", "--config", "one.yaml", "--config", "two.yaml"]
    logger = json.loads(args[5].split("=", 1)[1])
    assert logger["class_path"].endswith("CSVLogger") and logger["init_args"]["save_dir"] == str(tmp_path)
    assert args[6:] == ["--trainer.max_steps=5", f"--trainer.default_root_dir={tmp_path}", "--seed_everything=3"]


def test_seed_placeholders_in_overrides_take_the_runs_seed(tmp_path):
    run = Run("a", ["c.yaml"], ["--data.init_args.seed={seed}", "--model.init_args.step={class_path: S, "
                                "init_args: {seed: {seed}}}"], seed=4)
    args = fit_arguments(run, tmp_path)
    assert "--data.init_args.seed=4" in args and "--model.init_args.step={class_path: S, init_args: {seed: 4}}" in args


def test_a_directory_started_with_other_arguments_is_refused(tmp_path):
    run = Run("a", ["c.yaml"])
    directory = run.directory(tmp_path)
    directory.mkdir(parents=True)
    (directory / "run.json").write_text(json.dumps({"fit": fit_arguments(replace_seed(run, 9), directory)}))
    with pytest.raises(ConfigError, match="run.json: this run directory holds a run with other fit arguments"):
        launch([run], tmp_path)


def replace_seed(run: Run, seed: int) -> Run:
    return expand([run], [seed])[0]


def test_read_metrics_merges_attempts_the_later_one_winning(tmp_path):
    for version, text in ((0, "epoch,step,train/loss,val/loss\n0,0,3.0,\n0,1,2.5,\n0,1,,2.4\n"),
                          (1, "epoch,step,train/loss,val/loss\n0,1,2.6,\n0,2,2.0,\n0,2,,1.9\n")):
        path = tmp_path / f"lightning_logs/version_{version}/metrics.csv"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    metrics = read_metrics(tmp_path)
    assert metrics.trajectories["train/loss"] == [(0, 3.0), (1, 2.6), (2, 2.0)]
    assert metrics.trajectories["val/loss"] == [(1, 2.4), (2, 1.9)]
    assert metrics.final == {"train/loss": 2.0, "val/loss": 1.9}
    assert "epoch" not in metrics.trajectories


def test_mean_std_and_tables_match_a_direct_computation():
    rows = {"kd": [{"val/ce": 4.1, "val/kd": 1.0}, {"val/ce": 4.3, "val/kd": 1.2}, {"val/ce": 4.0}],
            "ce only": [{"val/ce": 4.5}]}
    summary = summarise(rows)
    ce = [4.1, 4.3, 4.0]
    assert summary["kd"]["val/ce"].mean == pytest.approx(statistics.fmean(ce))
    assert summary["kd"]["val/ce"].std == pytest.approx(statistics.stdev(ce))
    assert summary["kd"]["val/kd"].n == 2 and summary["ce only"]["val/ce"].std == 0.0
    assert "val/kd" not in summary["ce only"]
    assert mean_std([1.0, 3.0]).cell(2) == f"2.00 ± {statistics.stdev([1.0, 3.0]):.2f}"
    assert mean_std([1.0, float("nan")]).cell() == "–"  # a metric some seeds did not measure
    table = summary_table(summary, ["val/ce", "val/kd"], digits=3).splitlines()
    assert table[0] == "| arm | n | val/ce | val/kd |" and table[1] == "|---|---|---|---|"
    assert table[2] == f"| kd | 3 | {statistics.fmean(ce):.3f} ± {statistics.stdev(ce):.3f} | 1.100 ± 0.141 |"
    assert table[3] == "| ce only | 1 | 4.500 ± 0.000 | - |"
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"


def test_plot_draws_the_steps_every_seed_logged(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "val_loss.png"
    plot_trajectories({"kd": [[(0, 3.0), (10, 2.0)], [(0, 3.2), (10, 2.2), (20, 2.0)]], "ce": [[]]},
                      "val/loss", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------- through the real subprocess path
@pytest.fixture(scope="module")
def tiny_arm(text_dir, tokenizer_dir, teacher_dir) -> Run:
    """configs/text/kd/quickstart-student_from_quickstart-teacher.yaml on the tiny test assets, 2 steps, validating and logging each step."""
    return Run("kd", [QUICKSTART], [
        f"--data.init_args.tokenizer={tokenizer_dir}", f"--data.init_args.train_path={text_dir / 'train.txt'}",
        f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=32",
        "--data.init_args.batch_size=4", f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
        "--trainer.max_steps=2", "--trainer.val_check_interval=1", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"], export=True)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, tiny_arm):
    root = tmp_path_factory.mktemp("experiment")
    return root, launch(expand([tiny_arm], [0, 1]), root, workers=2, cwd=REPO)


@pytest.mark.slow
def test_runs_go_through_fit_and_export(experiment):
    root, results = experiment
    assert [(r.run.seed, r.skipped) for r in results] == [(0, False), (1, False)]
    for result in results:
        assert (result.directory / "done.json").exists()
        assert (result.export_dir / "config.json").exists()
        log = (result.directory / "run.log").read_text()
        assert "$ python -m lit_distill fit --config" in log and "$ python -m lit_distill export" in log


@pytest.mark.slow
def test_collected_trajectories_have_the_logged_steps(experiment):
    _, results = experiment
    metrics = results[0].metrics()
    assert [step for step, _ in metrics.trajectories["train/loss"]] == [0, 1]
    assert [step for step, _ in metrics.trajectories["val/loss"]] == [0, 1]  # after optimizer steps 1 and 2
    assert {"val/kd", "val/ce", "val/loss"} <= set(metrics.final)
    rows = {arm: [r.metrics().final for r in runs] for arm, runs in by_arm(results).items()}
    assert summarise(rows, ["val/loss"])["kd"]["val/loss"].n == 2


@pytest.mark.slow
def test_a_second_launch_skips_finished_runs_and_resumes_unfinished_ones(experiment, tiny_arm):
    root, first = experiment
    (first[1].directory / "done.json").unlink()  # seed 1 as if it had been killed after its last checkpoint
    again = launch(expand([tiny_arm], [0, 1]), root, workers=2, cwd=REPO)
    assert [r.skipped for r in again] == [True, False]
    assert again[0].seconds == first[0].seconds
    log = (first[1].directory / "run.log").read_text()
    assert log.count("$ python -m lit_distill fit") == 2 and "--ckpt_path=" in log.split("$ python -m")[-2]


@pytest.mark.slow
def test_a_failing_run_is_named_with_the_tail_of_its_log(tmp_path, tiny_arm):
    bad = Run("broken", tiny_arm.configs, (*tiny_arm.overrides, "--trainer.max_steps=many"))
    missing = Run("missing config", ["no-such-dir/missing.yaml"])
    with pytest.raises(RunFailed) as failure:
        launch([bad, missing], tmp_path, workers=2, cwd=REPO)
    message = str(failure.value)
    assert message.startswith("2 of 2 runs failed:")
    assert "run 'runs/broken/seed0' failed (fit exit 2); last lines of" in message
    assert "trainer.max_steps" in message and "missing.yaml" in message
    assert not (bad.directory(tmp_path) / "done.json").exists()


@pytest.mark.parametrize(("workers", "threads", "expected"), [(2, None, "1"), (1, None, "2"), (1, 1, "1")])
def test_each_run_gets_cores_over_workers_threads_unless_told(tmp_path, monkeypatch, workers, threads, expected):
    """On 2 cores: one thread per run with 2 workers, both cores for a lone run unless ``threads`` says 1."""
    import subprocess

    seen = []
    monkeypatch.setattr("lit_distill.experiment.os.cpu_count", lambda: 2)
    monkeypatch.setattr(subprocess, "run", lambda *a, env, **k: seen.append(env["OMP_NUM_THREADS"]) or
                        subprocess.CompletedProcess(a, 0))
    launch(expand([Run("arm", ["a.yaml"])], [0, 1]), tmp_path, workers=workers, threads=threads)
    assert seen == [expected] * 2


def test_write_keeping_reading_keeps_the_hand_written_section(tmp_path):
    from lit_distill.experiment import write_keeping_reading

    report = tmp_path / "r.md"
    write_keeping_reading(report, "# Tables v1\n")
    assert report.read_text() == "# Tables v1\n"
    report.write_text(report.read_text() + "\n## Reading\n\nwhy it happened\n")
    write_keeping_reading(report, "# Tables v2\n")
    assert report.read_text() == "# Tables v2\n\n## Reading\n\nwhy it happened\n"
