"""The examples in the package's docstrings, run by their installed module names (pytest's
own doctest collection would import each file a second time under its folder's name)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import firstmile.flows
import firstmile.online_models
import firstmile.operators
import firstmile.state

MODULES = sorted(
    info.name
    for package in (firstmile.flows, firstmile.operators, firstmile.online_models, firstmile.state)
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
)


def test_every_subpackage_is_found() -> None:
    assert {"firstmile.flows.cli", "firstmile.operators.decode"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
