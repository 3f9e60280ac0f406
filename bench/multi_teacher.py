"""The cost of a second teacher: a two-teacher distillation step against a one-teacher step.

Encoder classifiers (the multi-teacher case issue 17 names): a BERT student (2 × 128) and BERT
teachers (4 × 256) built from configs, each teacher reading its own token ids (two
tokenizers' worth of inputs), sequence classification with C classes. Both arms run through
``lightning.Trainer`` + ``DistillationModule`` with a ``MultiModel`` teacher and
a KD term + CE: the one-teacher arm's ``MultiModel`` has member ``a`` only and ``ForwardKL``
reads ``teacher.features.a.logits``; the two-teacher arm has ``a`` and ``b`` and ``EnsembleKD``
(entropy-weighted mixture of probabilities). Same batches, same
optimizer; runs alternate their order. Prints one JSON object: the steady-state seconds per
step of each arm (median over repeats), their paired ratio, and one teacher's forward time,
which is what the second teacher should add (teachers run one after another under
``no_grad``).

    python bench/multi_teacher.py [--steps 20 --warmup 3 --repeats 5 --batch 16 --seq 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time

import torch
from bf16_teacher import timed_fit  # bench/ is on sys.path when run as a script

from lit_distill import DistillationModule, Teacher
from lit_distill.losses import CrossEntropy, EnsembleKD, ForwardKL
from lit_distill.models import HFModel, MultiModel


def bert(hidden: int, layers: int, vocab: int, classes: int) -> HFModel:
    """A fresh BERT sequence classifier ``hidden`` wide with ``layers`` layers."""
    return HFModel(task="sequence-classification", vocab_size=vocab, num_classes=classes,
                   config={"model_type": "bert", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                           "num_hidden_layers": layers, "num_attention_heads": 4, "max_position_embeddings": 512})


def make_batches(n: int, batch: int, seq: int, vocab: int, classes: int) -> list[dict]:
    """Student tokens plus each teacher's own tokens (``a_``/``b_`` inputs) and labels."""
    g = torch.Generator().manual_seed(0)

    def tokens() -> dict[str, torch.Tensor]:
        return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g),
                "attention_mask": torch.ones(batch, seq, dtype=torch.long)}

    out = []
    for _ in range(n):
        a, b = tokens(), tokens()
        out.append({"inputs": tokens(), "labels": torch.randint(0, classes, (batch,), generator=g),
                    "teacher_inputs": {**{f"a_{k}": v for k, v in a.items()}, **{f"b_{k}": v for k, v in b.items()}}})
    return out


def run(student, teachers: dict, batches: list[dict], warmup: int, root: str):
    """Seconds per steady-state step of a fit with ``teachers`` as the ensemble's members."""
    members = {name: copy.deepcopy(model) for name, model in teachers.items()}
    routes = {name: {"input_ids": f"{name}_input_ids", "attention_mask": f"{name}_attention_mask"} for name in members}
    kd = (EnsembleKD(teachers=list(members), weighting="entropy", temperature=2.0, weight=0.5) if len(members) > 1
          else ForwardKL(temperature=2.0, weight=0.5, sources={"teacher_logits": f"teacher.features.{next(iter(members))}.logits"}))
    module = DistillationModule(
        copy.deepcopy(student), {"kd": kd, "ce": CrossEntropy(weight=0.5)},
        teacher=Teacher(MultiModel(members, routes)), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4))
    return timed_fit(module, batches, warmup, root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--classes", type=int, default=4)
    ns = parser.parse_args()
    torch.manual_seed(0)
    student = bert(128, 2, ns.vocab, ns.classes)
    teacher_a, teacher_b = bert(256, 4, ns.vocab, ns.classes), bert(256, 4, ns.vocab, ns.classes)
    batches = make_batches(ns.warmup + ns.steps, ns.batch, ns.seq, ns.vocab, ns.classes)
    arms = {"one_teacher": {"a": teacher_a}, "two_teachers": {"a": teacher_a, "b": teacher_b}}
    times: dict[str, list] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(ns.repeats):
            for name in (list(arms) if repeat % 2 == 0 else list(reversed(arms))):
                times[name].append(run(student, arms[name], batches, ns.warmup, root))
    frozen = Teacher(copy.deepcopy(teacher_a))
    inputs = {"input_ids": batches[0]["teacher_inputs"]["a_input_ids"],
              "attention_mask": batches[0]["teacher_inputs"]["a_attention_mask"]}
    forward = []
    for _ in range(ns.repeats + 1):
        start = time.perf_counter()
        frozen(**inputs)
        forward.append(time.perf_counter() - start)
    one, two = times["one_teacher"], times["two_teachers"]
    print(json.dumps({
        "bench": "multi_teacher", "device": "cpu", "threads": torch.get_num_threads(),
        "shape": {"batch": ns.batch, "seq": ns.seq, "vocab": ns.vocab, "classes": ns.classes},
        "s_per_step": {name: statistics.median(t.wall for t in v) for name, v in times.items()},
        "step_ratio_two_over_one": statistics.median(t.wall / o.wall for t, o in zip(two, one, strict=True)),
        # process CPU time: a neighbour on a shared machine inflates it far less than wall time
        "cpu_step_ratio_two_over_one": statistics.median(t.cpu / o.cpu for t, o in zip(two, one, strict=True)),
        "one_teacher_forward_s": statistics.median(forward[1:]),
        "repeats": {name: [t.wall for t in v] for name, v in times.items()},
        "cpu_repeats": {name: [t.cpu for t in v] for name, v in times.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
