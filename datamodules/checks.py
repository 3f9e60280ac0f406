"""Checks every datamodule shares: loader counts that cannot work, and text files that are not UTF-8."""

from __future__ import annotations

from pathlib import Path

from lit_distill.errors import ConfigError


def check_loader_arguments(batch_size: int, num_workers: int = 0) -> None:
    """Fail with one line on a ``batch_size`` below 1 or a negative ``num_workers``.

    Args:
        batch_size: samples per batch (per process).
        num_workers: DataLoader worker processes (0 = load in the main process).

    Raises:
        ConfigError: naming the argument and what is valid.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: must be an int >= 1 (samples per batch), got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(f"num_workers: must be an int >= 0 (0 = load in the main process), got {num_workers!r}")


def read_utf8(path: Path, field: str) -> str:
    """The text of ``path``; a file that is not UTF-8 fails with one line naming it, the byte and its line.

    Args:
        path: the file to read.
        field: the config field the file came from (e.g. ``train_path``), for the message.

    Raises:
        ConfigError: the file is not valid UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{field}: {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, "
                          f"line {line}); save it as UTF-8, e.g. iconv -f latin1 -t utf-8") from None
