from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The converted SmolLM2 (converted once per machine, then cached)."""
    from cotlib import models

    return models.embedded_model_dir()


@pytest.fixture
def tmp_project(tmp_path: Path) -> Path:
    """A scratch project with the real notebooks, so grids write outside the checkout."""
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    (tmp_path / "params").mkdir()
    return tmp_path


needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
