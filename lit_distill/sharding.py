"""FSDP2 sharding of the student, the teacher and the loss terms' parameters.

Lightning's ``FSDPStrategy`` refuses CPUs; lit_distill shards the FSDP2 way
instead: ``trainer.strategy`` is ``lightning.pytorch.strategies.ModelParallelStrategy``
(with ``data_parallel_size`` = number of processes and ``tensor_parallel_size: 1``)
and :meth:`lit_distill.DistillationModule.configure_model` calls
:func:`shard_distillation_module`, which applies
``torch.distributed.fsdp.fully_shard`` to every repeated block of each model and
then to the model itself:

- the **student** (its parameters become sharded ``DTensor``s whose gradients are
  reduce-scattered, i.e. averaged over the processes, like DDP's all-reduce);
- the **teacher**, the same way, so that a teacher larger than one device's
  memory fits; its parameters keep ``requires_grad=False`` (it runs under
  ``no_grad`` and never gets a gradient or an optimizer state);
- every **loss term that owns trainable parameters** (projectors, adapters), each
  as one unit. They are small, but under ``ModelParallelStrategy`` nothing else
  would synchronise their gradients across processes: left unsharded, each
  process would train its own copy.

Blocks are found in this order: the names given in ``ShardingConfig.blocks``
(module paths inside the wrapped model, or class names); a Hugging Face model's
own ``_no_split_modules`` (its decoder layer classes, e.g. ``LlamaDecoderLayer``);
otherwise the children of the outermost ``nn.ModuleList``/``nn.Sequential``
containers whose children all share one class that repeats in the model (timm ViT
``blocks``, ResNet ``layer1..4``, ConvNeXt ``stages``). A model without blocks is
sharded as one unit.

A sharded run writes a distributed checkpoint (a directory per checkpoint);
``python -m lit_distill.consolidate DIR --out FILE`` (:mod:`lit_distill.consolidate`)
turns it into one ordinary checkpoint file for a single process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from lit_distill.errors import ConfigError
from lit_distill.models.base import parse_dtype

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from lit_distill.teacher import Teacher

_CONTAINERS = (nn.ModuleList, nn.Sequential)
_FIELD = "model.init_args.sharding"


class ShardableDistillation(Protocol):
    """What :func:`shard_distillation_module` reads of a ``DistillationModule``.

    Typed by its shape so that the module (which calls the sharding) and this file do not
    import each other.
    """

    student: nn.Module
    teacher: Teacher | None
    losses: nn.ModuleDict


@dataclass
class ShardingConfig:
    """How ``configure_model`` shards under ``ModelParallelStrategy`` (ignored by other strategies).

    Args:
        blocks: the student's units of sharding: module paths inside the wrapped
            model (``model.layers.0``; a path to a ``ModuleList``/``Sequential``
            means each of its children) or class names (``LlamaDecoderLayer``).
            None finds them (HF ``_no_split_modules``, else repeated blocks).
        teacher_blocks: the same for the teacher; None applies the rule of ``blocks``.
        param_dtype: dtype the gathered parameters compute in (``bfloat16``,
            ``float16``, ``float32``); None keeps the parameters' own dtype.
            The sharded master copy and the optimizer state stay in their dtype.
        reduce_dtype: dtype of the gradient reduce-scatter; None: ``param_dtype``.
        output_dtype: cast the student's and teacher's floating outputs to this
            dtype (e.g. ``float32`` so losses see full-precision logits); None
            leaves them in the compute dtype.
        reshard_after_forward: free the gathered parameters of a block after its
            forward (less memory, one more all-gather in backward).
        shard_teacher: shard the teacher too; False keeps a full replica of the
            teacher on every process.
    """

    blocks: list[str] | None = None
    teacher_blocks: list[str] | None = None
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    output_dtype: str | None = None
    reshard_after_forward: bool = True
    shard_teacher: bool = True

    def mp_policy(self, with_output: bool = True) -> Any:
        """The ``MixedPrecisionPolicy`` these dtypes describe."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=parse_dtype(self.param_dtype, f"{_FIELD}.param_dtype"),
            reduce_dtype=parse_dtype(self.reduce_dtype, f"{_FIELD}.reduce_dtype"),
            output_dtype=parse_dtype(self.output_dtype, f"{_FIELD}.output_dtype") if with_output else None,
        )


