"""Side by side with the peers: one distillation step through lit_distill, TRL, torchtune and a hand loop.

All contenders run in this process, interleaved and repeated, from identical copies of the same
tiny Llama-style teacher and student (bench/overhead.py's builders), on the same batches with
the same AdamW. Three objectives:

- ``fkl_ce``: 0.5 · CE + 0.5 · forward KL(teacher ‖ student);
- ``jsd``: 0.5 · CE + 0.5 · generalized JSD with β = 0.5 (GKD's divergence);
- ``fkl``: forward KL alone, the one objective TRL's ``GKDTrainer`` can run unchanged.

Contenders:

- ``lit_distill``: ``DistillationModule`` + ``lightning.Trainer`` (as bench/overhead.py).
- ``trl``: for ``fkl_ce`` and ``jsd``, TRL's GKD divergence ``GKDTrainer.generalized_jsd_loss``
  (β = 0 is its forward KL, β = 0.5 the JSD) plus plain CE, in the plain loop (the trainer's loss
  cannot mix in CE); for ``fkl``, TRL's ``GKDTrainer`` itself (bench/trl_gkd.py: on-policy
  generation off, the batches in order, our AdamW, constant LR).
- ``torchtune``: ``ForwardKLWithChunkedOutputLoss`` (8 chunks) plus plain CE, in the plain loop
  (``fkl_ce`` only; torchtune has no JSD). Its "forward KL" is −Σ p log q, i.e. the KL
  without the teacher entropy, so its loss value is higher by 0.5 · H(p) with the same
  gradient; the bench measures H(p) on the last batch and reports both.
- ``hand``: plain PyTorch (``F.kl_div`` / ``F.cross_entropy``, JSD with ``logaddexp``).

Per contender: ``s_per_step`` (median over repeats of the steady-state seconds per step),
``cpu_s_per_step`` and ``cpu_time_ratio_to_hand`` (the process's CPU seconds, which a shared
machine inflates much less than wall time; the ratio is the median of per-repeat ratios), ``peak_mb`` (RSS above the start of the run, sampled as in bench/loss_memory.py; the median
over repeats), ratios to the hand loop, and the loss on the last batch (same for every repeat:
the runs are deterministic). Prints one JSON object; exits 1 if a loss disagrees with the hand
loop's by more than ``--rtol``.

``<objective>.interleaved``: the same contenders step by step instead of whole runs (as
bench/overhead.py does: this machine's run-to-run noise, 10–25 %, exceeds the gaps). After each
lit_distill step in one Trainer run, a callback steps each plain-loop contender (hand, TRL's loss,
torchtune's loss) on the same batch. It reports each one's median s/step, lit_distill over each
(median of per-step ratios, quartiles, CPU time), the fastest peer, each loop's last loss and its
relative difference to the hand loop's (checked against ``--rtol`` too; not torchtune's, whose
term differs by the teacher entropy).

    python bench/peers.py [--steps 20 --warmup 5 --repeats 3 --batch 4 --seq 64 --vocab 2048]
                          [--interleaved-repeats 2] [--skip-runs]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss_memory import MB, _PeakRSS, _release_freed_memory  # noqa: E402
from overhead import (  # noqa: E402
    HandLoop,
    Interleaved,
    Seconds,
    StepTimer,
    llama,
    make_batches,
    plain_kd_loss,
    run_loop,
    step_ratios,
)

from lit_distill import DistillationModule  # noqa: E402
from lit_distill.losses import CrossEntropy, ForwardKL, GeneralizedJSD  # noqa: E402


def plain_jsd_loss(student_logits, teacher_logits, labels, mask, beta: float = 0.5) -> torch.Tensor:
    """0.5 · generalized JSD + 0.5 · CE in plain PyTorch; logits ``[B, T, V]``, labels/mask ``[B, T]``."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    jsd = beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1)
    jsd = (jsd * mask).sum() / mask.sum().clamp_min(1)
    ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    return 0.5 * jsd + 0.5 * ce


def plain_fkl_loss(student_logits, teacher_logits, labels, mask) -> torch.Tensor:
    """Forward KL(teacher ‖ student) alone in plain PyTorch (``F.kl_div``), mean over ``mask``."""
    kl = F.kl_div(F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1),
                  reduction="none", log_target=True).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


PLAIN_LOSSES = {"fkl_ce": plain_kd_loss, "jsd": plain_jsd_loss, "fkl": plain_fkl_loss}


def trl_loss(objective: str):
    """TRL's GKD divergence (β = 0: forward KL, β = 0.5: JSD) in a plain loop, plus 0.5 · CE except for ``fkl``."""
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    beta = 0.5 if objective == "jsd" else 0.0

    def loss(student_logits, teacher_logits, labels, mask):
        div = GKDTrainer.generalized_jsd_loss(student_logits.float(), teacher_logits.float(), labels=labels,
                                              beta=beta, reduction="batchmean")
        if objective == "fkl":
            return div
        ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return 0.5 * div + 0.5 * ce
    return loss


