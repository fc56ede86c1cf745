"""The plugin that works around ACA-Py issue 3738: revocable credential creations never reserve a
revocation index at the same time within one agent (so no two read the same index), while their
signing, after the reservation, still overlaps; other creations are not held up."""

from __future__ import annotations

import asyncio
import inspect

from erx_agents.acapy_plugins.unique_revocation_ids import serialise


class FakeProfile:
    def __init__(self, owner: type):
        self.owner = owner

    def transaction(self):
        return FakeTransaction(self.owner)

    def session(self):  # anything else the method uses passes through the plugin's view
        return "session"


class FakeTransaction:
    def __init__(self, owner: type):
        self.owner = owner

    async def __aenter__(self):
        self.owner.reserving += 1
        self.owner.most_reserving = max(self.owner.most_reserving, self.owner.reserving)
        return self

    async def __aexit__(self, *exc_info):
        self.owner.reserving -= 1


class FakeRevocation:
    """`_create_credential` shaped like ACA-Py 1.7.0's: one transaction reads and bumps a shared index
    (with an await in between, as the unlocked wallet transaction does); then the signing, awaited
    outside the transaction (ACA-Py runs it in a worker thread)."""

    next_index = 1
    reserving = most_reserving = 0
    signing = most_signing = 0

    def __init__(self):
        self._profile, self._profile_validated = FakeProfile(type(self)), False

    @property
    def profile(self):
        self._profile_validated = True
        return self._profile

    async def _create_credential(self, cred_def_id, attrs, offer, request, values, kind,
                                 rev_reg_def_id=None, tails_file_path=None):
        cls = type(self)
        index = None
        if rev_reg_def_id:
            async with self.profile.transaction():
                index = cls.next_index
                await asyncio.sleep(0.001)
                cls.next_index = index + 1
        assert self.profile.session() == "session"
        cls.signing += 1
        cls.most_signing = max(cls.most_signing, cls.signing)
        await asyncio.sleep(0.01)
        cls.signing -= 1
        return "{}", None if index is None else str(index)


async def test_concurrent_revocable_creations_get_distinct_indexes_and_still_sign_at_once():
    serialise(FakeRevocation)
    serialise(FakeRevocation)  # idempotent: loading twice does not nest locks
    revocation = FakeRevocation()
    results = await asyncio.gather(*(revocation._create_credential("cd", [], {}, {}, {}, None, "rr", "tails")
                                     for _ in range(50)))
    indexes = [rev_id for _, rev_id in results]
    assert len(set(indexes)) == 50
    assert FakeRevocation.most_reserving == 1, "two reservations overlapped"
    assert FakeRevocation.most_signing > 1, "signing is serialised too: one registry is a serial point"


async def test_a_failed_reservation_releases_the_lock():
    class Failing(FakeRevocation):
        calls = 0

        async def _create_credential(self, *args, **kwargs):
            type(self).calls += 1
            async with self.profile.transaction():
                if type(self).calls == 1:
                    raise RuntimeError("wallet busy")
            return "{}", "1"

    serialise(Failing)
    try:
        await Failing()._create_credential("cd", [], {}, {}, {}, None, "rr", "tails")
    except RuntimeError:
        pass
    assert await asyncio.wait_for(Failing()._create_credential("cd", [], {}, {}, {}, None, "rr", "tails"), 1)


async def test_non_revocable_creations_are_not_serialised():
    class Plain(FakeRevocation):
        signing = most_signing = 0

    serialise(Plain)
    await asyncio.gather(*(Plain()._create_credential("cd", [], {}, {}, {}, None) for _ in range(5)))
    assert Plain.most_signing == 5


def test_acapy_reserves_in_one_transaction_and_signs_after_it():
    """What the plugin relies on, read from the installed ACA-Py: an upgrade that changes it fails here."""
    from acapy_agent.anoncreds.revocation.revocation import AnonCredsRevocation

    source = inspect.getsource(AnonCredsRevocation._create_credential)
    assert source.count("self.profile.transaction()") == 1
    assert source.index("await txn.commit()") < source.index("run_in_executor")
    assert "self._profile" not in source, "the method reads the profile through `profile`, which the view replaces"
    init = inspect.getsource(AnonCredsRevocation.__init__)
    assert "self._profile = profile" in init and "self._profile_validated" in init
