"""What every snitch program shares: errors, records, the rule language, the answer vocabulary,
the bus names and codecs, and a typed client of snitchd.

Light on purpose: nothing here imports NetfilterQueue, psutil or SQLite (a unit test checks), so
`snitchctl` and the desktop notifier start fast and never pull in the daemon's packet path.
"""

__version__ = "0.1.0"