def torchtune_loss():
    from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

    kd = ForwardKLWithChunkedOutputLoss(num_output_chunks=8)

    def loss(student_logits, teacher_logits, labels, mask):
        div = kd(list(student_logits.float().chunk(8, dim=1)), list(teacher_logits.float().chunk(8, dim=1)), labels)
        ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return 0.5 * div + 0.5 * ce
    return loss


class LastLoss(L.Callback):
    """The token-mean training loss of the last batch.

    ``training_step`` returns the loss weighted by the batch's valid-token count (so that
    gradient accumulation averages tokens, not batches), hence the division. (The logged
    ``train/loss`` is only refreshed every ``log_every_n_steps``.)
    """

    def __init__(self) -> None:
        self.value = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.value = float(loss) / int(batch["loss_mask"].sum())


def run_lit(student, teacher, batches, warmup: int, root: str, objective: str,
            callbacks: tuple[L.Callback, ...] = ()) -> tuple[Seconds, float, dict]:
    losses = ({"kd": ForwardKL(weight=1.0)} if objective == "fkl" else
              {"kd": ForwardKL(weight=0.5) if objective == "fkl_ce" else GeneralizedJSD(beta=0.5, weight=0.5),
               "ce": CrossEntropy(weight=0.5)})
    module = DistillationModule(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher), losses=losses,
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    timer, last = StepTimer(warmup, len(batches) - 1), LastLoss()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, logger=False,
                        default_root_dir=root, callbacks=[timer, last, *callbacks])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.interval, last.value, {}


def available_peers() -> dict[str, str | None]:
    """Peer name -> None if importable, else the reason it is left out."""
    out = {}
    for name, probe in (("trl", "trl.experimental.gkd.gkd_trainer"), ("torchtune", "torchtune.modules.loss")):
        try:
            __import__(probe)
            out[name] = None
        except Exception as err:  # ImportError, or a broken dependency (torchao) failing at import
            out[name] = f"{type(err).__name__}: {str(err).strip()[:200]}"
    return out


def interleaved(objective, student, teacher, batches, ns, root, peers) -> dict:
    """lit_distill's Trainer run with the plain-loop contenders stepped right after each of its steps.

    The loops (hand, TRL's loss, torchtune's loss; bench/overhead.py's ``Interleaved``) run on the
    same batch as the lit_distill step before them, so each ratio is a median over neighbouring
    steps, which this machine's run-to-run drift hits alike. TRL is its loss in the plain loop
    for every objective here (for ``fkl`` that is lighter than its ``GKDTrainer``).
    """
    times: dict[str, list[Seconds]] = {}
    last: dict[str, float] = {}
    for _ in range(ns.interleaved_repeats):
        loops = {"hand": HandLoop(student, teacher, PLAIN_LOSSES[objective])}
        if peers["trl"] is None:
            loops["trl"] = HandLoop(student, teacher, trl_loss(objective))
        if peers["torchtune"] is None and objective == "fkl_ce":
            loops["torchtune"] = HandLoop(student, teacher, torchtune_loss())
        timer = Interleaved(loops, ns.warmup)
        run_lit(student, teacher, batches, ns.warmup, root, objective, callbacks=(timer,))
        for name, steps in timer.times.items():
            times.setdefault(name, []).extend(steps)
        last = timer.last_loss
    s_per_step = {name: statistics.median(t.wall for t in steps) for name, steps in times.items()}
    # torchtune's term is −Σ p log q (the KL plus H(p)): its loss is compared in the whole runs
    rel_diff = {name: abs(loss - last["hand"]) / abs(last["hand"]) for name, loss in last.items()
                if name not in ("hand", "torchtune")}
    result = {"steps_paired": len(times["hand"]), "s_per_step": s_per_step,
              "lit_distill_over": {name: step_ratios(times, "lit_distill", name) for name in times
                                   if name != "lit_distill"},
              "last_loss": last, "loss_rel_diff_to_hand": rel_diff}
    peer_names = [name for name in times if name not in ("lit_distill", "hand")]
    if peer_names:
        fastest = min(peer_names, key=s_per_step.__getitem__)
        result["fastest_peer"] = fastest
        result["lit_distill_over_fastest_peer"] = result["lit_distill_over"][fastest]["median"]
    return result


