"""Where cityclf keeps its files.

Everything lives under one home folder so that tests (and users with several projects) can point
cityclf elsewhere with ``CITYCLF_HOME`` instead of touching the repository.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    """The cityclf home: ``$CITYCLF_HOME`` or the repository root."""
    return Path(os.environ.get("CITYCLF_HOME") or REPO_ROOT).expanduser().resolve()


def data_dir() -> Path:
    """Datasets live here (``data/``)."""
    return home() / "data"


def models_dir() -> Path:
    """Trained runs live here (``models/``), one folder each."""
    return home() / "models"


def cache_dir() -> Path:
    """Derived files that can always be rebuilt: converted weights, embeddings."""
    return home() / "cache"


def demo_dir() -> Path:
    """The synthetic demo dataset that ``cityclf demo`` and ``make app`` build."""
    return data_dir() / "demo"
