"""Batched sampling: left padding, EOS cuts, greedy = argmax, seeded draws, no hidden top-k."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig, LlamaForCausalLM

from lit_distill.errors import ConfigError
from lit_distill.sampling import (
    SamplingOptions,
    cut_at_eos,
    hf_generator,
    left_pad,
    sample_responses,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=7), min_size=1, max_size=5))
@settings(max_examples=40, deadline=None)
def test_left_pad_ends_every_prompt_at_the_last_column(prompts):
    ids, mask = left_pad(prompts, pad_token_id=0)
    assert ids.shape == mask.shape == (len(prompts), max(map(len, prompts)))
    for row, prompt in enumerate(prompts):
        assert ids[row, ids.shape[1] - len(prompt):].tolist() == prompt
        assert mask[row].sum() == len(prompt) and mask[row, -1] == 1


def test_cut_at_eos_keeps_what_precedes_the_first_eos():
    assert cut_at_eos([5, 6, 2, 7, 2], 2) == ([5, 6], True)
    assert cut_at_eos([5, 6], 2) == ([5, 6], False)
    assert cut_at_eos([5, 6], None) == ([5, 6], False)


def test_greedy_is_the_argmax_continuation_of_each_prompt_in_a_padded_batch(lm):
    prompts = [[1, 9, 17, 3], [4, 5]]
    drawn = sample_responses(lm, prompts, SamplingOptions(max_new_tokens=6, temperature=0), pad_token_id=0,
                             eos_token_id=None)
    for prompt, [(tokens, ended)] in zip(prompts, drawn, strict=True):
        ids = torch.tensor([prompt])
        for _ in range(6):  # the direct computation: one unbatched, uncached forward per token
            ids = torch.cat([ids, lm(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
        assert tokens == ids[0, len(prompt):].tolist() and not ended


def test_the_same_seed_draws_the_same_responses_and_another_seed_others(lm):
    options = SamplingOptions(max_new_tokens=8, temperature=1.0, num_samples=3)

    def draw(seed):
        torch.manual_seed(seed)
        return sample_responses(lm, [[1, 2, 3], [4]], options, pad_token_id=0, eos_token_id=None)

    first = draw(7)
    assert first == draw(7) and first != draw(8)
    assert [len(responses) for responses in first] == [3, 3]


def test_no_hidden_top_k_truncates_the_distribution(lm):
    flat = LlamaForCausalLM(lm.config).eval()
    torch.nn.init.normal_(flat.lm_head.weight, std=1e-4)  # near-uniform over 64 tokens, no ties
    flat.generation_config.top_k = 50  # as a hub model's generation_config.json may say
    torch.manual_seed(0)
    drawn = sample_responses(flat, [[1]] * 100, SamplingOptions(max_new_tokens=1, num_samples=4),
                             pad_token_id=0, eos_token_id=None)
    seen = {tokens[0] for responses in drawn for tokens, _ in responses}
    assert len(seen) > 60  # 400 near-uniform draws over 64 tokens leave ~0.1 unseen; top-k 50 would cap them at 50


def test_a_tiny_top_p_keeps_only_the_most_probable_token(lm):
    torch.manual_seed(0)
    sampled = sample_responses(lm, [[1, 2, 3]], SamplingOptions(max_new_tokens=5, top_p=1e-6, num_samples=2),
                               pad_token_id=0, eos_token_id=None)
    greedy = sample_responses(lm, [[1, 2, 3]], SamplingOptions(max_new_tokens=5, temperature=0),
                              pad_token_id=0, eos_token_id=None)
    assert sampled[0] == greedy[0] * 2


@pytest.mark.parametrize("kwargs, field", [({"max_new_tokens": 0}, "max_new_tokens"),
                                           ({"temperature": -1.0}, "temperature"),
                                           ({"top_p": 0.0}, "top_p"), ({"num_samples": 0}, "num_samples"),
                                           ({"temperature": 0.0, "num_samples": 2}, "num_samples")])
def test_options_that_cannot_work_are_refused_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SamplingOptions(**kwargs)


def test_a_model_that_cannot_generate_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="generate --model teacher: Linear cannot generate"):
        hf_generator(torch.nn.Linear(2, 2), "generate --model teacher")
