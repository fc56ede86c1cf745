"""One revocation index per credential, however many are issued at once (ACA-Py issue 3738, open).

ACA-Py 1.7 reserves a credential's revocation index by reading the registry's `next_index`, then
writing `next_index + 1`, in one wallet transaction that does not lock the row: two concurrent
issuances can read the same index and hand two credentials the same `cred_rev_id`, which leaves one
of them unrevocable. This plugin takes those reservations one at a time within an agent process.

Only the reservation: ACA-Py signs the credential (`Credential.create`, the expensive part) after the
transaction has committed, in a worker thread, from the registry state it read, so signings against
one registry may overlap (issuance by default: signing does not change the registry). An earlier
version of this plugin locked the whole of `_create_credential`, which made one registry a serial
point for signing; now concurrent issuances sign on as many cores as the agent has.

Loaded with `--plugin erx_agents.acapy_plugins.unique_revocation_ids`; remove it once upstream fixes
the reservation. It relies on `_create_credential` opening exactly one transaction (the reservation)
through `self.profile`, as ACA-Py 1.7.0 does (tests/unit/test_acapy_plugins.py pins the behaviour).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging

LOG = logging.getLogger(__name__)
_PATCHED = "_erx_reservations_serialised"


class _OneAtATime:
    """A lock a task may re-enter (a transaction opened inside the reservation must not wait on it)."""

    def __init__(self):
        self.lock = asyncio.Lock()
        self.owner: asyncio.Task | None = None


class _Reservation:
    """A transaction of the issuer's profile, entered only while no other reservation is open."""

    def __init__(self, transaction, gate: _OneAtATime):
        self._transaction, self._gate, self._holds = transaction, gate, False

    async def __aenter__(self):
        if self._gate.owner is not asyncio.current_task():
            await self._gate.lock.acquire()
            self._gate.owner, self._holds = asyncio.current_task(), True
        try:
            return await self._transaction.__aenter__()
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info):
        try:
            return await self._transaction.__aexit__(*exc_info)
        finally:
            self._release()

    def _release(self) -> None:
        if self._holds:
            self._holds, self._gate.owner = False, None
            self._gate.lock.release()


class _ReservingProfile:
    """The issuer's profile, its transactions taken one at a time; everything else passes through."""

    def __init__(self, profile, gate: _OneAtATime):
        self._profile, self._gate = profile, gate

    def transaction(self, *args, **kwargs):
        return _Reservation(self._profile.transaction(*args, **kwargs), self._gate)

    def __getattr__(self, name):
        return getattr(self._profile, name)


def serialise(cls) -> None:
    """Wrap `cls._create_credential` so that revocable creations never reserve an index at the same
    time; their signing still overlaps. Idempotent."""
    original = cls._create_credential
    if getattr(original, _PATCHED, False):
        return
    gate = _OneAtATime()

    @functools.wraps(original)
    async def _create_credential(self, *args, **kwargs):
        revocable = kwargs.get("rev_reg_def_id") or (len(args) > 6 and args[6])
        if not revocable:
            return await original(self, *args, **kwargs)
        # a view of this instance whose profile reserves one at a time (ACA-Py validates the profile
        # lazily through `profile`; the real one is validated here, the view's is marked done)
        view = copy.copy(self)
        view._profile, view._profile_validated = _ReservingProfile(self.profile, gate), True
        return await original(view, *args, **kwargs)

    setattr(_create_credential, _PATCHED, True)
    cls._create_credential = _create_credential


async def setup(context) -> None:
    from acapy_agent.anoncreds.revocation.revocation import AnonCredsRevocation

    serialise(AnonCredsRevocation)
    LOG.info("revocation index reservations serialised, signing left concurrent (ACA-Py issue 3738)")
