"""Several models behind one adapter: e.g. DM-Codec's combined speech-model + language-model teacher."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.torch_module import as_adapter
from lit_distill.sources import OutputSpec


class MultiModel(ModelAdapter):
    """Runs named member models, each on its own inputs, and returns their outputs as features.

    The side's inputs (e.g. ``batch.teacher_inputs``) are handed out by name: member ``m`` gets
    the entries listed in ``inputs[m]`` (all of them when ``m`` is not listed). Member ``m``'s
    outputs become features named ``<m>.<feature>``, ``<m>.logits`` and
    ``<m>.hidden_states.<i>`` (``i`` from ``-L`` to ``L - 1``), so a loss term reads e.g.
    ``teacher.features.speech.hidden_states.-1``.

    Used as DM-Codec's combined teacher (a speech model on the waveform and a language model on
    the transcript; see ``configs/speech/dm_codec/codec_from_hubert-tiny+tiny-lm_synth.yaml``)::

        class_path: lit_distill.models.MultiModel
        init_args:
          members:
            speech: {class_path: lit_distill.models.HFSpeechEncoder, init_args: {...}}
            text: {class_path: lit_distill.models.HFCausalLM, init_args: {...}}
          inputs: {speech: [waveform, waveform_mask], text: [input_ids, attention_mask]}

    Args:
        members: the models by name (adapters, or any ``nn.Module``, wrapped in ``TorchModule``).
            Names must not contain dots.
        inputs: per member, the names of the input entries it receives, or a mapping from its
            argument names to entry names (two teachers with their own tokenizers:
            ``{bert: {input_ids: bert_input_ids, attention_mask: bert_attention_mask}}``); a member
            not listed receives every entry.

    Outputs: ``ModelOutput(features={...})`` as above; ``logits`` and ``hidden_states`` are None.
    """

    def __init__(self, members: Mapping[str, nn.Module],
                 inputs: Mapping[str, Sequence[str] | Mapping[str, str]] | None = None) -> None:
        super().__init__()
        if not members:
            raise ConfigError("MultiModel.members: give at least one named model")
        for name in members:
            if not name or "." in name:
                raise ConfigError(f"MultiModel.members: name '{name}' must be non-empty and without dots")
        # a list of entry names, or {argument: entry} to rename (two tokenizers: a_input_ids -> input_ids)
        inputs = {name: dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
                  for name, keys in (inputs or {}).items()}
        unknown = sorted(set(inputs) - set(members))
        if unknown:
            raise ConfigError(f"MultiModel.inputs: {unknown} are not members (members: {sorted(members)})")
        self.module = nn.ModuleDict({name: as_adapter(model) for name, model in members.items()})
        self.inputs = inputs

    def declared_outputs(self) -> OutputSpec:
        """Features only: each member's outputs as ``<member>.logits``, ``<member>.hidden_states.<i>``
        and ``<member>.<feature>``."""
        names: set[str] = set()
        closed = True
        for name, member in self.module.items():
            member_names, complete = _flatten_spec(name, member.output_spec())
            names |= member_names
            closed = closed and complete
        return OutputSpec(logits=False, hidden_states=0, features=frozenset(names), closed=closed)

    def run(self, **inputs: Any) -> ModelOutput:
        features = {}
        for name, member in self.module.items():
            keys = self.inputs.get(name)
            if keys is None:
                chosen = inputs
            else:
                missing = [k for k in keys.values() if k not in inputs]
                if missing:
                    raise ConfigError(f"MultiModel.inputs.{name}: {missing} are not in the inputs "
                                      f"(available: {sorted(inputs)})")
                chosen = {argument: inputs[entry] for argument, entry in keys.items()}
            features.update(_flatten(name, member(**chosen)))
        return ModelOutput(features=features)

    def export(self, out_dir: str) -> None:
        """Export every member into ``out_dir/<name>``."""
        import os

        for name, member in self.module.items():
            member.export(os.path.join(out_dir, name))


def _flatten_spec(name: str, spec: OutputSpec) -> tuple[set[str], bool]:
    """One member's declared outputs as the ``<name>.``-prefixed feature names :func:`_flatten` gives,
    and whether that list is complete."""
    names = {f"{name}.{key}" for key in spec.features}
    if spec.logits is not False:
        names.add(f"{name}.logits")
    if spec.hidden_states:
        n = spec.hidden_states
        names |= {f"{name}.hidden_states.{i}" for i in range(-n, n)}
    complete = spec.closed and spec.logits is not None and spec.hidden_states is not None
    return names, complete


def _flatten(name: str, out: ModelOutput) -> dict[str, Any]:
    """One member's output as ``<name>.``-prefixed features."""
    features = {f"{name}.{key}": value for key, value in out.features.items()}
    if out.logits is not None:
        features[f"{name}.logits"] = out.logits
    if out.hidden_states is not None:
        n = len(out.hidden_states)
        for i, hidden in enumerate(out.hidden_states):
            features[f"{name}.hidden_states.{i}"] = hidden
            features[f"{name}.hidden_states.{i - n}"] = hidden
    return features


__all__ = ["MultiModel"]
