"""A labelled text-classification task built offline: which area of Python's stdlib a docstring documents.

Texts are the docstrings (:func:`inspect.getdoc`) of the public classes, functions and methods
of CPython's own standard library, as :mod:`datamodules.local_corpus` reads them. The label is
the area of the module the docstring belongs to, from a fixed map of top-level packages to six
areas (no annotation by anyone: membership in a module is the label)::

    gui          tkinter, turtle
    mail         email, imaplib, smtplib, poplib, mailbox, mimetypes, quopri
    concurrency  asyncio, multiprocessing, threading, concurrent, queue, selectors, sched, signal
    network      http, urllib, ssl, socket, socketserver, xmlrpc, wsgiref, ftplib, ipaddress
    testing      unittest, doctest, pdb, bdb, trace, timeit, profile, cProfile, pstats, tracemalloc
    files        os, pathlib, shutil, tarfile, zipfile, tempfile, gzip, bz2, lzma, glob, fnmatch,
                 filecmp, fileinput, zipimport

Docstrings shorter than ``min_chars`` or seen twice are dropped; each area keeps at most
``per_class`` (a seeded choice), and the split is seeded and stratified. The task is not trivial:
asyncio's streams and socket's docs share words, as do email and http headers.

Command line::

    python -m datamodules.stdlib_topics OUT_DIR [--per-class 250] [--val-fraction 0.2] [--seed 0]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import inspect
import io
import pkgutil
import random
import warnings
from pathlib import Path

from datamodules.local_corpus import normalise_document, public_objects

AREAS: dict[str, tuple[str, ...]] = {
    "gui": ("tkinter", "turtle"),
    "mail": ("email", "imaplib", "smtplib", "poplib", "mailbox", "mimetypes", "quopri"),
    "concurrency": ("asyncio", "multiprocessing", "threading", "concurrent", "queue", "selectors", "sched",
                    "signal"),
    "network": ("http", "urllib", "ssl", "socket", "socketserver", "xmlrpc", "wsgiref", "ftplib", "ipaddress"),
    "testing": ("unittest", "doctest", "pdb", "bdb", "trace", "timeit", "profile", "cProfile", "pstats",
                "tracemalloc"),
    "files": ("os", "pathlib", "shutil", "tarfile", "zipfile", "tempfile", "gzip", "bz2", "lzma", "glob",
              "fnmatch", "filecmp", "fileinput", "zipimport"),
}


def _modules(package: str) -> list:
    """``package`` and, for a package, its importable submodules (tests and demos excluded), sorted."""
    def quiet_import(name: str):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            try:
                return importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - an optional module (no display, no lib) is skipped
                return None

    root = quiet_import(package)
    if root is None:
        return []
    found = [root]
    if hasattr(root, "__path__"):
        names = sorted(info.name for info in pkgutil.walk_packages(root.__path__, f"{package}.", onerror=lambda _: None)
                       if ".test" not in info.name and "demo" not in info.name)
        found += [m for m in map(quiet_import, names) if m is not None]
    return found


def area_docstrings(min_chars: int = 80) -> dict[str, list[str]]:
    """Every area's distinct docstrings (normalised), in a fixed order."""
    seen: set[str] = set()
    texts: dict[str, list[str]] = {area: [] for area in AREAS}
    for area, packages in AREAS.items():
        for package in packages:
            for module in _modules(package):
                for obj in public_objects(module):
                    doc = inspect.getdoc(obj)
                    text = normalise_document(doc) if doc else ""
                    if len(text) >= min_chars and text not in seen:
                        seen.add(text)
                        texts[area].append(text)
    return texts


def write_stdlib_topics(out_dir: str | Path, per_class: int = 250, val_fraction: float = 0.2, seed: int = 0,
                        min_chars: int = 80) -> dict[str, int]:
    """Write ``train.csv`` and ``val.csv`` (columns ``text``, ``label``) under ``out_dir``.

    Returns:
        ``{"train": n, "val": m, "<area>": kept}``.
    """
    rng = random.Random(seed)
    rows = {"train": [], "val": []}
    counts = {}
    for area, texts in area_docstrings(min_chars).items():
        chosen = rng.sample(texts, min(per_class, len(texts)))
        n_val = max(1, round(len(chosen) * val_fraction))
        rows["val"] += [(text, area) for text in chosen[:n_val]]
        rows["train"] += [(text, area) for text in chosen[n_val:]]
        counts[area] = len(chosen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        rng.shuffle(split_rows)
        with open(out / f"{split}.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["text", "label"])
            writer.writerows(split_rows)
    return {"train": len(rows["train"]), "val": len(rows["val"]), **counts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--per-class", type=int, default=250)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    ns = parser.parse_args(argv)
    print(write_stdlib_topics(ns.out_dir, ns.per_class, ns.val_fraction, ns.seed))


if __name__ == "__main__":
    main()
