"""`erx demo`: bring the network up if needed, then check every component end to end.

The prescription flow (doctor issues, patient holds, pharmacy redeems) is added on top of this in
the end-to-end issue; until then the demo is the network smoke check.
"""

from __future__ import annotations

import json

from erx_core.network import Network
from erx_core.progress import Progress
from erx_core.settings import Settings


async def run_demo(settings: Settings, as_json: bool = False) -> int:
    net = Network(settings, Progress())
    await net.up()
    status = await net.status()
    if as_json:
        print(json.dumps(status.model_dump(mode="json"), indent=2))
    else:
        for name, comp in status.components.items():
            print(f"{'ok ' if comp.healthy else 'DOWN'}  {name:<16} {comp.detail}")
    return 0 if status.healthy else 1
