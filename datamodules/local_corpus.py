"""Offline English corpus built from text that ships with CPython itself.

No network access and no dataset download is needed: the corpus is assembled from

* the Python language-reference topics bundled in :mod:`pydoc_data.topics` (what ``help("if")``
  shows), and
* the docstrings (:func:`inspect.getdoc`) of a fixed list of pure-Python standard-library modules
  and of their public classes, methods and functions, keeping only those with a reasonable amount
  of prose,
* optionally (``include_system_licenses=True``) the license texts in
  ``/usr/share/common-licenses`` when that directory exists. This is off by default because it
  makes the output depend on the machine instead of only on the Python version.

The output is deterministic for a given Python version (about 1.2 MB on CPython 3.11). Documents
are written one after another, separated by a blank line; blank lines inside a document are
collapsed so that a blank line always means "next document". The train/val split is made at
document level with a seeded shuffle, so no document is in both files.

Command line::

    python -m datamodules.local_corpus OUT_DIR [--val-fraction 0.1] [--seed 0] [--max-chars N]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

# Pure-Python stdlib modules whose docstrings are read. Order matters for determinism; a module
# that cannot be imported on this interpreter build (e.g. lzma without liblzma) is skipped.
STDLIB_MODULES: tuple[str, ...] = tuple(
    """
    abc argparse ast asyncio.base_events asyncio.events asyncio.futures asyncio.locks
    asyncio.queues asyncio.streams asyncio.subprocess asyncio.tasks asyncio.transports
    asyncio.protocols bdb base64 bisect calendar cmd code codecs codeop collections
    collections.abc colorsys compileall concurrent.futures._base concurrent.futures.process
    concurrent.futures.thread configparser contextlib copy copyreg csv dataclasses datetime
    decimal difflib dis doctest email.charset email.contentmanager email.feedparser
    email.generator email.header email.headerregistry email.message email.parser email.policy
    email.utils enum filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext
    glob graphlib gzip heapq hmac html html.parser http http.client http.cookiejar http.cookies
    http.server imaplib importlib importlib.abc importlib.metadata importlib.resources
    importlib.util inspect io ipaddress json json.decoder json.encoder keyword linecache locale
    logging logging.config logging.handlers lzma mailbox mimetypes modulefinder
    multiprocessing.connection multiprocessing.context multiprocessing.managers
    multiprocessing.pool multiprocessing.process multiprocessing.queues
    multiprocessing.shared_memory multiprocessing.synchronize netrc numbers opcode operator
    optparse os pathlib pdb pickle pickletools pkgutil platform plistlib poplib posixpath pprint
    profile pstats py_compile pydoc queue quopri random re reprlib rlcompleter runpy sched
    secrets selectors shelve shlex shutil smtplib socket socketserver statistics string
    stringprep struct subprocess symtable sysconfig tabnanny tarfile tempfile textwrap threading
    timeit tokenize tomllib trace traceback tracemalloc types typing unittest.async_case
    unittest.case unittest.loader unittest.main unittest.mock unittest.result unittest.runner
    unittest.suite urllib.error urllib.parse urllib.request urllib.response urllib.robotparser
    uuid warnings wave weakref wsgiref.handlers wsgiref.headers wsgiref.simple_server
    wsgiref.util wsgiref.validate xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.sax
    xml.sax.handler xml.sax.saxutils xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp
    zipfile zipimport zoneinfo
    """.split()
)

MIN_DOC_CHARS = 200  # shorter docstrings are mostly signatures / one-liners
MIN_ALPHA_FRACTION = 0.6  # letters + spaces over all characters: rejects code-heavy docstrings
LICENSES_DIR = Path("/usr/share/common-licenses")


def normalise_document(text: str) -> str:
    """Strip trailing whitespace and collapse blank lines so the document contains none."""
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def _is_prose(text: str) -> bool:
    """Whether ``text`` is long enough and mostly letters (not a signature or code listing)."""
    if len(text) < MIN_DOC_CHARS:
        return False
    alpha = sum(ch.isalpha() or ch == " " for ch in text)
    return alpha / len(text) >= MIN_ALPHA_FRACTION


def public_objects(module) -> Iterator[object]:
    """Yield ``module``, its public classes/functions defined in it, and the classes' methods."""
    yield module
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield obj
        elif inspect.isclass(obj):
            yield obj
            for attr_name, attr in sorted(vars(obj).items()):
                if attr_name.startswith("_"):
                    continue
                if isinstance(attr, (staticmethod, classmethod)):
                    attr = attr.__func__
                if inspect.isfunction(attr) or isinstance(attr, property):
                    yield attr


