"""stdlib-topics: a labelled task from the stdlib's docstrings, deterministic, with disjoint splits."""

from __future__ import annotations

import csv

from datamodules.stdlib_topics import AREAS, write_stdlib_topics


def rows(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_every_area_is_a_class_and_the_splits_are_disjoint_and_reproducible(tmp_path):
    counts = write_stdlib_topics(tmp_path / "a", per_class=30, val_fraction=0.2, seed=3)
    write_stdlib_topics(tmp_path / "b", per_class=30, val_fraction=0.2, seed=3)
    train, val = rows(tmp_path / "a/train.csv"), rows(tmp_path / "a/val.csv")
    assert {r["label"] for r in train} == {r["label"] for r in val} == set(AREAS)
    assert all(counts[area] == 30 for area in AREAS) and counts["train"] == len(train) == 6 * 24
    assert not {r["text"] for r in train} & {r["text"] for r in val}
    assert all(len(r["text"]) >= 80 for r in train + val)
    assert (tmp_path / "a/train.csv").read_bytes() == (tmp_path / "b/train.csv").read_bytes()
