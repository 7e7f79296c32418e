"""Several queue reader processes (issue 21): one per netfilter queue, each with its own
attributor and a copy of the rules, so new flows are decided on every core.

The main process keeps what is one for the machine: the store and the rule changes, D-Bus,
the prompts, the DNS queue, the connection log. It copies every rule change, learnt name and
place (lists, connected subnets) to each reader over a socket pair before it answers the
change, and a reader reads what is waiting there before each batch of packets, so the next
flow any reader decides sees the change. A flow no rule covers is handed to the main process
(`parent.Readers`), which asks once for all readers (twenty parallel connects spread over four
queues are one prompt) and sends the verdict back; the reader gives it. Decisions are logged by
the main process, which keeps the one-row-per-decision and retry bookkeeping for all readers.

With `queue_readers = 1` none of this runs: snitchd reads its one queue itself, as before.
"""
