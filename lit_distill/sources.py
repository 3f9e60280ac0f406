"""Where a loss term's inputs come from: typed source paths and what each model can output.

A loss term names each of its inputs with a path (see :mod:`lit_distill.contracts`):

- ``student.logits`` / ``teacher.logits``
- ``student.hidden_states.<i>`` (negative indices allowed); ``student.hidden_states`` is the whole tuple
- ``student.features.<name>`` (``<name>`` may itself contain dots, e.g. ``lm_head.weight``);
  ``student.features`` is the whole mapping
- ``teachers.<name>.<output>``: member ``<name>`` of a ``MultiModel`` teacher (several named
  teachers), i.e. ``teacher.features.<name>.<output>``
- ``batch.<key>`` (a batch entry such as ``labels`` or ``loss_mask``; a dotted key reaches into
  nested dicts, e.g. ``batch.inputs.attention_mask``)

:meth:`Source.parse` turns a path into a :class:`Source` once, when the term is built; the
module then checks every model source against the :class:`OutputSpec` its adapter declares,
before any training, and :meth:`Source.read` looks the value up at every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from lit_distill.errors import ConfigError

Root = Literal["student", "teacher", "batch"]
Field = Literal["logits", "hidden_states", "features", "batch"]
MODEL_FIELDS = ("logits", "hidden_states", "features")
_FORMS = "valid forms: <side>.logits, <side>.hidden_states.<i>, <side>.features.<name>, batch.<key>"


class SourceError(ConfigError, KeyError):
    """A source that cannot be read from the outputs or the batch at hand."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True, eq=False)
