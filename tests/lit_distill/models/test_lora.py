"""LoRA students through peft: only adapters train, exports load with peft and from_pretrained, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_distill import ConfigError
from lit_distill.cli import main, run_cli
from lit_distill.models import HFCausalLM
from tests.lit_distill.test_cli import newest, quickstart_args

LORA = "{r: 4, alpha: 8, target_modules: [q_proj, v_proj]}"


@pytest.fixture
def base(tmp_path):
    torch.manual_seed(0)
    model = HFCausalLM(config={"model_type": "llama", "vocab_size": 50, "hidden_size": 16, "intermediate_size": 32,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1})
    model.module.save_pretrained(tmp_path / "base")
    return str(tmp_path / "base")


def test_only_adapters_train_and_start_at_the_base_model(base):
    plain = HFCausalLM(path=base).eval()
    lora = HFCausalLM(path=base, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}).eval()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # A and B, on q and v, in 2 layers
    ids = torch.randint(0, 50, (2, 7))
    torch.testing.assert_close(lora(input_ids=ids).logits, plain(input_ids=ids).logits)  # B starts at 0
    assert lora.output_size == 50


def test_bad_lora_options_are_one_line_errors(base):
    with pytest.raises(ConfigError, match="HFCausalLM.lora: unknown keys"):
        HFCausalLM(path=base, lora={"rank": 4})
    with pytest.raises(ConfigError, match="HFCausalLM.lora"):
        HFCausalLM(path=base, lora={"r": 4, "target_modules": ["no_such_proj"]})


def test_export_writes_merged_weights_and_a_peft_adapter(base, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = HFCausalLM(path=base, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter: B != 0
    model.eval()
    out = tmp_path / "out"
    model.export(str(out))
    ids = torch.randint(0, 50, (2, 9))
    expected = model(input_ids=ids).logits
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)
    assert not (expected - HFCausalLM(path=base).eval()(input_ids=ids).logits).abs().max() < 1e-3


def lora_args(root: Path, text_dir, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    """The quickstart config with the (tiny) teacher's weights as a LoRA student's frozen base."""
    root.mkdir(parents=True, exist_ok=True)
    overlay = root / "lora.yaml"  # config: null must clear the quickstart student's architecture dict
    overlay.write_text("model:\n  init_args:\n    scheduler: null\n    student:\n"
                       "      class_path: lit_distill.models.HFCausalLM\n"
                       f"      init_args: {{path: {teacher_dir}, config: null, lora: {LORA}}}\n")
    return quickstart_args(root, text_dir, tokenizer_dir, teacher_dir, "--config", str(overlay), *extra)


@pytest.mark.slow
def test_lora_fit_changes_only_adapters_exports_and_resumes(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    common = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1")
    cli = run_cli(lora_args(tmp_path / "straight", text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=2"))
    state = torch.load(newest(tmp_path / "straight"), map_location="cpu", weights_only=True)["state_dict"]
    trainable = {f"student.{n}" for n, p in cli.model.student.named_parameters() if p.requires_grad}
    frozen = {f"student.{n}" for n, p in cli.model.student.named_parameters() if not p.requires_grad}
    # the checkpoint holds the adapters, not the frozen base (rebuilt from its path on load)
    assert trainable <= set(state) and not frozen & set(state) and all("lora_" in k for k in trainable)
    base = AutoModelForCausalLM.from_pretrained(teacher_dir).state_dict()
    live = cli.model.student.state_dict(prefix="student.")
    changed = {k for k in frozen if not torch.equal(live[k], base[k.split("base_model.model.", 1)[1]
                                                                 .replace("base_layer.", "")])}
    assert not changed, f"frozen base weights changed: {sorted(changed)[:3]}"
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in state.items())  # the adapters learned

    out = tmp_path / "exported"
    main(["export", "--ckpt", str(newest(tmp_path / "straight")), "--out", str(out)])
    student = cli.model.student.eval()
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        expected = student(input_ids=ids).logits
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(out).eval()(input_ids=ids).logits, expected,
                                   rtol=1e-4, atol=1e-5)
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(teacher_dir), out / "adapter").eval()
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()  # the data's tokenizer, in both directories
    assert all(AutoTokenizer.from_pretrained(d).get_vocab() == vocab for d in (out, out / "adapter"))

    resumed = tmp_path / "resumed"
    run_cli(lora_args(resumed, text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=1"))
    run_cli(lora_args(resumed, text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=2",
                      f"--ckpt_path={newest(resumed)}"))
    again = torch.load(newest(resumed), map_location="cpu", weights_only=True)["state_dict"]
    for key in (k for k in state if "lora_" in k):
        torch.testing.assert_close(again[key], state[key], rtol=0, atol=1e-6)


def test_export_saves_the_tokenizer_beside_the_adapter_too(tmp_path, tokenizer_dir, vocab_size):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    dense = HFCausalLM(config={"model_type": "llama", "vocab_size": vocab_size, "hidden_size": 16,
                               "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "num_key_value_heads": 1})
    dense.module.save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path / "base")
    HFCausalLM(path=str(tmp_path / "base"), lora={"r": 2}).export(str(tmp_path / "out"))
    expected = AutoTokenizer.from_pretrained(tokenizer_dir).get_vocab()
    for directory in (tmp_path / "out", tmp_path / "out" / "adapter"):
        assert AutoTokenizer.from_pretrained(directory).get_vocab() == expected


def test_classifier_lora_trains_adapters_and_the_head(tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from lit_distill.models import HFModel

    torch.manual_seed(0)
    fields = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "num_labels": 3}
    AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", **fields)).save_pretrained(tmp_path / "base")
    model = HFModel(task="sequence-classification", path=str(tmp_path / "base"),
                    lora={"r": 2, "target_modules": ["query", "value"]})
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(".lora_" in name for name in trainable) and any("classifier" in name for name in trainable)
    assert all(".lora_" in name or "classifier" in name for name in trainable)
    assert model.output_size == 3 and model.hidden_size == 16
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "classifier" in name:
                p.normal_(0, 0.5)  # trained adapters and head
    model.eval()
    ids = torch.randint(0, 50, (2, 7))
    expected = model(input_ids=ids).logits
    assert expected.shape == (2, 3)
    model.export(str(tmp_path / "out"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    adapted = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
                                        tmp_path / "out" / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="HFModel.lora: adapts a pretrained model"):
        HFModel(task="sequence-classification", config={"model_type": "bert", **fields}, lora={"r": 2})


def test_on_policy_sampling_generates_with_the_adapters_active(base):
    from lit_distill.sampling import hf_generator

    student = HFCausalLM(path=base, lora={"r": 2, "target_modules": ["q_proj", "v_proj"]}).eval()
    generator = hf_generator(student, "student")
    assert any(".lora_" in name for name, _ in generator.named_parameters())
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # adapters that change the logits
        ids = torch.randint(0, 50, (2, 5))
        torch.testing.assert_close(generator(input_ids=ids).logits, student(input_ids=ids).logits)
        assert not torch.allclose(generator(input_ids=ids).logits, HFCausalLM(path=base).eval()(input_ids=ids).logits)
        generated = generator.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 8)
