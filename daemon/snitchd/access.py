"""Who may do what: root and members of the admin group may change rules and answer prompts
for root and system users; every other user acts only for their own processes.

Read from the system's user and group databases at each check (not cached), so a user removed
from the group loses the right without a daemon restart.
"""

from __future__ import annotations

import grp
import os
import pwd

__all__ = ["is_admin"]


def is_admin(uid: int, admin_group: str) -> bool:
    if uid == 0:
        return True
    try:
        user = pwd.getpwuid(uid)
        gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    return gid in os.getgrouplist(user.pw_name, user.pw_gid)
