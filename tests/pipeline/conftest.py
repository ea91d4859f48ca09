"""Fixtures for the pipeline tests; data and config helpers live in pipeline_data.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_data import make_classification_frame, make_regression_frame


@pytest.fixture
def cls_csv(tmp_path) -> Path:
    p = tmp_path / "cls.csv"
    make_classification_frame().to_csv(p, index=False)
    return p


@pytest.fixture
def reg_parquet(tmp_path) -> Path:
    p = tmp_path / "reg.parquet"
    make_regression_frame().to_parquet(p, index=False)
    return p
