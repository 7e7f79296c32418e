"""Errors that people read: each says what failed, on what, and what to do next.

Tree::

    SnitchError                 code "Failed"          exit 1
    ├── RuleError               code "InvalidRule"     exit 1   malformed rule text or field
    ├── RuleNotFound            code "RuleNotFound"    exit 1
    ├── ConfigError             code "InvalidConfig"   exit 1   names the key
    ├── StoreError              code "StoreFailed"     exit 1   locked, corrupt, newer schema
    ├── BackendUnavailable      code "NoBackend"       exit 1   names the module or package
    ├── BackendFailed           code "BackendFailed"   exit 1   a kernel command failed
    ├── NotAuthorized           code "NotAuthorized"   exit 4
    ├── DaemonUnreachable       code "Unreachable"     exit 3
    ├── PromptError             code "InvalidAnswer"   exit 1   unknown prompt or bad answer
    ├── PacketError             code "BadPacket"       exit 1   truncated or malformed packet
    ├── Busy                    code "Busy"            exit 1   a query refused or cut short
    ├── ListError               code "ListFailed"      exit 1   a block list: name, download, parse
    ├── ModeError               code "InvalidMode"     exit 1   unknown mode, bad time limit
    ├── ProfileError            code "InvalidProfile"  exit 1   unknown profile, overlapping match
    └── ProposalNotFound        code "ProposalNotFound" exit 1  a proposal gone or no longer apt

`code` is stable: it names the D-Bus error (`org.snitch.Firewall1.Error.<code>`) and lets
`snitchctl` pick its exit status.
"""

from __future__ import annotations

__all__ = [
    "DBUS_ERROR_PREFIX",
    "BackendFailed",
    "BackendUnavailable",
    "Busy",
    "ConfigError",
    "DaemonUnreachable",
    "ListError",
    "ModeError",
    "NotAuthorized",
    "PacketError",
    "ProfileError",
    "PromptError",
    "ProposalNotFound",
    "RuleError",
    "RuleNotFound",
    "SnitchError",
    "StoreError",
    "error_for_code",
]

DBUS_ERROR_PREFIX = "org.snitch.Firewall1.Error."


class SnitchError(Exception):
    code = "Failed"
    exit_status = 1

    @property
    def message(self) -> str:
        return str(self)


class RuleError(SnitchError):
    code = "InvalidRule"


class RuleNotFound(SnitchError):
    code = "RuleNotFound"


class ConfigError(SnitchError):
    code = "InvalidConfig"


class StoreError(SnitchError):
    code = "StoreFailed"


class BackendUnavailable(SnitchError):
    code = "NoBackend"


class BackendFailed(SnitchError):
    code = "BackendFailed"


class NotAuthorized(SnitchError):
    code = "NotAuthorized"
    exit_status = 4


class DaemonUnreachable(SnitchError):
    code = "Unreachable"
    exit_status = 3


class PromptError(SnitchError):
    code = "InvalidAnswer"


class PacketError(SnitchError):
    code = "BadPacket"


class Busy(SnitchError):
    """The daemon will not run this query now: the caller already has one running, or it ran
    past its time limit. Narrowing or waiting helps; nothing is wrong with the daemon."""

    code = "Busy"


class ListError(SnitchError):
    """A block list cannot be added, found, downloaded or parsed; the last good copy stays."""

    code = "ListFailed"


class ModeError(SnitchError):
    code = "InvalidMode"


class ProfileError(SnitchError):
    code = "InvalidProfile"


class ProposalNotFound(SnitchError):
    code = "ProposalNotFound"


_BY_CODE: dict[str, type[SnitchError]] = {
    cls.code: cls
    for cls in (
        SnitchError,
        RuleError,
        RuleNotFound,
        ConfigError,
        StoreError,
        BackendUnavailable,
        BackendFailed,
        NotAuthorized,
        DaemonUnreachable,
        PromptError,
        PacketError,
        Busy,
        ListError,
        ModeError,
        ProfileError,
        ProposalNotFound,
    )
}


def error_for_code(code: str, message: str) -> SnitchError:
    """Rebuild the error a D-Bus reply named, so clients raise what the daemon raised."""
    return _BY_CODE.get(code, SnitchError)(message)
