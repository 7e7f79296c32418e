"""A monitor client for the lab, run as a separate process (as any user, through setpriv):

  monitorclient.py rates                 subscribe to Rates; one JSON line per signal
  monitorclient.py apps PERIOD           the Apps answer as one JSON line
  monitorclient.py traffic PERIOD [APP]  the Traffic answer as one JSON line
  monitorclient.py rules                 watch RulesChanged; one JSON line per signal

`rates` and `rules` print {"subscribed": true} once the subscription is in, and run until
stdin closes.
"""

import asyncio
import dataclasses
import json
import sys

from dbus_fast import Variant

from snitch_common.client import Client


async def main() -> int:
    client = await Client.connect()
    try:
        mode = sys.argv[1]
        if mode in ("rates", "rules"):
            if mode == "rates":
                await client.monitor_rates(lambda rates: print(json.dumps(rates), flush=True))
            else:
                await client.watch_rules(
                    lambda news: print(json.dumps(dataclasses.asdict(news)), flush=True)
                )
            print(json.dumps({"subscribed": True}), flush=True)
            loop = asyncio.get_running_loop()
            stop = loop.create_future()
            loop.add_reader(sys.stdin.fileno(), lambda: stop.done() or stop.set_result(None))
            await stop
        elif mode == "apps":
            print(json.dumps(await client.apps({"period": Variant("s", sys.argv[2])})))
        else:
            query = {"period": Variant("s", sys.argv[2])}
            if len(sys.argv) > 3:
                query["app"] = Variant("s", sys.argv[3])
            print(json.dumps(await client.traffic(query)))
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
