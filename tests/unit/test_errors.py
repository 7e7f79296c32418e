"""The error tree: each error's `code` names a D-Bus error and picks `snitchctl`'s exit status, so
codes must be unique, valid in a D-Bus name, and turn back into the same class on the client."""

from __future__ import annotations

import re

import pytest

from snitch_common import errors
from snitch_common.errors import (
    DBUS_ERROR_PREFIX,
    DaemonUnreachable,
    NotAuthorized,
    SnitchError,
    error_for_code,
)


def _tree(cls: type[SnitchError]) -> list[type[SnitchError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _tree(sub)
    return out


# Only the tree defined in snitch_common.errors: other modules' subclasses depend on import order.
ERRORS = [cls for cls in _tree(SnitchError) if cls.__module__ == "snitch_common.errors"]


def test_the_tree_is_the_documented_one() -> None:
    """The docstring lists sixteen errors; a new one must be added there (and here) on purpose
    (ListError: issue 18; ModeError, ProfileError, ProposalNotFound: issue 17)."""
    assert len(ERRORS) == 16
    assert {cls.__name__ for cls in ERRORS} <= set(errors.__all__)


def test_every_error_has_its_own_code() -> None:
    """A subclass that forgot `code` inherits "Failed" and would come back to the client as a
    plain SnitchError: codes must be unique across the tree."""
    codes = [cls.code for cls in ERRORS]
    assert len(set(codes)) == len(codes), sorted(codes)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_code_round_trips_to_the_same_class(cls: type[SnitchError]) -> None:
    """The client rebuilds the daemon's error from the D-Bus error name: same class, same text."""
    rebuilt = error_for_code(cls.code, "cannot do X: do Y")
    assert type(rebuilt) is cls
    assert rebuilt.message == "cannot do X: do Y"
    assert str(rebuilt) == "cannot do X: do Y"


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: c.__name__)
def test_code_makes_a_valid_dbus_error_name(cls: type[SnitchError]) -> None:
    """D-Bus error names are dotted elements of [A-Za-z0-9_] not starting with a digit; a bad one
    makes the bus reject the reply."""
    name = DBUS_ERROR_PREFIX + cls.code
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+", name)
    assert len(name) <= 255


def test_unknown_code_becomes_a_plain_snitch_error() -> None:
    """A newer daemon may send a code this client does not know; it is still an error."""
    rebuilt = error_for_code("SomethingNew", "boom")
    assert type(rebuilt) is SnitchError
    assert rebuilt.message == "boom"


def test_exit_statuses() -> None:
    """Scripts tell "not allowed" (4) and "daemon not running" (3) apart from other failures."""
    assert NotAuthorized.exit_status == 4
    assert DaemonUnreachable.exit_status == 3
    others = [cls for cls in ERRORS if cls not in (NotAuthorized, DaemonUnreachable)]
    assert {cls.exit_status for cls in others} == {1}
