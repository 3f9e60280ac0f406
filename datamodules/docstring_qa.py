"""A question-answering task built offline from CPython: "what does this function do?".

Each pair asks what a standard-library function or method does, given its qualified name and
signature, and answers with the first sentence of its docstring (the summary line PEP 257 asks
for), e.g.::

    {"prompt": "Q: What does sched.scheduler.cancel(self, event) do?\\nA:",
     "response": " Remove an event from the queue."}

Labels come from the docstrings themselves (written by CPython's developers), so the task is
real: answering a held-out function means generalising from its name, signature and module, not
recalling the pair. The split is by function (a seeded hash of the qualified name), so no
function is in both splits. :func:`held_out_free_corpus` removes from a pretraining corpus every
document that contains a validation answer, so a model pretrained on it has not read them.

Command line::

    python -m datamodules.docstring_qa OUT_DIR [--val-fraction 0.12] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path

from datamodules.local_corpus import public_objects, stdlib_modules

MIN_ANSWER_CHARS, MAX_ANSWER_CHARS = 12, 100
MAX_SIGNATURE_CHARS = 60
_SENTENCE_END = re.compile(r"(?<=\.)\s")


def summary_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph, or None if it is not a usable answer."""
    first_paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = _SENTENCE_END.split(first_paragraph)[0]
    if not MIN_ANSWER_CHARS <= len(sentence) <= MAX_ANSWER_CHARS or not sentence.endswith("."):
        return None
    return sentence


def short_signature(signature: inspect.Signature) -> str:
    """``(a, b, *args, key, **kwargs)``: parameter names only (no defaults or annotations), at most
    ``MAX_SIGNATURE_CHARS`` characters (longer ones end in ``...``)."""
    names = []
    for parameter in signature.parameters.values():
        prefix = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "")
        names.append(prefix + parameter.name)
    text = "(" + ", ".join(names) + ")"
    return text if len(text) <= MAX_SIGNATURE_CHARS else text[: MAX_SIGNATURE_CHARS - 5].rsplit(",", 1)[0] + ", ...)"


def _functions() -> Iterator[tuple[str, object]]:
    """``(module name, function)`` of every public pure-Python function and method, in a fixed order."""
    for module in stdlib_modules():
        for obj in public_objects(module):
            if inspect.isfunction(obj):
                yield module.__name__, obj


def question_answer_pairs() -> list[dict[str, str]]:
    """Every usable pair: ``{"prompt", "response", "name"}`` (``name`` = ``module.qualname``)."""
    pairs, seen = [], set()
    for module_name, function in _functions():
        answer = summary_sentence(inspect.getdoc(function) or "")
        if answer is None:
            continue
        try:
            signature = short_signature(inspect.signature(function))
        except (TypeError, ValueError):
            continue
        name = f"{module_name}.{function.__qualname__}"
        if name in seen:
            continue
        seen.add(name)
        pairs.append({"prompt": f"Q: What does {name}{signature} do?\nA:", "response": f" {answer}", "name": name})
    return pairs


def is_validation(name: str, val_fraction: float, seed: int) -> bool:
    """Whether the function ``name`` belongs to the validation split (a seeded hash, stable across runs)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


def write_docstring_qa(out_dir: str | Path, val_fraction: float = 0.12, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl`` and ``val.jsonl`` of prompt/response pairs (deterministic per Python version).

    Returns:
        ``{"train": path, "val": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = question_answer_pairs()
    paths = {"train": out / "train.jsonl", "val": out / "val.jsonl"}
    splits = {"train": [], "val": []}
    for pair in pairs:
        splits["val" if is_validation(pair["name"], val_fraction, seed) else "train"].append(pair)
    for split, path in paths.items():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(p) + "\n" for p in splits[split]), encoding="utf-8")
        tmp.replace(path)
    return paths


def held_out_free_corpus(corpus: str | Path, val_pairs: str | Path, out: str | Path) -> tuple[int, int]:
    """Copy a blank-line-separated corpus without the documents that contain a validation answer.

    Whitespace is normalised before matching, so an answer wrapped over lines is still found.

    Returns:
        ``(documents kept, documents removed)``.
    """
    answers = [json.loads(line)["response"].strip() for line in Path(val_pairs).read_text("utf-8").splitlines()]
    documents = Path(corpus).read_text("utf-8").split("\n\n")
    kept = [doc for doc in documents if not any(a in " ".join(doc.split()) for a in answers)]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n\n".join(d.strip("\n") for d in kept) + "\n", encoding="utf-8")
    return len(kept), len(documents) - len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--val-fraction", type=float, default=0.12)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args()
    paths = write_docstring_qa(ns.out_dir, ns.val_fraction, ns.seed)
    for split, path in paths.items():
        print(f"{split}: {sum(1 for _ in path.open())} pairs -> {path}")


if __name__ == "__main__":
    main()
