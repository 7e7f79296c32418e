"""snitchctl: the command line of snitch, and a terminal agent that answers prompts.

It runs in a user's terminal and imports only `snitch_common` (never the daemon's packet path).
"""
