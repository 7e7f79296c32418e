"""snitchd, the root daemon: it holds every new outbound flow, finds its process and decides.

Only the daemon and its log-writer child import this package; the CLI and the notifier speak to
it over D-Bus through `snitch_common`.
"""
