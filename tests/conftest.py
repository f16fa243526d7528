"""Fixtures shared by the test modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class EmptyHubCache:
    """An empty Hugging Face cache; ``offline`` tells whether HF_HUB_OFFLINE is set."""

    hub_dir: Path
    offline: bool

    @property
    def limit_s(self) -> float:
        """How fast a missing model must be reported: offline needs no network at all."""
        return 5.0 if self.offline else 10.0


@pytest.fixture(params=[True, False], ids=["offline", "online"])
def empty_hub_cache(request, monkeypatch, tmp_path) -> EmptyHubCache:
    """HF_HOME pointing at an empty directory, with HF_HUB_OFFLINE set (first run) or unset (second run)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    if request.param:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return EmptyHubCache(hub_dir=tmp_path / "hf" / "hub", offline=request.param)
