"""Shared datamodule checks: loader counts and UTF-8 text files, one line naming the field or file."""

from __future__ import annotations

import pytest

from datamodules.checks import check_loader_arguments, read_utf8
from datamodules.records import read_records
from datamodules.speech import read_manifest
from lit_distill.errors import ConfigError

LATIN1 = "first line\nna\u00efve caf\u00e9\n".encode("latin-1")  # 0xef at offset 13, line 2


@pytest.mark.parametrize(("batch_size", "num_workers", "needle"), [
    (0, 0, "batch_size: must be an int >= 1 (samples per batch), got 0"),
    (-2, 0, "got -2"),
    (True, 0, "batch_size"),
    (2, -1, "num_workers: must be an int >= 0"),
])
def test_loader_counts_that_cannot_work_are_refused(batch_size, num_workers, needle):
    with pytest.raises(ConfigError) as info:
        check_loader_arguments(batch_size, num_workers)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_valid_loader_counts_pass():
    assert check_loader_arguments(1, 0) is None and check_loader_arguments(64, 4) is None


def test_read_utf8_names_the_file_byte_offset_and_line(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(LATIN1)
    with pytest.raises(ConfigError) as info:
        read_utf8(path, "train_path")
    message = str(info.value)
    assert message.startswith(f"train_path: {path} is not UTF-8 text")
    assert "byte 0xef at offset 13, line 2" in message and "\n" not in message
    path.write_text("caf\u00e9\n", encoding="utf-8")
    assert read_utf8(path, "train_path") == "caf\u00e9\n"


@pytest.mark.parametrize("name", ["data.jsonl", "data.txt"])
def test_text_and_cross_tokenizer_records_refuse_non_utf8_files(tmp_path, name):
    """Both TextDataModule and CrossTokenizerDataModule read their files through read_records."""
    path = tmp_path / name
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=rf"val_path: .*{name} is not UTF-8 text \(byte 0xe9 at offset 28, line 2\)"):
        read_records(str(path), "auto", "text", "prompt", "response", "val_path")


def test_speech_manifest_refuses_non_utf8(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b'{"path": "a.wav", "text": "\xe9t\xe9"}\n')
    with pytest.raises(ConfigError, match="manifest: .*manifest.jsonl is not UTF-8 text"):
        read_manifest(path)
