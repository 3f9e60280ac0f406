"""Measurement (issue 15): which loss term's gradient drives LM-SPT's semantic input to one direction.

No training. On the held-out utterances of the experiment's corpus split (one per batch, full length:
every frame is real audio) the DistillationModule's own loss objects are evaluated (``compute_losses``)
and each term ``w_i * L_i`` is differentiated with respect to ``u`` (the semantic quantiser's ``W_in``
output, caught by a forward hook, before any centring): ``G_i [F, 8]``. Per term, pooled over frames:
``share`` ``|G_i|_F / Σ_j |G_j|_F`` (as ``GradientShare``), ``varying`` ``|G_i − mean_t G_i|² / |G_i|²``, ``rank``
of that varying part (:func:`speech_probes.participation_rank`, the remedy table's), ``top1`` (its first
direction's variance share) and ``cos_u`` (``|cos|`` of that direction with u's varying part's first one).

For ``u`` and each convolution of the semantic encoder (:func:`depth_stats`): the rank of the varying
part, the time-constant share and, for a trained codec, what 100 steps did to the weights. Codecs: the
step-0 codec built as ``experiment_lm_spt.step0_state`` does (PyTorch default and zero-bias init, seeds
0 1 2) and the remedy runs' last checkpoints, in eval mode (all acoustic quantisers, no dropout).

    python scripts/lm_spt_gradients.py --work-dir artifacts/speech/lmspt15b [--utterances 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import yaml
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]
import experiment_lm_spt as lm  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from speech_probes import participation_rank  # noqa: E402

from lit_distill import DistillationModule  # noqa: E402
from lit_distill.contracts import LossTerm  # noqa: E402
from lit_distill.experiment import last_checkpoint  # noqa: E402
from lit_distill.export import build_student, load_checkpoint_file  # noqa: E402
from lit_distill.models import LMSPTCodec  # noqa: E402

KEY = "lm_spt_gradients"
BEGIN, END = f"<!-- {KEY}: begin -->", f"<!-- {KEY}: end -->"
BEFORE = lm.MARKERS["compare"][0]  # the block goes right before the comparison's
INITS = (("PyTorch default", {}), ("zero biases (DAC's)", {"zero_bias_init": True}))
SEEDS = (0, 1, 2)


def build_losses(config: dict, root: Path) -> dict:
    """The ``losses`` of a module config (class paths, as in a checkpoint's hyper-parameters), built as the
    CLI builds them; a relative encoder ``path`` is resolved against ``root`` (where the runs ran)."""
    config = json.loads(json.dumps(config))
    for term in config.values():
        encoder = term.get("init_args", {}).get("encoder", {}).get("init_args", {})
        if encoder.get("path") and not Path(encoder["path"]).is_absolute():
            encoder["path"] = str(root / encoder["path"])
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--losses", type=dict[str, LossTerm])
    return parser.instantiate_classes(parser.parse_object({"losses": config})).losses


def term_gradients(module, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
    """Each term's gradient with respect to the semantic quantiser's input on one batch.

    Returns ``u [B, F, d]`` (detached) and ``{term: d(w_term * L_term)/du [B, F, d]}`` (zeros where none)."""
    seen = {}
    hook = module.student.semantic_quantizer.project_in.register_forward_hook(
        lambda _m, _args, out: seen.update(u=out))
    student_out, _ = module(batch, run_teacher=False)
    hook.remove()
    _, values = module.compute_losses(batch, student_out, None)
    u, grads = seen["u"], {}
    for name, value in values.items():
        weighted = module.losses[name].weight * value
        grad = torch.autograd.grad(weighted, u, retain_graph=True, allow_unused=True)[0]
        grads[name] = torch.zeros_like(u) if grad is None else grad.detach()
    return u.detach(), grads


def varying(parts: list[Tensor]) -> Tensor:
    """Per-utterance ``[F, d]`` rows minus their time mean, pooled: ``[ΣF, d]`` (as ``semantic_input``)."""
    return torch.cat([p - p.mean(0) for p in parts])


def leading(centred: Tensor) -> tuple[Tensor, float]:
    """First principal direction ``[d]`` of ``centred [N, d]`` and its share of the variance."""
    eig, vec = torch.linalg.eigh(centred.T.double() @ centred.double())
    return vec[:, -1], float(eig[-1] / eig.sum().clamp_min(1e-300))


def depth_stats(encoder, waves: list[Tensor], init=None) -> list[list[float]]:
    """Per convolution of the semantic encoder (stem, the strided ones, the last: ``z``) on padded ``waves``:
    ``[channels, rank of the output's time-varying part, its time-constant share |mean_t h|² / mean_t |h_t|²]``
    and, given the ``init`` encoder, of ``ΔW = W − W_init`` (``[out, in·k]``): ``|ΔW| / |W_init|``, ``σ1(ΔW) /
    σ1(W_init)``, its participation rank, ``|cos|`` of its first input-side direction with the mean input."""
    convs = [m for m in encoder if isinstance(m, torch.nn.Conv1d)]
    outs: dict[int, list] = {i: [] for i in range(len(convs))}
    hooks = [c.register_forward_hook(lambda _m, a, out, i=i: outs[i].append((a[0][0].mean(-1), out[0].T)))
             for i, c in enumerate(convs)]
    with torch.no_grad():
        for wave in waves:
            encoder(wave[None, None])
    for hook in hooks:
        hook.remove()
    const, stats = lambda h: float(h.mean(0).pow(2).sum() / h.pow(2).sum(-1).mean()), []  # noqa: E731
    for i, conv in enumerate(convs):
        hs = [h for _, h in outs[i]]
        stats.append([conv.out_channels, participation_rank(varying(hs)), sum(map(const, hs)) / len(hs)])
        if init is not None:
            w0 = [m for m in init if isinstance(m, torch.nn.Conv1d)][i].weight.detach().flatten(1).double()
            dw = conv.weight.detach().flatten(1).double() - w0
            _, sv, vh = torch.linalg.svd(dw, full_matrices=False)
            xbar = torch.stack([m for m, _ in outs[i]]).mean(0).double().repeat_interleave(conv.kernel_size[0])
            stats[-1] += [float(dw.norm() / w0.norm()), float(sv[0] / torch.linalg.svdvals(w0)[0]),
                          participation_rank(dw.T), abs(float(vh[0] @ xbar / xbar.norm()))]
    return stats


def measure(module, waves: list[Tensor], texts: list[str], init=None) -> dict:
    """The per-term statistics of the module docstring over the utterances ``waves`` (``[T]`` each)."""
    from datamodules.speech import collate_speech

    us, grads = [], {}
    for wave, text in zip(waves, texts, strict=True):
        u, g = term_gradients(module, collate_speech([(wave, text)]))
        us.append(u[0])
        for name, value in g.items():
            grads.setdefault(name, []).append(value[0])
    grads["total"] = [sum(parts) for parts in zip(*grads.values(), strict=True)]
    u_var = varying(us)
    u_dir, u_top = leading(u_var)
    norms = {name: float(torch.cat(parts).norm()) for name, parts in grads.items()}
    summed = sum(v for k, v in norms.items() if k != "total")
    terms = {}
    for name, parts in grads.items():
        g_var, full = varying(parts), torch.cat(parts)
        moving = bool(g_var.abs().max() > 0)  # a term with no gradient on u has no direction
        g_dir, g_top = leading(g_var) if moving else (None, float("nan"))
        terms[name] = {"norm": norms[name], "share": norms[name] / summed if summed else float("nan"),
                       "varying": float(g_var.pow(2).sum() / full.pow(2).sum()) if norms[name] else float("nan"),
                       "rank": participation_rank(g_var) if moving else float("nan"), "top1": g_top,
                       "cos_u": abs(float(g_dir @ u_dir)) if moving else float("nan")}
    padded = [module.student._pad(w[None, None])[0, 0] for w in waves]
    return {"u_rank": participation_rank(u_var), "u_top1": u_top,
            "depth": depth_stats(module.student.semantic_encoder, padded, init),
            "frames": int(u_var.shape[0]), "utterances": len(waves), "terms": terms}


def codecs(work: Path, root: Path):
    """``(label, seed, DistillationModule in eval mode, None or the run's initial semantic encoder)``."""
    model = yaml.safe_load((work / "lm_spt.yaml").read_text())["model"]["init_args"]
    module_of = lambda student, losses: DistillationModule(student=student, losses=build_losses(losses, root)).eval()  # noqa: E731

    def step0(seed: int, settings: dict) -> LMSPTCodec:
        torch.manual_seed(seed)
        return LMSPTCodec(**{**model["student"]["init_args"], "channels": lm.dm.sizes(False)["channels"], **settings})

    for label, settings in INITS:
        for seed in SEEDS:
            yield f"step 0, {label}", seed, module_of(step0(seed, settings), model["losses"]), None
    for name, extra in lm.REMEDY:  # each run: seed_everything 0, so its init is the seed-0 step-0 codec
        directory = lm.Run(name, [], seed=0, group="remedy").directory(work / "runs")
        checkpoint = load_checkpoint_file(str(last_checkpoint(directory)), "checkpoint")
        init = step0(0, {"zero_bias_init": True} if set(lm.ZERO_BIAS) <= set(extra) else {}).semantic_encoder
        yield (f"{name}, step {checkpoint['global_step']}", 0,
               module_of(build_student(checkpoint), checkpoint["hyper_parameters"]["losses"]), init)


def report(rows: list[dict], command: str, n: int) -> str:
    """Markdown: ranks along the encoder, constant shares, weight updates, per-term gradients (mean ± std if seeds > 1)."""
    from lit_distill.experiment import markdown_table, mean_std

    groups = {c: [r for r in rows if r["codec"] == c] for c in dict.fromkeys(r["codec"] for r in rows)}

    def cell(rs, get, d):
        values = [get(r) for r in rs]
        return "–" if all(v != v for v in values) else mean_std(values).cell(d) if len(rs) > 1 else f"{values[0]:.{d}f}"

    last = len(rows[0]["depth"]) - 1
    convs = [f"{'z' if i == last else f'conv {i}'} (of {int(c)})" for i, (c, *_) in enumerate(rows[0]["depth"])]
    seeds = {c: " ".join(str(r["seed"]) for r in rs) for c, rs in groups.items()}
    head = markdown_table(["codec", "seeds", "u: varying rank (of 8)", "its top-1 share", *convs], [
        [c, seeds[c], cell(rs, lambda r: r["u_rank"], 2), cell(rs, lambda r: r["u_top1"], 3),
         *(cell(rs, lambda r, i=i: r["depth"][i][1], 2) for i in range(len(convs)))] for c, rs in groups.items()])
    const = markdown_table(["codec", "seeds", *convs], [[c, seeds[c], *(
        cell(rs, lambda r, i=i: r["depth"][i][2], 3) for i in range(len(convs)))] for c, rs in groups.items()])
    update = markdown_table(["codec", *convs], [[c, *(" / ".join(f"{v:.2f}" for v in d[3:]) for d in rs[0]["depth"])]
                                                 for c, rs in groups.items() if len(rs[0]["depth"][0]) > 3])
    body = []
    for codec, rs in groups.items():
        for term in rs[0]["terms"]:
            get = lambda key, t=term: (lambda r: r["terms"][t][key])  # noqa: E731
            body.append([codec, term, *(cell(rs, get(k), 3) for k in ("share", "varying")),
                         cell(rs, get("rank"), 2), *(cell(rs, get(k), 3) for k in ("top1", "cos_u"))])
    table = markdown_table(["codec", "term", "norm share", "varying share of the squared norm",
                            "rank of varying G (of 8)", "its top-1 share", "abs cos to u's top direction"], body)
    return "\n".join([
        "## What drives u to one direction: the loss terms' gradients on u", "",
        f"Reproduce: `{command}`. No training: forward and one gradient per term (weighted as in training) on the first {n} "
        "held-out utterances, one per batch, codecs in eval mode; method in the script's docstring. Step-0 rows: mean ± std "
        "over the seeds; remedy rows: one run each (seed 0), its last checkpoint. `total` is the sum of the terms (the "
        "training gradient before clipping and normalisation); `norm share` divides by the sum of the terms' norms (as "
        "`grad_share`); –: a term with no gradient on u.",
        "", "u and, along the semantic encoder, the participation rank of each convolution's time-varying output "
        "(conv 0: the stem, 1-5: the strided ones; z: the last, what W_in reads):", "", head, "",
        "The time-constant share of the same outputs (1: one vector at every time step):", "", const, "",
        "What training did to each convolution's weights, `ΔW = W − W_init` (the run's seed-0 init rebuilt; "
        "`|ΔW|/|W_init|` small confirms it): |ΔW|/|W_init| / σ1(ΔW)/σ1(W_init) / participation rank of ΔW / "
        "abs cos of its first input-side singular vector with the layer's time-mean input:", "", update, "",
        "Each term's gradient on u, pooled over the utterances' frames:", "", table, ""])


def write(out: Path, text: str, numbers: dict) -> None:
    """The block between this script's markers in ``lm_spt.md`` (first time: right before the comparison's
    block) and the ``lm_spt_gradients`` key of ``lm_spt.json``; everything else stays."""
    md, path = out / "lm_spt.md", out / "lm_spt.json"
    old, block = md.read_text(), f"{BEGIN}\n{text}\n{END}"
    md.write_text(old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):] if BEGIN in old
                  else old.replace(BEFORE, block + "\n\n" + BEFORE, 1))
    path.write_text(json.dumps({**json.loads(path.read_text()), KEY: numbers}, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="artifacts/speech/lmspt15b",
                        help="the remedy runs' work directory (corpus, teachers, lm_spt.yaml, runs/remedy)")
    parser.add_argument("--utterances", type=int, default=64, help="first N held-out utterances")
    parser.add_argument("--out", default=str(REPO / "docs" / "experiments"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work_dir).resolve()
    root = work.parents[2]  # <checkout>/artifacts/speech/<name>: relative paths in the configs start there
    heldout = lm.speech.load_split(work)["heldout"][:args.utterances]
    waves, texts = lm.speech.load_waveforms(heldout), [it["text"] for it in heldout]
    rows = []
    for label, seed, module, init in codecs(work, root):
        start = time.time()
        rows.append({"codec": label, "seed": seed, **measure(module, waves, texts, init)})
        print(f"[{KEY}] {label} seed {seed}: u rank {rows[-1]['u_rank']:.2f} ({time.time() - start:.0f} s)", flush=True)
    command = "python scripts/lm_spt_gradients.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(rows, command.strip(), len(waves))
    write(Path(args.out), text, {"rows": rows, "utterances": len(waves), "command": command.strip(), "seeds_step0": list(SEEDS)})
    print(text)


if __name__ == "__main__":
    main()