def bench_objective(objective, student, teacher, batches, ns, root, peers) -> dict:
    plain = PLAIN_LOSSES[objective]
    contenders = {"hand": lambda: run_loop(student, teacher, batches, ns.warmup, plain),
                  "lit_distill": lambda: run_lit(student, teacher, batches, ns.warmup, root, objective)}
    if peers["trl"] is None and objective == "fkl":
        from trl_gkd import run_gkd_trainer

        contenders["trl"] = lambda: run_gkd_trainer(student, teacher, batches, ns.warmup)
    elif peers["trl"] is None:
        contenders["trl"] = lambda: run_loop(student, teacher, batches, ns.warmup, trl_loss(objective))
    if peers["torchtune"] is None and objective == "fkl_ce":
        contenders["torchtune"] = lambda: run_loop(student, teacher, batches, ns.warmup, torchtune_loss())
    seconds = {name: [] for name in contenders}
    cpu_seconds = {name: [] for name in contenders}
    peaks = {name: [] for name in contenders}
    losses, lasts = {}, {}
    names = list(contenders)
    for repeat in range(ns.repeats):  # rotate the order so drift hits every contender alike
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            _release_freed_memory()
            with _PeakRSS() as rss:
                sec, loss, last = contenders[name]()
            seconds[name].append(sec.wall / ns.steps)
            cpu_seconds[name].append(sec.cpu / ns.steps)
            peaks[name].append((rss.peak - rss.baseline) / MB)
            losses[name], lasts[name] = loss, last
    hand_s, hand_mb = statistics.median(seconds["hand"]), statistics.median(peaks["hand"])
    result = {}
    for name in contenders:
        s, mb = statistics.median(seconds[name]), statistics.median(peaks[name])
        # CPU time per step, as a median of per-repeat ratios to the hand run of the same repeat:
        # robust when the machine is shared (wall time then mostly measures the neighbours).
        cpu_ratios = [a / b for a, b in zip(cpu_seconds[name], cpu_seconds["hand"], strict=True)]
        result[name] = {"s_per_step": s, "peak_mb": round(mb, 2), "time_ratio_to_hand": s / hand_s,
                        "cpu_s_per_step": statistics.median(cpu_seconds[name]),
                        "cpu_time_ratio_to_hand": statistics.median(cpu_ratios),
                        "peak_ratio_to_hand": mb / hand_mb if hand_mb > 0 else None,
                        "final_loss": losses[name], "s_per_step_repeats": seconds[name],
                        "cpu_s_per_step_repeats": cpu_seconds[name]}
    if "torchtune" in result:
        # torchtune's KD term is −Σ p log q: add back 0.5·H(p) of the last batch's teacher to compare.
        log_p = F.log_softmax(lasts["torchtune"]["teacher"].float(), dim=-1)
        mask = batches[-1]["loss_mask"]
        entropy = (-(log_p.exp() * log_p).sum(-1) * mask).sum() / mask.sum()
        result["torchtune"]["teacher_entropy_last_batch"] = entropy.item()
        result["torchtune"]["final_loss_as_kl"] = losses["torchtune"] - 0.5 * entropy.item()
    for name in contenders:
        loss = result[name].get("final_loss_as_kl", result[name]["final_loss"])
        result[name]["loss_rel_diff_to_hand"] = abs(loss - losses["hand"]) / abs(losses["hand"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=64, help="student width (teacher: twice)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="allowed relative loss difference to hand")
    parser.add_argument("--no-peers", action="store_true", help="only lit_distill and hand (no TRL/torchtune)")
    parser.add_argument("--interleaved-repeats", type=int, default=2,
                        help="Trainer runs of the step-by-step interleaved measurement (0: skip it)")
    parser.add_argument("--skip-runs", action="store_true", help="only the interleaved measurement")
    ns = parser.parse_args()
    torch.manual_seed(0)
    student, teacher = llama(ns.hidden, 2, ns.vocab), llama(2 * ns.hidden, 2, ns.vocab)
    batches = make_batches(ns.warmup + ns.steps, ns.batch, ns.seq, ns.vocab)
    peers = {"trl": "--no-peers", "torchtune": "--no-peers"} if ns.no_peers else available_peers()
    out = {"bench": "peers", "device": "cpu", "threads": torch.get_num_threads(), "steps_timed": ns.steps,
           "warmup": ns.warmup, "repeats": ns.repeats, "batch": ns.batch, "seq": ns.seq, "vocab": ns.vocab,
           "left_out": {k: v for k, v in peers.items() if v is not None}, "rtol": ns.rtol}
    with tempfile.TemporaryDirectory() as root:
        for objective in ("fkl_ce", "jsd", "fkl"):
            out[objective] = {} if ns.skip_runs else bench_objective(objective, student, teacher, batches, ns, root,
                                                                     peers)
            if ns.interleaved_repeats:
                out[objective]["interleaved"] = interleaved(objective, student, teacher, batches, ns, root, peers)
    diffs = [r["loss_rel_diff_to_hand"] for obj in ("fkl_ce", "jsd", "fkl") for name, r in out[obj].items()
             if name != "interleaved"]
    diffs += [d for obj in ("fkl_ce", "jsd", "fkl") for d in out[obj].get("interleaved", {}).get(
        "loss_rel_diff_to_hand", {}).values()]
    worst = max(diffs, default=0.0)
    out["max_loss_rel_diff_to_hand"], out["losses_agree"] = worst, worst <= ns.rtol
    print(json.dumps(out, indent=2))
    sys.exit(0 if out["losses_agree"] else 1)


if __name__ == "__main__":
    main()
