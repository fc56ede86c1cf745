"""The plugin that works around ACA-Py issue 3738: revocable credential creations never overlap
within one agent (so no two read the same revocation index); others are not held up."""

from __future__ import annotations

import asyncio

from erx_agents.acapy_plugins.unique_revocation_ids import serialise


class FakeRevocation:
    """`_create_credential` with ACA-Py's signature, reading and bumping a shared index with an await
    in between, as the unlocked wallet transaction does."""

    next_index = 1
    running = 0
    most_at_once = 0

    async def _create_credential(self, cred_def_id, attrs, offer, request, values, kind,
                                 rev_reg_def_id=None, tails_file_path=None):
        cls = type(self)
        cls.running += 1
        cls.most_at_once = max(cls.most_at_once, cls.running)
        index = cls.next_index
        await asyncio.sleep(0.001)
        cls.next_index = index + 1
        cls.running -= 1
        return "{}", str(index) if rev_reg_def_id else None


async def test_concurrent_revocable_creations_get_distinct_indexes():
    serialise(FakeRevocation)
    serialise(FakeRevocation)  # idempotent: loading twice does not nest locks
    revocation = FakeRevocation()
    results = await asyncio.gather(*(revocation._create_credential("cd", [], {}, {}, {}, None, "rr", "tails")
                                     for _ in range(50)))
    indexes = [rev_id for _, rev_id in results]
    assert len(set(indexes)) == 50 and FakeRevocation.most_at_once == 1


async def test_non_revocable_creations_are_not_serialised():
    class Plain(FakeRevocation):
        running = 0
        most_at_once = 0

    serialise(Plain)
    await asyncio.gather(*(Plain()._create_credential("cd", [], {}, {}, {}, None) for _ in range(5)))
    assert Plain.most_at_once == 5
