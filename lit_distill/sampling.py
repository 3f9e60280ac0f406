"""Batched sampling from a causal LM with its KV cache: prompts in, response token ids out.

The one place that turns prompt token ids into sampled continuations, for the ``generate``
command (sequence-level KD data) and for on-policy steps. It calls the Hugging Face model's own
``generate`` (KV cache, left-padded batches) under a generation config of its own, so that
``temperature`` and ``top_p`` are the only filters applied (a hub model's ``top_k = 50`` or
repetition penalty would silently change every distribution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lit_distill.errors import ConfigError


@dataclass(frozen=True)
class SamplingOptions:
    """How continuations are drawn.

    Attributes:
        max_new_tokens: tokens generated at most per response (the EOS included).
        temperature: divides the logits before sampling; 0 = greedy decoding.
        top_p: nucleus sampling: keep the smallest set of tokens whose probability reaches
            ``top_p`` (1 = the whole distribution).
        num_samples: responses per prompt (greedy decoding allows 1).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    num_samples: int = 1

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ConfigError(f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples: must be >= 1, got {self.num_samples}")
        if self.temperature == 0 and self.num_samples > 1:
            raise ConfigError("num_samples: greedy decoding (temperature 0) gives one response per prompt; "
                              "set temperature > 0 to draw several")

    @property
    def greedy(self) -> bool:
        """Whether decoding is greedy (temperature 0)."""
        return self.temperature == 0


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token id lists into a batch, so every prompt ends at the last column.

    Returns:
        ``input_ids`` LongTensor ``[B, L]`` and ``attention_mask`` LongTensor ``[B, L]``
        (1 = prompt token), ``L`` = the longest prompt.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConfigError("left_pad: every prompt needs at least one token")
    length = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        attention_mask[row, length - len(prompt):] = 1
    return input_ids, attention_mask


def cut_at_eos(tokens: Sequence[int], eos_token_id: int | None) -> tuple[list[int], bool]:
    """The tokens before the first EOS, and whether an EOS ended them."""
    tokens = list(tokens)
    if eos_token_id is not None and eos_token_id in tokens:
        return tokens[: tokens.index(eos_token_id)], True
    return tokens, False


def hf_generator(model: nn.Module, field: str) -> nn.Module:
    """The Hugging Face model inside an adapter (or a Teacher) that can ``generate``.

    Raises:
        ConfigError: naming ``field`` when the model has no ``generate`` (not a causal LM).
    """
    candidate = model
    for _ in range(3):  # Teacher -> adapter -> HF model
        if callable(getattr(candidate, "generate", None)) and hasattr(candidate, "generation_config"):
            return candidate
        candidate = getattr(candidate, "model", None)
        if candidate is None:
            break
    raise ConfigError(f"{field}: {type(model).__name__} cannot generate; sampling needs a Hugging Face causal LM "
                      "(lit_distill.models.HFCausalLM, or HFModel with task: causal-lm)")


@torch.no_grad()
def sample_responses(model: nn.Module, prompts: Sequence[Sequence[int]], options: SamplingOptions, *,
                     pad_token_id: int, eos_token_id: int | None) -> list[list[tuple[list[int], bool]]]:
    """Draw ``options.num_samples`` continuations of every prompt, in one batched ``generate``.

    Randomness comes from torch's global generator: seed it (``torch.manual_seed``) for a
    reproducible draw; the same seed, prompts and batch give the same responses.

    Args:
        model: a Hugging Face causal LM (see :func:`hf_generator`), in eval mode.
        prompts: ``B`` lists of prompt token ids (special prefix tokens included).
        options: how to sample.
        pad_token_id: id used for the left padding (never attended to).
        eos_token_id: generation stops at it; it is not part of the returned tokens.

    Returns:
        ``B`` lists of ``num_samples`` pairs ``(response token ids, ended_with_eos)``.
    """
    from transformers import GenerationConfig

    input_ids, attention_mask = left_pad(prompts, pad_token_id)
    device = next(model.parameters()).device
    # A fresh GenerationConfig, not the model's: a hub model's generation_config.json may set top_k,
    # repetition penalties or a max length that would change what is drawn.
    config = GenerationConfig(
        do_sample=not options.greedy, max_new_tokens=options.max_new_tokens,
        num_return_sequences=options.num_samples, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
        use_cache=True, **({} if options.greedy else {"temperature": options.temperature, "top_p": options.top_p,
                                                      "top_k": 0}))
    output = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                            generation_config=config)
    new_tokens = output[:, input_ids.shape[1]:].tolist()
    per_prompt = options.num_samples
    return [[cut_at_eos(new_tokens[row * per_prompt + j], eos_token_id) for j in range(per_prompt)]
            for row in range(len(prompts))]
