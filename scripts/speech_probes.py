"""Character targets, CER and the first-codebook probes of ``scripts/experiment_speech.py``.

Pure functions on token sequences: characters ↔ ids (``datamodules.asr``'s), greedy CTC decoding and
CER, the evaluation of a linear CTC probe (an embedding table token → character logits + blank,
trained by ``fit`` in ``speech_eval``), a ridge probe from one-hot tokens to teacher features with its
held-out R² (closed form), codebook statistics, k-means, and the frame stretching that puts
sequences of two rates side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.asr import BLANK, ENGLISH_LETTERS, ids_to_text, text_to_ids  # noqa: F401 - part of this API

# Characters of the CTC vocabularies (0 is the blank): the ASR datamodule's, so that the teachers'
# targets and every CER here agree.
CHARS = ENGLISH_LETTERS


def greedy_ctc(ids: Sequence[int]) -> list[int]:
    """Greedy CTC decoding of frame labels: collapse repeats, then drop blanks."""
    out, prev = [], None
    for i in ids:
        if i != prev and i != BLANK:
            out.append(int(i))
        prev = i
    return out


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (unit costs)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def corpus_cer(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> float:
    """Character error rate over a corpus: total edit distance / total reference characters."""
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps, strict=True)) / max(1, sum(len(r) for r in refs))


# ----------------------------------------------------------------------------- probes
def pad_sequences(seqs: Sequence[Tensor], value: int = 0) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D long tensors to ``[N, Lmax]``; returns (padded, lengths ``[N]``)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = torch.full((len(seqs), int(lengths.max())), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = s
    return out, lengths


def _ctc_nll(table: Tensor, tokens: Tensor, token_lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """Summed CTC negative log-likelihood (nats) of ``targets`` given per-token logits ``table[tokens]``."""
    log_probs = table[tokens].log_softmax(-1).transpose(0, 1)  # [F, N, C]
    return F.ctc_loss(log_probs, targets, token_lengths, target_lengths, blank=BLANK, reduction="sum",
                      zero_infinity=True)


def eval_ctc_probe(table: Tensor, tokens: Sequence[Tensor], targets: Sequence[Sequence[int]]) -> dict[str, float]:
    """Greedy CER and CTC nats per character of a linear CTC probe ``table [vocab, 1 + len(CHARS)]``
    (column 0 = blank; trained by ``speech_eval.fit_ctc_probe``) on held-out data."""
    hyps = [greedy_ctc(table[t].argmax(-1).tolist()) for t in tokens]
    tok, tok_len = pad_sequences(list(tokens))
    tgt, tgt_len = pad_sequences([torch.tensor(t, dtype=torch.long) for t in targets])
    with torch.no_grad():
        nll = float(_ctc_nll(table, tok, tok_len, tgt, tgt_len))
    return {"ctc_cer": corpus_cer(targets, hyps), "ctc_nats_per_char": nll / max(1, int(tgt_len.sum()))}


def fit_ridge_probe(tokens: Sequence[Tensor], feats: Sequence[Tensor], vocab: int,
                    lam: float = 1.0) -> tuple[Tensor, Tensor]:
    """Ridge regression from one-hot tokens (plus an intercept) to features.

    With centred targets ``y - mean`` and one-hot inputs the normal equations are diagonal:
    ``W[k] = sum_{frames with token k} (y - mean) / (count_k + lam)``.

    Args:
        tokens: per utterance, long ``[F_i]``.
        feats: per utterance, ``[F_i, D]``.
        vocab: number of token ids.
        lam: ridge penalty.

    Returns:
        ``(W [vocab, D], mean [D])``; the prediction for token ``k`` is ``mean + W[k]``.
    """
    tok = torch.cat(list(tokens))
    y = torch.cat(list(feats)).double()
    mean = y.mean(0)
    sums = torch.zeros(vocab, y.shape[1], dtype=torch.float64).index_add_(0, tok, y - mean)
    counts = torch.bincount(tok, minlength=vocab).double()
    return sums / (counts + lam)[:, None], mean


def ridge_r2(weights: Tensor, mean: Tensor, tokens: Sequence[Tensor], feats: Sequence[Tensor]) -> float:
    """Held-out R^2 of a :func:`fit_ridge_probe` model, pooled over dimensions:
    ``1 - sum (y - y_hat)^2 / sum (y - mean_heldout(y))^2``."""
    tok = torch.cat(list(tokens))
    y = torch.cat(list(feats)).double()
    pred = mean + weights[tok]
    return float(1.0 - (y - pred).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


def codebook_stats(tokens: Sequence[Tensor], vocab: int) -> dict[str, float]:
    """Usage (fraction of entries used at least once) and perplexity ``exp(H)`` of the token histogram."""
    counts = torch.bincount(torch.cat(list(tokens)), minlength=vocab).double()
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log()).sum())
    return {"usage": float((counts > 0).double().mean()), "perplexity": math.exp(entropy)}


def participation_rank(centred: Tensor) -> float:
    """The participation ratio ``(Σλ)² / Σλ²`` of the covariance of ``centred [N, d]`` (rows whose mean
    was removed): 1 when they vary along one direction, ``d`` when along all alike."""
    eig = torch.linalg.eigvalsh(centred.T.double() @ centred.double())
    return float(eig.sum() ** 2 / eig.pow(2).sum())


def kmeans(x: Tensor, k: int, iters: int, seed: int = 0) -> Tensor:
    """Lloyd's k-means on ``x [N, D]`` from ``k`` distinct random rows; returns centroids ``[k, D]``
    (an empty cluster keeps its previous centroid)."""
    g = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=len(centroids)).to(x.dtype)
        keep = counts > 0
        centroids[keep] = sums[keep] / counts[keep, None]
    return centroids


def interpolate_frames(feats: Tensor, frames: int) -> Tensor:
    """Stretch ``[F', D]`` linearly over ``frames`` time steps: ``[frames, D]``."""
    return F.interpolate(feats.t()[None].float(), size=frames, mode="linear", align_corners=False)[0].t()


def stretch_tokens(tokens: Tensor, frames: int) -> Tensor:
    """Nearest-neighbour stretch of a token sequence ``[F']`` over ``frames`` steps: ``[frames]``."""
    idx = (torch.arange(frames) * len(tokens)) // frames
    return tokens[idx]
