"""The D-Bus service `org.snitch.Firewall1` on the system bus: a translator, not a decider.

Each method has one shape (`caller.handled`): check the caller, turn D-Bus values into records,
call the firewall, turn the result (or a `SnitchError`) back into D-Bus values. The policy file
in `systemd/` is the first gate; the daemon checks again by the caller's uid (root or the admin
group may change rules), because a policy file can be edited or missing. Rules travel as their
text form, records as `a{sv}` so fields can be added without breaking clients.

Any user may read the log (their own flows) and the rules, in amounts they choose: those reads
run in worker threads (`queries`), never on the packet loop, one at a time per caller, and a
reply holds at most MAX_LOG_ROWS / MAX_RULES_PAGE / MAX_TOP_APPS records (clients page).

One module per room, each a mixin of `FirewallService` (service.py) over the shared state and
caller check (base.py): rules, prompts (and agents), monitor (log and traffic queries), lists,
modes (modes, proposals, profiles); values.py holds the a{sv}/JSON helpers they share.
"""

from snitchd.api.prompts import DBusTransport, prompt_dict
from snitchd.api.service import FirewallService, serve

__all__ = ["DBusTransport", "FirewallService", "prompt_dict", "serve"]
