"""The docstring QA task: answers are docstring summaries, the split is by function, the corpus filter works."""

from __future__ import annotations

import inspect
import json

from datamodules.docstring_qa import (
    held_out_free_corpus,
    question_answer_pairs,
    short_signature,
    summary_sentence,
    write_docstring_qa,
)


def test_the_answer_is_the_first_sentence_of_the_first_paragraph():
    assert summary_sentence("Return the sum.  More text.\n\nDetails.") == "Return the sum."
    assert summary_sentence("Return the\nwrapped sum. More.") == "Return the wrapped sum."
    assert summary_sentence("Too short.") is None and summary_sentence("No final stop") is None


def test_signatures_keep_parameter_names_only_and_stay_short():
    def f(a, b=1, *args, key: int = 2, **kwargs): ...

    assert short_signature(inspect.signature(f)) == "(a, b, *args, key, **kwargs)"

    def g(alpha_parameter, beta_parameter, gamma_parameter, delta_parameter, epsilon_parameter): ...

    text = short_signature(inspect.signature(g))
    assert len(text) <= 60 and text.endswith(", ...)")


def test_pairs_are_split_by_function_and_deterministic(tmp_path):
    paths = write_docstring_qa(tmp_path / "a")
    again = write_docstring_qa(tmp_path / "b")
    assert paths["train"].read_bytes() == again["train"].read_bytes()
    train = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    val = [json.loads(line) for line in paths["val"].read_text().splitlines()]
    assert len(train) > 1000 and len(val) > 150
    assert not {p["name"] for p in train} & {p["name"] for p in val}
    pair = val[0]
    assert pair["prompt"].startswith(f"Q: What does {pair['name']}(") and pair["prompt"].endswith(" do?\nA:")
    assert pair["response"].startswith(" ") and pair["response"].endswith(".")
    assert len(question_answer_pairs()) == len(train) + len(val)


def test_the_corpus_filter_removes_documents_holding_a_held_out_answer(tmp_path):
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"prompt": "Q", "response": " Return the sum of two numbers."}) + "\n")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Add things.\nReturn the sum of\ntwo numbers.\n\nUnrelated text.\n\nReturn the sum.\n")
    assert held_out_free_corpus(corpus, val, tmp_path / "out.txt") == (2, 1)
    assert (tmp_path / "out.txt").read_text() == "Unrelated text.\n\nReturn the sum.\n"
