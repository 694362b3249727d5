"""Notebooks run as tests through nbmake (``--nbmake`` in pyproject's addopts): each one is
marked ``notebook`` and ``slow``, so that ``-m "not notebook"`` (or ``-m unit``) leaves
them out."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            item.add_marker(pytest.mark.slow)
