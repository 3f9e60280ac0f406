"""Lazy package exports: every public name resolves, is listed, and is the defining module's object."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

from lit_distill.lazy_exports import lazy_exports

LAZY_PACKAGES = ("lit_distill", "lit_distill.models", "lit_distill.losses", "lit_distill.callbacks", "datamodules")


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_every_export_resolves_and_is_listed(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        value = getattr(module, name)
        assert name in dir(module), name
        assert not isinstance(value, types.ModuleType), name


def test_a_name_is_the_object_of_its_module_and_unknown_names_raise():
    from lit_distill.losses import ForwardKL
    from lit_distill.losses.terms import ForwardKL as defined
    from lit_distill.models import HFCausalLM
    from lit_distill.models.hf import HFCausalLM as defined_model

    assert ForwardKL is defined and HFCausalLM is defined_model
    with pytest.raises(AttributeError, match="NoSuchLoss"):
        importlib.import_module("lit_distill.losses").NoSuchLoss  # noqa: B018


def test_alm_is_the_function_even_after_its_module_is_imported():
    code = ("import lit_distill.losses.alm, lit_distill.losses as losses, inspect\n"
            "assert inspect.isfunction(losses.alm), losses.alm\n"
            "from lit_distill.losses import ALM\n"
            "assert inspect.isfunction(losses.alm)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_exports_binds_all_names_of_a_module_at_once():
    package = types.ModuleType("fake_pkg")
    sys.modules["fake_pkg"] = package
    try:
        package.__getattr__, package.__dir__, package.__all__ = lazy_exports(
            "fake_pkg", {"json": ["dumps", "loads"]})
        assert package.__all__ == ["dumps", "loads"]
        assert "loads" not in vars(package)
        assert package.dumps([1]) == "[1]"
        assert "loads" in vars(package)  # bound with dumps, without another __getattr__ call
        assert {"dumps", "loads"} <= set(package.__dir__())
        with pytest.raises(ValueError, match="two modules"):
            lazy_exports("fake_pkg", {"json": ["dumps"], "pickle": ["dumps"]})
    finally:
        del sys.modules["fake_pkg"]
