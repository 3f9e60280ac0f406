"""AdaSPEC: token selection by the gap to a reference model, and the kept tokens' forward KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.losses.adaspec import AdaSPEC, selected_tokens, token_kl


def _case(seed: int, batch: int = 3, length: int = 11, vocab: int = 13):
    g = torch.Generator().manual_seed(seed)
    draft, target, reference = (torch.randn(batch, length, vocab, generator=g, dtype=torch.float64) * 2 for _ in range(3))
    mask = torch.rand(batch, length, generator=g) > 0.25
    return draft, target, reference, mask


def _reference_loss(draft, target, reference, mask, keep):
    """Loops over tokens, numpy's quantile: the paper's rule written directly."""
    def kl(q_logits, p_logits):
        p = np.exp(p_logits - np.logaddexp.reduce(p_logits))
        return float(np.sum(p * ((p_logits - np.logaddexp.reduce(p_logits)) - (q_logits - np.logaddexp.reduce(q_logits)))))

    d, t, r = draft.detach().numpy(), target.numpy(), reference.numpy()
    tokens = [(b, i) for b in range(d.shape[0]) for i in range(d.shape[1]) if mask[b, i]]
    gaps = {tok: kl(d[tok], t[tok]) - kl(r[tok], t[tok]) for tok in tokens}
    threshold = np.quantile(np.array(list(gaps.values())), 1 - keep)
    kept = [tok for tok in tokens if gaps[tok] >= threshold]
    return sum(kl(d[tok], t[tok]) for tok in kept) / len(kept), len(kept)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("keep", [0.4, 0.1, 1.0])
def test_matches_a_direct_computation(seed, keep):
    draft, target, reference, mask = _case(seed)
    want, n_kept = _reference_loss(draft, target, reference, mask, keep)
    got = AdaSPEC(keep=keep)(draft, target, reference, mask)
    assert float(got) == pytest.approx(want, rel=1e-10)
    kept = selected_tokens(draft, target, reference, mask, keep)
    assert int(kept.sum()) == n_kept and not (kept & ~mask).any()


def test_keeping_every_token_is_forward_kl_and_ties_at_the_quantile_are_kept():
    draft, target, reference, mask = _case(5)
    full = AdaSPEC(keep=1.0)(draft, target, reference, mask)
    assert float(full) == pytest.approx(float(token_kl(draft, target)[mask].mean()), rel=1e-12)
    # the reference equal to the draft: every gap is 0, all tie at the quantile, all are kept
    assert selected_tokens(draft, target, draft, mask, 0.4).equal(mask)


def test_gradient_reaches_only_the_draft_and_only_at_kept_tokens():
    draft, target, reference, mask = _case(1)
    draft.requires_grad_()
    target.requires_grad_()
    AdaSPEC(keep=0.3)(draft, target, reference, mask).backward()
    kept = selected_tokens(draft, target, reference, mask, 0.3)
    assert target.grad is None or not target.grad.any()
    assert draft.grad[kept].abs().sum() > 0 and not draft.grad[~kept].any()


def test_a_keep_outside_0_1_is_refused():
    for keep in (0.0, 1.5):
        with pytest.raises(ConfigError, match="AdaSPEC.keep"):
            AdaSPEC(keep=keep)


def test_the_adaspec_config_trains_with_a_target_and_a_reference(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    """configs/text/distillspec/adaspec_*.yaml: the MultiModel teacher's two members feed the term."""
    from lit_distill.cli import run_cli
    from tests.lit_distill.test_cli import REPO

    members = "model.init_args.teacher.init_args.model.init_args.members"
    cli = run_cli([
        "fit", "--config", str(REPO / "configs/text/distillspec/adaspec_quickstart-draft_from_quickstart-teacher.yaml"),
        f"--data.init_args.tokenizer={tokenizer_dir}", f"--data.init_args.train_path={text_dir / 'train.txt'}",
        f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=32",
        "--data.init_args.batch_size=4", f"--{members}.target.init_args.path={teacher_dir}",
        f"--{members}.reference.init_args.path={teacher_dir}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2 and torch.isfinite(cli.trainer.callback_metrics["val/adaspec"])
