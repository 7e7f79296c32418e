"""snitch: a per-application, interactive outbound firewall for Linux (the daemon side)."""

__version__ = "0.1.0"
