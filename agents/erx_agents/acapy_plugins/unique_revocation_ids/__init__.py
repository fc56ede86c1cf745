"""One revocation index per credential, however many are issued at once (ACA-Py issue 3738, open).

ACA-Py 1.7 reserves a credential's revocation index by reading the registry's `next_index`, then
writing `next_index + 1`, in one wallet transaction that does not lock the row: two concurrent
issuances can read the same index and hand two credentials the same `cred_rev_id`, which leaves one
of them unrevocable. The upstream workaround (a lock around credential creation) is applied here as
a plugin: within one agent process, revocable credentials are created one at a time. Credential
creation against one registry is serial anyway (the registry state is shared), so the lock costs
little; non-revocable credentials are not affected.

Loaded with `--plugin erx_agents.acapy_plugins.unique_revocation_ids`; remove it once upstream fixes
the reservation.
"""

from __future__ import annotations

import asyncio
import functools
import logging

LOG = logging.getLogger(__name__)
_PATCHED = "_erx_serialised"


def serialise(cls) -> None:
    """Wrap `cls._create_credential` so that revocable creations never overlap. Idempotent."""
    original = cls._create_credential
    if getattr(original, _PATCHED, False):
        return
    lock = asyncio.Lock()

    @functools.wraps(original)
    async def _create_credential(self, *args, **kwargs):
        revocable = kwargs.get("rev_reg_def_id") or (len(args) > 6 and args[6])
        if not revocable:
            return await original(self, *args, **kwargs)
        async with lock:
            return await original(self, *args, **kwargs)

    setattr(_create_credential, _PATCHED, True)
    cls._create_credential = _create_credential


async def setup(context) -> None:
    from acapy_agent.anoncreds.revocation.revocation import AnonCredsRevocation

    serialise(AnonCredsRevocation)
    LOG.info("revocable credential creation serialised (ACA-Py issue 3738)")
