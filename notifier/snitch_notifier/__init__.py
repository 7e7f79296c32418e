"""snitch-notifier: the desktop agent that asks the person at the desk about new connections.

It registers with snitchd on the system bus as the agent of its user (`org.snitch.Agent1`, the
same protocol as `snitchctl agent`), shows each prompt in a small always-on-top window, and sends
the answer back. Without a display it falls back to desktop notifications. It decides nothing:
snitchd owns the rules, the deadline and the default action.
"""

__all__: list[str] = []
