"""Collection rules shared by every tier: tiers are folders, and each folder carries its marker."""

from __future__ import annotations

import pytest

_TIER_MARKERS = {"bus": "bus", "netns": "netns", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier in _TIER_MARKERS:
            item.add_marker(getattr(pytest.mark, _TIER_MARKERS[tier]))
