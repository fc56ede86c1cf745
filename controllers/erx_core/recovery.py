"""Start-up recovery that no single record can stop.

A controller settles, at start-up, what a crash or its own downtime left open. If one record cannot be
settled (a value that no longer maps, an agent record gone missing), that record is set aside — logged,
listed under `needs_attention` on the controller's `/health` and on `./erx status` — and the
controller starts and serves everything else.
"""

from __future__ import annotations

import logging
from typing import Awaitable


class SetAside(dict[str, str]):
    """Record id -> why recovery set it aside."""

    async def attempt(self, record_id: str, work: Awaitable[object], log: logging.Logger) -> bool:
        try:
            await work
        except Exception as exc:  # one bad record must not keep the organisation closed
            log.exception("record %s could not be recovered; set aside for the operator", record_id)
            self[record_id] = f"{type(exc).__name__}: {str(exc)[:200]}"
            return False
        self.pop(record_id, None)
        return True
