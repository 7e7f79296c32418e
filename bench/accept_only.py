"""The ceiling for snitch's design: a Python NetfilterQueue callback that only accepts.

Binds the queue, then installs exactly the kernel rules snitchd installs (snitchd.netfilter's
iptables plan: mangle OUTPUT conntrack NEW -> NFQUEUE --queue-bypass, plus the reject chain), and
accepts every packet until SIGTERM, then removes the rules and prints the packet count.
Run it only inside a network namespace you created (bench/connbench.py does):

    ip netns exec NS python bench/accept_only.py --queue 4242 [--asyncio]

`--asyncio` reads the queue the way snitchd's queue.py does (loop.add_reader, run(block=False)),
to tell the cost of the event loop apart from the cost of snitch's own work.
"""

import argparse
import asyncio
import signal
import sys

from netfilterqueue import NetfilterQueue

from snitchd.netfilter import IptablesBackend, NetSpec

COPY_RANGE = 256  # as snitchd.queue


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--queue", type=int, default=4242)
    parser.add_argument("--asyncio", action="store_true")
    args = parser.parse_args()
    seen = 0

    def accept(pkt):
        nonlocal seen
        seen += 1
        pkt.accept()

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    nfq = NetfilterQueue()
    nfq.bind(args.queue, accept, max_len=4096, range=COPY_RANGE)
    backend = IptablesBackend()
    try:
        backend.apply(backend.plan_install(NetSpec(args.queue, fail_open=True)))
        try:
            print("ready", flush=True)
            if args.asyncio:
                asyncio.run(_serve(nfq))
            else:
                nfq.run()
        except KeyboardInterrupt:
            pass
        finally:
            backend.apply(backend.plan_remove())
    finally:
        nfq.unbind()
    print(f"seen {seen}", flush=True)


async def _serve(nfq):
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(nfq.get_fd(), lambda: nfq.run(block=False))
    loop.add_signal_handler(signal.SIGTERM, done.set)
    try:
        await done.wait()
    finally:
        loop.remove_reader(nfq.get_fd())


if __name__ == "__main__":
    sys.exit(main())
