"""Shared fixtures: a tiny tokenizer trained on the fly and tiny HF models saved to disk.

Everything is built offline from configs and loaded back through the real
loading code (``from_pretrained`` on a directory), as a user's hub id would be.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Knowledge distillation trains a small student to imitate a large teacher.",
    "A teacher model produces soft targets that carry more information than labels.",
    "The student learns from the teacher's distribution over the whole vocabulary.",
    "Temperature softens the distributions before they are compared.",
    "Lightning runs the same code on one CPU or many GPUs.",
]


def tiny_llama_config(vocab_size: int, hidden: int = 32, layers: int = 2) -> dict:
    """Architecture fields of a tiny Llama, as an ``HFCausalLM(config=...)`` dict."""
    return {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden,
            "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 256, "tie_word_embeddings": False}


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> Path:
    """A train.txt/val.txt pair of short English documents separated by blank lines."""
    root = tmp_path_factory.mktemp("text")
    docs = [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))] * 4
    (root / "train.txt").write_text("\n\n".join(docs[:20]) + "\n")
    (root / "val.txt").write_text("\n\n".join(docs[20:]) + "\n")
    return root


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, text_dir) -> Path:
    """A 300-token byte-level BPE tokenizer directory (``AutoTokenizer``-loadable)."""
    from datamodules.tokenizer_training import train_tokenizer

    return train_tokenizer([text_dir / "train.txt"], tmp_path_factory.mktemp("tok"), vocab_size=300)


@pytest.fixture(scope="session")
def vocab_size(tokenizer_dir) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory, vocab_size) -> Path:
    """A tiny Llama teacher saved with ``save_pretrained`` (random weights, seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    fields = tiny_llama_config(vocab_size, hidden=48, layers=2)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    path = tmp_path_factory.mktemp("teacher")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread (tiny tensors: no OpenMP hand-offs); restored after.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
