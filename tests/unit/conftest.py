"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from tests.support.firewall import Clock


@pytest.fixture
def clock() -> Clock:
    """A clock standing at `NOW` until the test moves it."""
    return Clock()