def stdlib_modules() -> Iterator[object]:
    """The modules of ``STDLIB_MODULES`` that import on this interpreter, in order (warnings silenced)."""
    for module_name in STDLIB_MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
        yield module


def _stdlib_documents() -> Iterator[str]:
    """Yield language-reference topics, then stdlib docstrings, in a fixed order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]
    for module in stdlib_modules():
        for obj in public_objects(module):
            doc = inspect.getdoc(obj)
            if doc:
                yield doc


def _license_documents() -> Iterator[str]:
    """Yield the license texts of ``/usr/share/common-licenses`` (sorted), if present."""
    if not LICENSES_DIR.is_dir():
        return
    for path in sorted(LICENSES_DIR.iterdir()):
        if path.is_file() and not path.is_symlink():
            yield path.read_text(encoding="utf-8", errors="replace")


def collect_documents(
    max_chars: int | None = None, include_system_licenses: bool = False
) -> list[str]:
    """Collect the de-duplicated, normalised corpus documents in a deterministic order.

    Args:
        max_chars: Cap on the total length; documents that would exceed it are skipped.
        include_system_licenses: Also read ``/usr/share/common-licenses`` (machine dependent).

    Returns:
        The documents; none contains a blank line.
    """
    sources = [_stdlib_documents()]
    if include_system_licenses:
        sources.append(_license_documents())
    docs: list[str] = []
    seen: set[str] = set()
    total = 0
    for source in sources:
        for raw in source:
            doc = normalise_document(raw)
            if doc in seen or not _is_prose(doc):
                continue
            if max_chars is not None and total + len(doc) > max_chars:
                continue  # too long for the remaining budget; a later, shorter one may fit
            seen.add(doc)
            docs.append(doc)
            total += len(doc)
    return docs


def split_documents(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded document-level split; keeps the original order inside each part.

    Args:
        docs: Documents to split.
        val_fraction: Fraction of documents for validation (at least one when > 0 and there are
            two or more documents; at least one document always stays in train).
        seed: Seed of the shuffle that picks the validation documents.

    Returns:
        ``(train_docs, val_docs)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(len(docs) * val_fraction)
    if val_fraction > 0 and len(docs) >= 2:
        n_val = min(max(n_val, 1), len(docs) - 1)
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


def _write_atomic(path: Path, docs: list[str]) -> None:
    """Write documents separated by blank lines via a temporary file + rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_local_corpus(
    out_dir: str | Path,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_chars: int | None = None,
    overwrite: bool = False,
    include_system_licenses: bool = False,
) -> dict[str, Path]:
    """Write ``train.txt`` and ``val.txt`` (documents separated by blank lines) to ``out_dir``.

    Idempotent: when both files already exist they are left untouched (whatever arguments they
    were made with) unless ``overwrite`` is true.

    Args:
        out_dir: Output directory (created if needed).
        val_fraction: Fraction of documents written to ``val.txt``.
        seed: Seed of the document-level train/val split.
        max_chars: Optional cap on the total number of characters (whole documents only).
        overwrite: Rewrite the files even if they exist.
        include_system_licenses: Add ``/usr/share/common-licenses/*`` texts (machine dependent).

    Returns:
        ``{"train": Path, "val": Path}``.
    """
    out = Path(out_dir)
    paths = {"train": out / "train.txt", "val": out / "val.txt"}
    if not overwrite and all(p.is_file() for p in paths.values()):
        return paths
    docs = collect_documents(max_chars, include_system_licenses)
    if len(docs) < 2:
        raise ValueError(f"only {len(docs)} corpus document(s) collected (max_chars={max_chars})")
    train, val = split_documents(docs, val_fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(paths["train"], train)
    _write_atomic(paths["val"], val)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m datamodules.local_corpus OUT_DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory for train.txt and val.txt")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-chars", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--include-system-licenses", action="store_true")
    args = parser.parse_args(argv)
    paths = write_local_corpus(
        args.out_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        max_chars=args.max_chars,
        overwrite=args.overwrite,
        include_system_licenses=args.include_system_licenses,
    )
    for split, path in paths.items():
        text = path.read_text(encoding="utf-8")
        n_docs = len([d for d in text.split("\n\n") if d.strip()])
        print(f"{split}: {path} ({len(text):,} chars, {n_docs:,} documents)")


if __name__ == "__main__":
    main()
