"""Shared fixtures of the script tests."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="module")
def exp(request):
    """The script named by the test module's ``SCRIPT`` path, imported from its file (scripts/ is
    not a package)."""
    path = request.module.SCRIPT
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
