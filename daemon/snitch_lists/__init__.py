"""snitch-lists: the block-list updater, an unprivileged program with network access.

snitchd never speaks IP; this program downloads each list, parses it (the untrusted bytes are
read here, never by root), and leaves the parsed copy for snitchd to read. It imports only
`snitch_common`.
"""
