"""A desktop agent stand-in for the lab (run as root: snitchd checks no program of root's): it
registers as a desktop agent, prints each prompt it gets as a JSON line and answers it
"allow once". The real notifier needs a display; which agent is asked is what is tested here.
"""

import asyncio
import json
import sys

from snitch_common.agent import AgentService, register
from snitch_common.answers import parse_answer
from snitch_common.bus import PromptView
from snitch_common.client import Client


async def main() -> None:
    client = await Client.connect()
    queue: asyncio.Queue[PromptView] = asyncio.Queue()
    await register(client, AgentService(queue.put_nowait, lambda i, r: None), terminal=False)
    print(json.dumps({"registered": True}), flush=True)
    while True:
        prompt = await queue.get()
        print(json.dumps({"prompt": prompt.id, "dst": prompt.dst, "port": prompt.port}), flush=True)
        await client.answer_prompt(parse_answer(prompt.id, "allow", "once", "exact"))


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