class Source:
    """One parsed source path. It compares equal to its path string (``source == "student.logits"``).

    Attributes:
        root: ``student``, ``teacher`` or ``batch``.
        field: ``logits``, ``hidden_states`` or ``features`` for a model; ``batch`` for a batch entry.
        key: the layer index (``hidden_states``), the feature name (``features``), the batch key
            (``batch``), or None (``logits``).
    """

    root: Root
    field: Field
    key: int | str | None = None

    @classmethod
    def parse(cls, path: str) -> Source:
        """Parse ``path``; raise ``ValueError`` saying what is wrong and what is valid."""
        if not isinstance(path, str):
            raise ValueError(f"must be a string path, got {type(path).__name__}; {_FORMS}")
        root, _, rest = path.partition(".")
        if root == "teachers":  # teachers.<name>.<output>: a member of a MultiModel teacher
            name, _, output = rest.partition(".")
            if not name or not output:
                raise ValueError("teachers.<name>.<output> names one teacher of a MultiModel, e.g. "
                                 "'teachers.bert.logits'")
            return cls("teacher", "features", f"{name}.{output}")
        if root not in ("student", "teacher", "batch") or not rest:
            raise ValueError(f"must start with 'student.', 'teacher.' or 'batch.'; {_FORMS}")
        if root == "batch":
            return cls("batch", "batch", rest)
        name, _, key = rest.partition(".")
        if name == "logits" and not key:
            return cls(root, "logits")
        if name == "hidden_states":
            if not key:  # the whole tuple, for terms over several layers
                return cls(root, "hidden_states")
            try:
                return cls(root, "hidden_states", int(key))
            except ValueError:
                raise ValueError("hidden_states needs an integer layer index, e.g. "
                                 f"'{root}.hidden_states.-1'") from None
        if name == "features":  # no key: the whole mapping, for terms over several features
            return cls(root, "features", key or None)
        raise ValueError(_FORMS)

    @property
    def path(self) -> str:
        """The path this source was parsed from (normalised)."""
        if self.field == "batch":
            return f"batch.{self.key}"
        return f"{self.root}.{self.field}" + ("" if self.key is None else f".{self.key}")

    def __str__(self) -> str:
        return self.path

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Source | str):
            return self.path == str(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def is_model_output(self) -> bool:
        """Whether the source is an output of the student or the teacher (not a batch entry)."""
        return self.root != "batch"

    def present(self, student: Any, teacher: Any, batch: dict) -> bool:
        """Whether :meth:`read` would find a value (a missing feature or batch key is absent)."""
        if self.root == "batch":
            return _lookup(batch, self.key) is not _MISSING
        output = student if self.root == "student" else teacher
        if output is None:
            return False
        if self.field == "features":
            return self.key is None or self.key in output.features
        if self.field == "hidden_states":
            return output.hidden_states is not None
        return output.logits is not None

    def read(self, student: Any, teacher: Any, batch: dict) -> Any:
        """The value this source names, from the two models' ``ModelOutput`` and the batch.

        Raises:
            SourceError: the value is not there; the message says what is.
        """
        if self.root == "batch":
            value = _lookup(batch, self.key)
            if value is _MISSING:
                raise SourceError(f"source '{self}': the batch has no key '{self.key}' (keys: {sorted(batch)})")
            return value
        output = student if self.root == "student" else teacher
        if output is None:
            raise SourceError(f"source '{self}' needs a teacher, but the module has none")
        if self.field == "logits":
            return output.logits
        if self.field == "hidden_states":
            if output.hidden_states is None:
                raise SourceError(f"source '{self}': the {self.root} adapter returned no hidden states "
                                  "(set output_hidden_states: true on it)")
            return output.hidden_states if self.key is None else output.hidden_states[self.key]
        if self.key is None:
            return output.features
        if self.key not in output.features:
            raise SourceError(f"source '{self}': {self.root} features are {sorted(output.features)}")
        return output.features[self.key]


_MISSING = object()

#: Batch keys of one student–teacher pair in a cross-tokenizer batch. With several named teachers
#: (``datamodules.CrossTokenizerDataModule(teacher_tokenizer={name: ...})``) each teacher's live in
#: ``batch["teachers"][name]`` under the same names.
TEACHER_PAIR_KEYS = frozenset({
    "teacher_labels", "teacher_loss_mask", "teacher_byte_offsets", "alm_student_chunks", "alm_teacher_chunks",
    "alm_chunk_mask", "student_chunk_start_mask", "teacher_chunk_start_mask", "teacher_space_mask"})


def for_teacher(sources: dict[str, str], name: str) -> dict[str, str]:
    """``sources`` rewritten to read teacher ``name`` of several (a ``MultiModel`` member).

    ``teacher.<output>`` becomes ``teachers.<name>.<output>`` and a pair key ``batch.<key>``
    (:data:`TEACHER_PAIR_KEYS`) becomes ``batch.teachers.<name>.<key>``; other sources (the
    student's, its labels and mask) are kept.
    """
    if not name or "." in name:
        raise ConfigError(f"teacher: the teacher name '{name}' must be non-empty and without dots")
    out = {}
    for argument, path in sources.items():
        root, _, rest = path.partition(".")
        if root == "teacher":
            path = f"teachers.{name}.{rest}"
        elif root == "batch" and rest in TEACHER_PAIR_KEYS:
            path = f"batch.teachers.{name}.{rest}"
        out[argument] = path
    return out


def _lookup(batch: dict, key: str) -> Any:
    """``batch[key]``, or for a dotted key absent at the top level, the nested entry
    (``inputs.attention_mask`` → ``batch["inputs"]["attention_mask"]``); ``_MISSING`` if none."""
    if key in batch:
        return batch[key]
    value: Any = batch
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@dataclass(frozen=True)
class OutputSpec:
    """What a model adapter can put in its ``ModelOutput``, known before any forward pass.

    Attributes:
        logits: whether ``logits`` is returned (None: unknown until the model runs).
        hidden_states: how many hidden-state tensors are returned (0: none; None: unknown).
        features: names of the features that are always returned.
        closed: True when ``features`` lists every feature the adapter can return, so a
            source naming another one is an error before training. False for adapters whose
            outputs depend on the wrapped model (any ``nn.Module``): only what is declared is
            checked, the rest at the first step.
    """

    logits: bool | None = None
    hidden_states: int | None = None
    features: frozenset[str] = field(default_factory=frozenset)
    closed: bool = False

    def problem(self, source: Source) -> str | None:
        """Why a model with this spec cannot give ``source``, or None when it can (or may)."""
        if source.field == "logits":
            if self.logits is False:
                return "this model returns no logits"
            return None
        if source.field == "hidden_states":
            if self.hidden_states == 0:
                return "this model returns no hidden states (set output_hidden_states: true on it, if it has it)"
            count = self.hidden_states
            if count is not None and source.key is not None and not -count <= int(source.key) < count:
                return f"layer index {source.key} is out of range for {count} hidden states"
            return None
        if source.key is None or source.key in self.features or not self.closed:
            return None
        return "this model has no such feature"

    def describe(self) -> str:
        """The outputs as source-path suffixes, for error messages."""
        parts = []
        if self.logits is not False:
            parts.append("logits")
        if self.hidden_states != 0:
            parts.append("hidden_states.<i>" if self.hidden_states is None
                         else f"hidden_states.<i> (i in [-{self.hidden_states}, {self.hidden_states - 1}])")
        parts += [f"features.{name}" for name in sorted(self.features)]
        if not self.closed:
            parts.append("other features the wrapped model returns")
        return ", ".join(parts) or "nothing"


def parse_sources(sources: dict[str, str], owner: str, arguments: set[str]) -> dict[str, Source]:
    """Parse a term's ``{argument: path}`` mapping, checking the arguments exist.

    Args:
        sources: argument name → source path.
        owner: the term's name for messages (e.g. ``ForwardKL``).
        arguments: the names of the term's ``forward`` arguments.

    Raises:
        ConfigError: an unknown argument or a malformed path, naming both.
    """
    parsed = {}
    for arg, path in sources.items():
        if arg not in arguments:
            raise ConfigError(f"{owner}.sources: '{arg}' is not an argument of its forward "
                              f"(valid: {sorted(arguments)})")
        if isinstance(path, Source):
            parsed[arg] = path
            continue
        try:
            parsed[arg] = Source.parse(path)
        except ValueError as err:
            raise ConfigError(f"{owner}.sources.{arg}: '{path}' {err}") from None
    return parsed
