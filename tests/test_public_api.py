"""Each unit's public API (``__all__``) names what its ``__init__`` really provides, and no private module."""

from __future__ import annotations

import importlib

import pytest

UNITS = ["astra.registry", "astra.servers", "astra.client", "astra.synthesis", "astra.synthesis.trajectories",
         "astra.synthesis.environments", "astra.bfcl", "astra.trainers"]


@pytest.mark.parametrize("unit", UNITS)
def test_all_names_exist_and_are_public(unit: str) -> None:
    module = importlib.import_module(unit)
    names = list(module.__all__)
    assert len(names) == len(set(names)), f"{unit}.__all__ lists a name twice"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{unit}.__all__ names what it does not provide: {missing}"
    assert not [n for n in names if n.startswith("_")]
    namespace: dict[str, object] = {}
    exec(f"from {unit} import *", namespace)  # the star import is what __all__ governs
    assert set(names) <= set(namespace)