def find_blocks(model: nn.Module, names: Sequence[str] | None = None, field: str = f"{_FIELD}.blocks") -> list[nn.Module]:
    """The repeated blocks of ``model`` to shard one by one (see the module docstring for the rules).

    Args:
        model: the wrapped model (``adapter.model``), e.g. a ``LlamaForCausalLM``.
        names: module paths or class names; None finds the blocks.
        field: config field named in errors.

    Returns:
        The blocks, outermost first, none nested inside another.
    """
    modules = dict(model.named_modules())
    if names:
        chosen: list[nn.Module] = []
        for name in names:
            if name in modules and name != "":
                found = modules[name]
                chosen += list(found.children()) if isinstance(found, _CONTAINERS) else [found]
                continue
            by_class = [m for m in modules.values() if type(m).__name__ == name]
            if not by_class:
                classes = sorted({type(m).__name__ for m in modules.values()})
                raise ConfigError(f"{field}: '{name}' is neither a module path nor a class name in "
                                  f"{type(model).__name__} (classes there: {classes[:20]})")
            chosen += by_class
        return _outermost(model, chosen)
    no_split = getattr(model, "_no_split_modules", None)
    if no_split:
        blocks = [m for m in modules.values() if type(m).__name__ in set(no_split)]
        if blocks:
            return _outermost(model, blocks)
    # Containers of one repeated block class: a ViT's `blocks`, a ResNet's layer1..4 (even
    # with one block per stage, as long as the class repeats somewhere in the model).
    counts = Counter(type(m) for m in modules.values())
    blocks = []
    for module in modules.values():
        children = list(module.children())
        classes = {type(c) for c in children}
        if isinstance(module, _CONTAINERS) and len(classes) == 1 and any(True for _ in module.parameters()) \
                and (len(children) >= 2 or counts[classes.pop()] >= 2):
            blocks += children
    return _outermost(model, blocks)


def _outermost(model: nn.Module, blocks: Iterable[nn.Module]) -> list[nn.Module]:
    """Drop blocks nested inside another block (and the model itself), keeping module order."""
    wanted = {id(b) for b in blocks}
    kept: list[nn.Module] = []
    inside: set[int] = set()
    for module in model.modules():
        if id(module) in inside or module is model:
            continue
        if id(module) in wanted:
            kept.append(module)
            inside.update(id(m) for m in module.modules())
    return kept


def data_parallel_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The 1-D data-parallel mesh of ``ModelParallelStrategy``; ConfigError if tensor parallelism is asked."""
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        world = mesh.size()
        raise ConfigError(
            "trainer.strategy.init_args.tensor_parallel_size: lit_distill shards with FSDP2 over data "
            f"parallelism only; set data_parallel_size: {world} (num_nodes x devices) and tensor_parallel_size: 1")
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def shard_model(model: nn.Module, blocks: list[nn.Module], mesh: DeviceMesh, config: ShardingConfig,
                with_output: bool = True) -> None:
    """``fully_shard`` each block of ``model``, then ``model`` itself (the root of this group)."""
    from torch.distributed.fsdp import fully_shard

    # output_dtype is for what the losses see: only the root casts its outputs.
    inner = config.mp_policy(with_output=False)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=inner)
    fully_shard(model, mesh=mesh, reshard_after_forward=config.reshard_after_forward,
                mp_policy=config.mp_policy(with_output))


def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _register_model_output() -> None:
    """Let FSDP2 see the tensors inside ``ModelOutput``.

    FSDP2 finds a root's outputs with ``torch.utils._pytree``: it hooks them to
    gather the parameters again before backward and to reduce the gradients after
    it, and casts them to ``output_dtype``. An unregistered dataclass is one opaque
    leaf, so backward would run on freed parameters and skip the reduction.
    """
    import torch.utils._pytree as pytree

    from lit_distill.contracts import ModelOutput

    if ModelOutput not in pytree.SUPPORTED_NODES:
        pytree.register_dataclass(ModelOutput)


def shard_distillation_module(module: ShardableDistillation, mesh: DeviceMesh, config: ShardingConfig | None) -> None:
    """Shard student, teacher and parameterised loss terms of ``module`` on ``mesh`` (idempotent).

    Args:
        module: the ``DistillationModule`` (its ``student``, ``teacher``, ``losses``).
        mesh: ``ModelParallelStrategy``'s device mesh (``module.device_mesh``).
        config: sharding options; None uses the defaults.
    """
    if is_sharded(module.student):
        return
    _register_model_output()
    config = config or ShardingConfig()
    dp_mesh = data_parallel_mesh(mesh)
    student = module.student
    shard_model(student, find_blocks(student.model, config.blocks), dp_mesh, config)
    teacher = module.teacher
    if teacher is not None and config.shard_teacher:
        teacher_names = config.teacher_blocks if config.teacher_blocks is not None else config.blocks
        # The teacher's own dtype setting (Teacher.dtype) wins over param_dtype; "auto" is
        # settled here for the mesh's devices, before its weights become shards.
        teacher.resolve_auto_dtype(torch.device(mesh.device_type))
        teacher_config = config if teacher.dtype is None else replace(config, param_dtype=None)
        blocks = find_blocks(teacher.model.model, teacher_names, f"{_FIELD}.teacher_blocks")
        shard_model(teacher.model, blocks, dp_mesh, teacher_config)
        teacher.model.requires_grad_(False)
    for term in module.losses.values():
        if any(p.requires_grad for p in term.parameters()):
            shard_model(term, [], dp_mesh, config, with_output=False)
