"""The queue reader counts packet-path tests run with (issue 21): one reader in the suite, and
two as a slow extra (`slow`: run by .ci/run after the suite, not by ./test.sh), so the README's
test command stays under 15 minutes while CI still runs every variant."""

import pytest

__all__ = ["READERS"]

READERS = [
    pytest.param(1, id="readers=1"),
    pytest.param(2, id="readers=2", marks=pytest.mark.slow),
]
