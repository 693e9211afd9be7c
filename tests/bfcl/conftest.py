from __future__ import annotations

import pytest

pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (pip install --no-deps bfcl-eval mpmath)")
pytest.importorskip("mpmath")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/bfcl/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.bfcl)
