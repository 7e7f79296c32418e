"""The connection log's writer: a child process of snitchd that owns every write to the log.

`parent` is snitchd's handle on it, `child` the process itself, `protocol` the two messages they
exchange, and `conntrack` the DESTROY-event reader whose byte counters the child joins to rows.
snitchd imports `parent` and `protocol` only; the child alone imports `conntrack`.
"""
