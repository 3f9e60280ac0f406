"""Public names of a package, imported from their modules on first use (PEP 562).

A package ``__init__`` that imported every adapter, loss and datamodule would load
transformers, torchaudio, timm, open_clip and torchvision for a user who only wants
``lit_distill.losses.forward_kl``. Instead it declares where each public name lives::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"lit_distill.models.hf": ["HFCausalLM"], ...})

``from lit_distill.models import HFCausalLM`` and YAML class paths such as
``lit_distill.models.HFCausalLM`` (jsonargparse imports the package, then ``getattr``)
work as before; only the module that defines the name is imported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """The module-level ``__getattr__``, ``__dir__`` and ``__all__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        modules: absolute module name -> the public names it defines (as the package's
            import lines would list them).

    Returns:
        ``(__getattr__, __dir__, __all__)``: ``__getattr__`` imports the module of a name on
        first access and keeps its names in the package (later accesses are plain attribute
        reads); ``__dir__`` lists the package's attributes and every export; ``__all__`` is
        every export.
    """
    exports = {name: module for module, names in modules.items() for name in names}
    if len(exports) != sum(map(len, modules.values())):
        raise ValueError(f"{package}: a name is exported from two modules")

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        module = importlib.import_module(module_name)
        namespace = vars(sys.modules[package])
        # Bind every export of that module at once: importing it may have bound a same-named
        # submodule on the package (e.g. `alm` the module over `alm` the function).
        for other in modules[module_name]:
            namespace[other] = getattr(module, other)
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, list(exports)
