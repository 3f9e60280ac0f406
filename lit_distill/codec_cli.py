"""``python -m lit_distill tokenize`` / ``decode``: audio ↔ discrete codes with a trained codec.

``tokenize`` writes, per audio file ``<name>.wav``, ``OUT/<name>.codes.pt``: a dict with
``codes`` (``[Q, F]``, int16 when the codebooks have at most 32768 entries, else int32),
``sample_rate`` (the codec's, Hz), ``frame_rate`` (frames per second) and ``num_samples``
(the length of the waveform encoded, at ``sample_rate``). ``decode`` turns such files back
into 16-bit PCM WAV ``OUT/<name>.wav`` at the codec's sample rate.

Audio is read with :func:`datamodules.speech_corpus.read_audio` (WAV without extra packages),
averaged to mono and resampled to the codec's rate with ``torchaudio.functional.resample``
when the file's rate differs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.export import build_student, load_checkpoint_file
from lit_distill.models.codec import FramedCodec as Codec

CODES_SUFFIX = ".codes.pt"


def load_codec(ckpt_path: str, field: str = "--ckpt") -> Codec:
    """Rebuild the codec student of a ``fit`` checkpoint, in eval mode.

    Raises:
        ConfigError: the file is missing or unreadable, or its student is not a codec.
    """
    checkpoint = load_checkpoint_file(ckpt_path, field)
    student = build_student(checkpoint)
    if not isinstance(student, Codec):
        raise ConfigError(f"{field}: the student of '{ckpt_path}' is a {type(student).__name__}, not a codec "
                          "(valid: a checkpoint trained with a codec student such as "
                          "lit_distill.models.ConvCodec or lit_distill.models.LMSPTCodec)")
    return student.eval()


def _codes_dtype(codec: Codec) -> torch.dtype:
    return torch.int16 if codec.codebook_size <= 2 ** 15 else torch.int32


def tokenize_waveform(codec: Codec, waveform: Tensor) -> dict[str, Any]:
    """Codes of one mono waveform ``[T]`` at the codec's rate: ``{codes [Q, F], sample_rate, frame_rate,
    num_samples}`` with ``F = ceil(T / hop_length)``."""
    codes = codec.encode(waveform.float()[None, None])[0]
    return {"codes": codes.to(_codes_dtype(codec)), "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate, "num_samples": int(waveform.shape[-1])}


def decode_codes(codec: Codec, record: dict[str, Any], field: str = "codes") -> Tensor:
    """Waveform ``[T]`` of a :func:`tokenize_waveform` record (cut to its ``num_samples``)."""
    codes = record.get("codes")
    if not isinstance(codes, Tensor) or codes.dim() != 2 or codes.is_floating_point():
        raise ConfigError(f"{field}: expected integer 'codes' [Q, F], got "
                          f"{list(codes.shape) if isinstance(codes, Tensor) else type(codes).__name__}")
    if record.get("sample_rate") != codec.sample_rate:
        raise ConfigError(f"{field}: codes at {record.get('sample_rate')} Hz, but the codec runs at "
                          f"{codec.sample_rate} Hz; decode with the codec that wrote them")
    sizes = codec.codebook_sizes
    tops = codes.amax(-1).tolist() if codes.numel() else []
    if not 1 <= codes.shape[0] <= codec.num_quantizers or any(t >= k for t, k in zip(tops, sizes, strict=False)):
        raise ConfigError(f"{field}: codes {list(codes.shape)} with per-quantiser maxima {tops} do not fit "
                          f"this codec ({codec.num_quantizers} quantisers with {sizes} entries)")
    waveform = codec.decode(codes.long()[None])[0, 0]
    num_samples = record.get("num_samples")
    return waveform[:num_samples] if isinstance(num_samples, int) else waveform


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(CODES_SUFFIX)] if name.endswith(CODES_SUFFIX) else path.stem


def tokenize_files(ckpt_path: str, paths: Sequence[str], out_dir: str) -> list[Path]:
    """Write ``out_dir/<name>.codes.pt`` for every audio file in ``paths``; returns the paths written."""
    from datamodules.speech_corpus import read_audio, to_mono

    _check_inputs(paths, "tokenize AUDIO")
    codec = load_codec(ckpt_path, "tokenize --ckpt")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, paths):
        waveform, rate = read_audio(path)
        if rate != codec.sample_rate:
            print(f"note: {path}: resampling {rate} Hz -> {codec.sample_rate} Hz")
        record = tokenize_waveform(codec, to_mono(waveform, rate, codec.sample_rate))
        target = out / f"{_stem(path)}{CODES_SUFFIX}"
        torch.save(record, target)
        written.append(target)
    return written


def decode_files(ckpt_path: str, paths: Sequence[str], out_dir: str) -> list[Path]:
    """Write ``out_dir/<name>.wav`` for every ``<name>.codes.pt`` in ``paths``; returns the paths written."""
    from datamodules.speech_corpus import write_wav

    _check_inputs(paths, "decode CODES")
    codec = load_codec(ckpt_path, "decode --ckpt")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, paths):
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt files raise many types
            raise ConfigError(f"decode CODES: '{path}' is not a codes file written by `tokenize` ({err})") from err
        if not isinstance(record, dict):
            raise ConfigError(f"decode CODES: '{path}' is not a codes file written by `tokenize`")
        waveform = decode_codes(codec, record, f"decode CODES '{path}'")
        target = out / f"{_stem(path)}.wav"
        write_wav(target, waveform, codec.sample_rate)
        written.append(target)
    return written


def _check_inputs(paths: Sequence[str], field: str) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise MissingPathError(f"{field}: no file '{path}'")


def tokenize_main(args: Sequence[str]) -> None:
    """``python -m lit_distill tokenize --ckpt CKPT --out DIR AUDIO...``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_distill tokenize",
        description="Encode audio files into codec codes: OUT/<name>.codes.pt holding codes [Q, F] "
                    "(int16/int32), sample_rate, frame_rate and num_samples. Audio is mixed to mono; a file "
                    "at another sample rate is resampled to the codec's (torchaudio.functional.resample).")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` with a ConvCodec or LMSPTCodec student")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("audio", nargs="+", help="audio files (.wav; other formats need torchcodec)")
    ns = parser.parse_args(list(args))
    for path in tokenize_files(ns.ckpt, ns.audio, ns.out):
        print(f"wrote {path}")


def decode_main(args: Sequence[str]) -> None:
    """``python -m lit_distill decode --ckpt CKPT --out DIR CODES...``."""
    parser = argparse.ArgumentParser(
        prog="python -m lit_distill decode",
        description="Decode <name>.codes.pt files written by `tokenize` into 16-bit WAV OUT/<name>.wav at "
                    "the codec's sample rate.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `fit` with a ConvCodec or LMSPTCodec student")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("codes", nargs="+", help="files written by `python -m lit_distill tokenize`")
    ns = parser.parse_args(list(args))
    for path in decode_files(ns.ckpt, ns.codes, ns.out):
        print(f"wrote {path}")
