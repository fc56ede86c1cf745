"""PrescriptionToken and its ledger client against real anvil processes (no mocks)."""

import asyncio
import gzip
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pydantic
import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_utils import event_abi_to_log_topic, function_signature_to_4byte_selector, keccak, to_checksum_address
from eth_utils.abi import collapse_if_tuple

from erx_chain import DevAccounts, prepare_state_file
from erx_contracts import (
    ChainConfig,
    Prescriber,
    PrescriptionKey,
    PrescriptionTokenClient,
    TokenSpec,
    TxResult,
    load_artifact,
    new_prescription_key,
    sign_spend,
)
from erx_contracts import errors

pytest.register_assert_rewrite("tests.integration.conftest_chain")  # before importing it
from tests.integration.conftest_chain import AnvilNodes, Deployment, RunningNode, deploy_and_onboard  # noqa: E402

pytestmark = pytest.mark.integration
from tests.support import encodings

pytest_plugins = ["tests.integration.conftest_chain"]

HOUR = 3600
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
ZERO_ADDRESS = "0x" + "00" * 20


async def issue(
    doctor: PrescriptionTokenClient, redemptions: int = 1, *, starts: int = -60, ends: int = HOUR
) -> PrescriptionKey:
    """A fresh one-time key and its token, valid from now+starts to now+ends (chain time)."""
    key = new_prescription_key()
    now = await doctor.chain_time()
    await doctor.create(key.address, redemptions=redemptions, not_before=now + starts, not_after=now + ends)
    return key


def authorise(deployment: Deployment, key: PrescriptionKey, pharmacy: PrescriptionTokenClient, remaining: int) -> bytes:
    return sign_spend(
        key.private_key,
        chain_id=deployment.config.chain_id,
        contract_address=deployment.admin.contract_address,
        dispenser=pharmacy.address,
        remaining=remaining,
    )


def new_did(n_bytes: int = 16) -> str:
    """A fresh unqualified Indy DID: base58 of 16 random bytes (21-22 characters), or of 32 (43-44)."""
    while True:
        value, did = int.from_bytes(os.urandom(n_bytes)), ""
        while value:
            value, digit = divmod(value, 58)
            did = BASE58[digit] + did
        if len(did) >= {16: 21, 32: 43}[n_bytes]:  # not a rare small number's shorter encoding
            return did


def new_practice(deployment: Deployment) -> PrescriptionTokenClient:
    """A practice's fresh chain account (gas price 0: it needs no funds), not yet in the register."""
    return deployment.admin.for_account(Account.create())


async def block_time_of(client: PrescriptionTokenClient, result: TxResult) -> int:
    return int((await client.rpc("eth_getBlockByNumber", [hex(result.block_number), False]))["timestamp"], 16)


@pytest.fixture(scope="module")
async def block_time_deployment(anvil_nodes: AnvilNodes, actors: DevAccounts) -> AsyncIterator[Deployment]:
    """A second node mining one block per second, like QBFT."""
    node = await anvil_nodes.start(anvil_nodes.describe("anvil-1s-blocks", block_time=1.0))
    deployed = await deploy_and_onboard(node.rpc_url, actors)
    yield deployed
    await deployed.admin.close()
    node.stop()


# ---- spending ----------------------------------------------------------------------


async def test_n_redemptions_then_already_spent(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    key = await issue(doctor, redemptions=3)
    status = await pharmacy.status(key.address)
    assert (status.exists, status.issuer, status.remaining, status.cancelled) == (True, doctor.address, 3, False)
    for remaining in (2, 1, 0):
        await pharmacy.spend(key.private_key)
        assert (await pharmacy.status(key.address)).remaining == remaining
    with pytest.raises(errors.AlreadySpent) as refused:
        await pharmacy.spend(key.private_key)
    assert refused.value.token == key.address


@pytest.fixture(params=["automine", "1s-blocks"])
def race_deployment(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue("deployment" if request.param == "automine" else "block_time_deployment")


async def test_twenty_pharmacies_race_for_a_single_use_token(race_deployment: Deployment) -> None:
    key = await issue(race_deployment.doctors[0])
    # Each pharmacy on its own connection, as separate organisations would be.
    pharmacies = [
        await PrescriptionTokenClient.connect(race_deployment.config, p.account) for p in race_deployment.pharmacies
    ]
    try:
        results = await asyncio.gather(*(p.spend(key.private_key) for p in pharmacies), return_exceptions=True)
    finally:
        for pharmacy in pharmacies:
            await pharmacy.close()
    winners = [r for r in results if isinstance(r, TxResult)]
    losers = [r for r in results if not isinstance(r, TxResult)]
    assert len(pharmacies) == 20 and len(winners) == 1
    assert all(isinstance(e, errors.AlreadySpent) for e in losers), losers
    assert (await race_deployment.admin.status(key.address)).remaining == 0
    mined = sum(e.tx_hash is not None for e in losers)
    print(f"\nrace: {mined} of 19 losing spends were mined and reverted, {19 - mined} refused by the estimate")


async def test_spends_that_meet_in_one_block_fail_with_typed_errors(deployment: Deployment) -> None:
    """The estimate cannot catch a race decided inside one block: the mined reverts are decoded too."""
    key = await issue(deployment.doctors[0])
    rpc = deployment.admin.rpc
    await rpc("evm_setAutomine", [False])
    try:
        spends = [asyncio.create_task(p.spend(key.private_key)) for p in deployment.pharmacies[:3]]
        async with asyncio.timeout(10):
            while int((await rpc("txpool_status", []))["pending"], 16) < 3:
                await asyncio.sleep(0.02)
        await rpc("evm_mine", [])
    finally:
        await rpc("evm_setAutomine", [True])
    results = await asyncio.gather(*spends, return_exceptions=True)
    losers = [r for r in results if not isinstance(r, TxResult)]
    assert len(losers) == 2 and all(isinstance(e, errors.AlreadySpent) and e.tx_hash for e in losers), results


async def test_a_spend_signs_for_the_count_the_pharmacy_read_and_re_reads_only_when_it_is_stale(
        deployment: Deployment) -> None:
    key = await issue(deployment.doctors[0], redemptions=3)
    pharmacy = deployment.pharmacies[0]
    await pharmacy.spend(key.private_key, expected_remaining=3)  # the count read at verification
    assert (await pharmacy.status(key.address)).remaining == 2
    await pharmacy.spend(key.private_key, expected_remaining=3)  # stale: refused by the estimate, re-read
    assert (await pharmacy.status(key.address)).remaining == 1
    await pharmacy.spend(key.private_key, expected_remaining=1)
    with pytest.raises(errors.AlreadySpent):
        await pharmacy.spend(key.private_key, expected_remaining=1)


async def test_concurrent_spends_of_a_multi_use_token_re_sign_on_stale_count(deployment: Deployment) -> None:
    key = await issue(deployment.doctors[0], redemptions=3)
    results = await asyncio.gather(
        *(p.spend(key.private_key) for p in deployment.pharmacies[:5]), return_exceptions=True
    )
    assert sum(isinstance(r, TxResult) for r in results) == 3
    assert all(isinstance(r, (TxResult, errors.AlreadySpent, errors.StaleSignature)) for r in results), results
    assert (await deployment.admin.status(key.address)).remaining == 0


# ---- refusals ------------------------------------------------------------------------


async def test_signature_of_another_key_is_refused(deployment: Deployment) -> None:
    pharmacy = deployment.pharmacies[0]
    key = await issue(deployment.doctors[0])
    forged = authorise(deployment, new_prescription_key(), pharmacy, remaining=1)
    with pytest.raises(errors.BadSignature):
        await pharmacy.spend_with_signature(key.address, 1, forged)


async def test_signature_for_another_pharmacy_is_refused(deployment: Deployment) -> None:
    intended, thief = deployment.pharmacies[0], deployment.pharmacies[1]
    key = await issue(deployment.doctors[0])
    with pytest.raises(errors.BadSignature):
        await thief.spend_with_signature(key.address, 1, authorise(deployment, key, intended, remaining=1))
    await intended.spend_with_signature(key.address, 1, authorise(deployment, key, intended, remaining=1))


async def test_signature_for_another_chain_or_contract_is_refused(deployment: Deployment) -> None:
    pharmacy = deployment.pharmacies[0]
    key = await issue(deployment.doctors[0])
    common = {"dispenser": pharmacy.address, "remaining": 1}
    other_chain = sign_spend(key.private_key, chain_id=1, contract_address=pharmacy.contract_address, **common)
    other_contract = sign_spend(
        key.private_key, chain_id=pharmacy.config.chain_id, contract_address=key.address, **common
    )
    for signature in (other_chain, other_contract):
        with pytest.raises(errors.BadSignature):
            await pharmacy.spend_with_signature(key.address, 1, signature)


async def test_replayed_signature_is_refused(deployment: Deployment) -> None:
    pharmacy = deployment.pharmacies[0]
    key = await issue(deployment.doctors[0], redemptions=2)
    signature = authorise(deployment, key, pharmacy, remaining=2)
    await pharmacy.spend_with_signature(key.address, 2, signature)
    with pytest.raises(errors.StaleSignature) as stale:
        await pharmacy.spend_with_signature(key.address, 2, signature)
    assert stale.value.remaining == 1
    with pytest.raises(errors.BadSignature):  # claiming the current count does not help either
        await pharmacy.spend_with_signature(key.address, 1, signature)
    assert (await pharmacy.status(key.address)).remaining == 1


async def test_malleable_or_malformed_signature_is_refused(deployment: Deployment) -> None:
    pharmacy = deployment.pharmacies[0]
    key = await issue(deployment.doctors[0])
    signature = authorise(deployment, key, pharmacy, remaining=1)
    r, s, v = signature[:32], int.from_bytes(signature[32:64]), signature[64]
    # (r, n - s, flipped v) recovers the same key: the contract only accepts the low-s form.
    twin = r + (SECP256K1_N - s).to_bytes(32) + bytes([55 - v])
    for bad in (twin, signature[:64], signature + b"\0"):
        with pytest.raises(errors.BadSignature):
            await pharmacy.spend_with_signature(key.address, 1, bad)
    await pharmacy.spend_with_signature(key.address, 1, signature)


async def test_cancelled_token_cannot_be_spent(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    key = await issue(doctor, redemptions=2)
    await doctor.cancel(key.address)
    assert (await pharmacy.status(key.address)).cancelled
    with pytest.raises(errors.Cancelled):
        await pharmacy.spend(key.private_key)
    with pytest.raises(errors.Cancelled):
        await doctor.cancel(key.address)


async def test_spent_token_cannot_be_cancelled(deployment: Deployment) -> None:
    doctor = deployment.doctors[0]
    key = await issue(doctor)
    await deployment.pharmacies[0].spend(key.private_key)
    with pytest.raises(errors.AlreadySpent):
        await doctor.cancel(key.address)


async def test_validity_window(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    expired = await issue(doctor, starts=-2 * HOUR, ends=-HOUR)
    with pytest.raises(errors.Expired) as refused:
        await pharmacy.spend(expired.private_key)
    assert refused.value.notAfter == (await pharmacy.status(expired.address)).not_after
    early = await issue(doctor, starts=HOUR, ends=2 * HOUR)
    with pytest.raises(errors.NotYetValid):
        await pharmacy.spend(early.private_key)
    with pytest.raises(errors.InvalidValidity):
        await issue(doctor, starts=HOUR, ends=0)


async def test_unknown_and_duplicate_tokens(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    never_created = new_prescription_key()
    assert not (await pharmacy.status(never_created.address)).exists
    with pytest.raises(errors.UnknownToken):
        await pharmacy.spend(never_created.private_key)
    with pytest.raises(errors.UnknownToken):
        await doctor.cancel(never_created.address)
    key = await issue(doctor)
    with pytest.raises(errors.TokenExists):
        await deployment.doctors[1].create(key.address, not_before=0, not_after=2**32 - 1)
    with pytest.raises(pydantic.ValidationError):  # zero or > uint16 redemptions never reach the chain
        await doctor.create(new_prescription_key().address, redemptions=0, not_before=0, not_after=1)


async def test_accounts_without_roles_are_refused(deployment: Deployment) -> None:
    key = await issue(deployment.doctors[0])
    with pytest.raises(errors.NotIssuer):
        await deployment.outsider_doctor.create(new_prescription_key().address, not_before=0, not_after=2**32 - 1)
    with pytest.raises(errors.NotIssuer):  # a pharmacy is not an issuer
        await deployment.pharmacies[0].create(new_prescription_key().address, not_before=0, not_after=2**32 - 1)
    with pytest.raises(errors.NotDispenser):
        await deployment.outsider_pharmacy.spend(key.private_key)
    with pytest.raises(errors.NotDispenser):  # a doctor is not a dispenser
        await deployment.doctors[0].spend(key.private_key)
    with pytest.raises(errors.NotAdmin):
        await deployment.doctors[0].add_issuer(deployment.outsider_doctor.address)


async def test_only_the_creating_issuer_can_cancel(deployment: Deployment) -> None:
    key = await issue(deployment.doctors[0])
    with pytest.raises(errors.NotTokenIssuer):
        await deployment.doctors[1].cancel(key.address)
    with pytest.raises(errors.NotIssuer):
        await deployment.pharmacies[0].cancel(key.address)
    with pytest.raises(errors.NotIssuer):
        await deployment.admin.cancel(key.address)


async def test_offboarded_issuer_and_dispenser_lose_their_rights(deployment: Deployment) -> None:
    admin, doctor, pharmacy = deployment.admin, deployment.outsider_doctor, deployment.outsider_pharmacy
    await admin.add_issuer(doctor.address)
    await admin.add_dispenser(pharmacy.address)
    key = await issue(doctor, redemptions=2)
    await pharmacy.spend(key.private_key)
    await admin.remove_issuer(doctor.address)
    await admin.remove_dispenser(pharmacy.address)
    assert not await admin.is_issuer(doctor.address) and not await admin.is_dispenser(pharmacy.address)
    with pytest.raises(errors.NotIssuer):
        await doctor.create(new_prescription_key().address, not_before=0, not_after=2**32 - 1)
    with pytest.raises(errors.NotIssuer):
        await doctor.cancel(key.address)
    with pytest.raises(errors.NotDispenser):
        await pharmacy.spend(key.private_key)
    await deployment.pharmacies[0].spend(key.private_key)  # its tokens stay redeemable elsewhere


async def test_admin_handover_is_two_step(chain: RunningNode, actors: DevAccounts) -> None:
    async with await PrescriptionTokenClient.deploy(ChainConfig(rpc_url=chain.rpc_url), actors.authority) as old:
        new = old.for_account(actors.doctors[0])
        await old.transfer_admin(new.address)
        assert await old.admin() == old.address and await old.pending_admin() == new.address
        with pytest.raises(errors.NotPendingAdmin):
            await old.for_account(actors.doctors[1]).accept_admin()
        await new.accept_admin()
        assert await new.admin() == new.address and await new.pending_admin() is None
        with pytest.raises(errors.NotAdmin):
            await old.add_issuer(actors.doctors[1].address)
        await new.add_issuer(actors.doctors[1].address)


# ---- register of trusted prescribers --------------------------------------------------


async def test_prescriber_is_added_removed_and_re_added(deployment: Deployment) -> None:
    admin, practice, did = deployment.admin, new_practice(deployment), new_did()
    assert not await admin.is_trusted_prescriber(did) and await admin.prescriber(did) is None
    count = await admin.prescriber_count()

    added = await admin.add_prescriber(did, practice.address)
    since = await block_time_of(admin, added)
    assert await admin.is_trusted_prescriber(did)
    assert await admin.prescriber(did) == Prescriber(did=did, account=practice.address, since=since, active=True)
    assert await admin.prescriber_count() == count + 1
    assert await admin.is_issuer(practice.address)
    key = await issue(practice, redemptions=2)
    with pytest.raises(errors.PrescriberAlreadyActive) as active:  # a retry, or another account: refused
        await admin.add_prescriber(did, Account.create().address)
    assert (active.value.did, active.value.account) == (did, practice.address)

    await admin.remove_prescriber(did)
    assert not await admin.is_trusted_prescriber(did)
    assert await admin.prescriber(did) == Prescriber(did=did, account=practice.address, since=since, active=False)
    assert not await admin.is_issuer(practice.address)
    with pytest.raises(errors.NotIssuer):
        await practice.create(new_prescription_key().address, not_before=0, not_after=2**32 - 1)
    with pytest.raises(errors.NotIssuer):
        await practice.cancel(key.address)
    with pytest.raises(errors.PrescriberInactive):
        await admin.remove_prescriber(did)

    # Re-admitted with a new account: the old one stays without the issuer role.
    moved = new_practice(deployment)
    again = await admin.add_prescriber(did, moved.address)
    entry = await admin.prescriber(did)
    assert entry == Prescriber(did=did, account=moved.address, since=await block_time_of(admin, again), active=True)
    assert entry.since >= since and await admin.is_trusted_prescriber(did)
    assert await admin.is_issuer(moved.address) and not await admin.is_issuer(practice.address)
    assert await admin.prescriber_count() == count + 1  # same entry, same place
    await issue(moved)
    with pytest.raises(errors.NotTokenIssuer):  # the old account's tokens are not the new account's
        await moved.cancel(key.address)


async def test_register_change_and_issuer_role_are_one_transaction(deployment: Deployment) -> None:
    admin, practice, did = deployment.admin, new_practice(deployment), new_did()
    events = {e["name"]: "0x" + event_abi_to_log_topic(e).hex() for e in load_artifact().abi if e["type"] == "event"}
    account_topic = "0x" + "00" * 12 + practice.address[2:].lower()

    async def logged(result: TxResult) -> list[str]:
        receipt = await admin.rpc("eth_getTransactionReceipt", [result.tx_hash])
        assert all(log["topics"][1] == account_topic for log in receipt["logs"])
        return [log["topics"][0] for log in receipt["logs"]]

    added = await admin.add_prescriber(did, practice.address)
    assert await logged(added) == [events["IssuerAdded"], events["PrescriberAdded"]]
    removed = await admin.remove_prescriber(did)
    assert await logged(removed) == [events["IssuerRemoved"], events["PrescriberRemoved"]]

    # State as of each block: both changes appear in the block of their transaction, neither before.
    data = {
        "trusted": "0x" + (function_signature_to_4byte_selector("isTrustedPrescriber(string)")
                           + abi_encode(["string"], [did])).hex(),
        "issuer": "0x" + (function_signature_to_4byte_selector("isIssuer(address)")
                          + abi_encode(["address"], [practice.address])).hex(),
    }

    async def state(block: int) -> tuple[bool, bool]:
        answers = [await admin.rpc("eth_call", [{"to": admin.contract_address, "data": d}, hex(block)])
                   for d in data.values()]
        return tuple(int(a, 16) == 1 for a in answers)

    assert await state(added.block_number - 1) == (False, False)
    assert await state(added.block_number) == (True, True)
    assert await state(removed.block_number - 1) == (True, True)
    assert await state(removed.block_number) == (False, False)

    # A refused addition changes neither.
    holder, other = new_did(), new_practice(deployment)
    await admin.add_prescriber(holder, other.address)
    with pytest.raises(errors.AccountInUse):
        await admin.add_prescriber(did, other.address)
    assert not await admin.is_trusted_prescriber(did)
    assert (await admin.prescriber(did)).account == practice.address


async def test_only_the_admin_governs_the_register(deployment: Deployment) -> None:
    admin, did = deployment.admin, new_did()
    for caller in (deployment.doctors[0], deployment.pharmacies[0], deployment.outsider_doctor):
        with pytest.raises(errors.NotAdmin) as refused:
            await caller.add_prescriber(did, caller.address)
        assert refused.value.caller == caller.address
    await admin.add_prescriber(did, new_practice(deployment).address)
    with pytest.raises(errors.NotAdmin):
        await deployment.doctors[0].remove_prescriber(did)
    assert await admin.is_trusted_prescriber(did)


async def test_register_refuses_malformed_dids_and_shared_accounts(deployment: Deployment) -> None:
    admin = deployment.admin
    account = new_practice(deployment).address
    did = new_did()
    for bad in ("", "x" * 65, f"did:sov:{did}", f"{did} ", "0" + did[1:], "I" + did[1:], "é" + did[1:]):
        with pytest.raises(errors.InvalidDid) as refused:
            await admin.add_prescriber(bad, account)
        assert refused.value.did == bad
        assert not await admin.is_trusted_prescriber(bad)
    with pytest.raises(errors.ZeroAddress):
        await admin.add_prescriber(did, ZERO_ADDRESS)
    with pytest.raises(errors.UnknownPrescriber) as unknown:
        await admin.remove_prescriber(did)
    assert unknown.value.did == did

    longest = "".join(BASE58[b % 58] for b in os.urandom(64))  # MAX_DID_LENGTH bytes
    await admin.add_prescriber(longest, account)
    assert (await admin.prescriber(longest)).account == account

    # One account, one active practice: refused while `longest` holds it, free again once offboarded.
    with pytest.raises(errors.AccountInUse) as in_use:
        await admin.add_prescriber(did, account)
    assert (in_use.value.account, in_use.value.did) == (account, longest)
    await admin.remove_prescriber(longest)
    await admin.add_prescriber(did, account)
    with pytest.raises(errors.AccountInUse):  # now the offboarded one cannot take it back
        await admin.add_prescriber(longest, account)
    assert await admin.is_issuer(account) and await admin.is_trusted_prescriber(did)


async def test_pharmacies_page_through_the_register(deployment: Deployment) -> None:
    admin = deployment.admin
    start = await admin.prescriber_count()  # earlier tests' entries come first
    practices = [(new_did(), new_practice(deployment).address) for _ in range(5)]
    for did, account in practices:  # one by one: the register keeps the order of first registration
        await admin.add_prescriber(did, account)
    await admin.remove_prescriber(practices[1][0])
    practices.append((new_did(), new_practice(deployment).address))  # after a removal: still appended
    await admin.add_prescriber(*practices[5])
    assert await admin.prescriber_count() == start + 6

    rows = await admin.prescribers(start, 100)
    assert [(p.did, p.account) for p in rows] == practices
    assert [p.active for p in rows] == [True, False, True, True, True, True]
    pages = [await admin.prescribers(offset, 2) for offset in range(start, start + 6, 2)]
    assert [len(page) for page in pages] == [2, 2, 2] and [p for page in pages for p in page] == rows
    assert [await admin.prescriber_at(start + i) for i in range(6)] == rows
    assert rows == [await admin.prescriber(p.did) for p in rows]
    everything = await admin.prescribers(0, start + 6)
    assert everything[start:] == rows and len(everything) == start + 6
    assert [p.active for p in everything] == [await admin.is_trusted_prescriber(p.did) for p in everything]

    assert await admin.prescribers(start + 6, 100) == [] and await admin.prescribers(start, 0) == []
    assert await admin.prescribers(2**255, 2**255) == []
    with pytest.raises(errors.IndexOutOfRange) as past_end:
        await admin.prescriber_at(start + 6)
    assert (past_end.value.index, past_end.value.count) == (start + 6, start + 6)
    with pytest.raises(ValueError):
        await admin.prescribers(-1)

    await admin.add_prescriber(practices[1][0], practices[1][1])  # re-admitted: keeps its place
    assert (await admin.prescriber_at(start + 1)).active and await admin.prescriber_count() == start + 6


async def test_offboarded_practice_tokens_stay_on_chain_and_spendable(deployment: Deployment) -> None:
    """The contract does not judge trust when spending: pharmacies refuse such tokens by the register."""
    admin, pharmacy, practice, did = deployment.admin, deployment.pharmacies[0], new_practice(deployment), new_did()
    await admin.add_prescriber(did, practice.address)
    key = await issue(practice, redemptions=3)
    before = await pharmacy.status(key.address)
    await admin.remove_prescriber(did)
    assert await pharmacy.status(key.address) == before  # untouched: not cancelled, same count
    assert not await pharmacy.is_trusted_prescriber(did)
    with pytest.raises(errors.NotIssuer):  # nor can the offboarded practice cancel it any more
        await practice.cancel(key.address)
    await pharmacy.spend(key.private_key)
    assert (await pharmacy.status(key.address)).remaining == 2
    await admin.add_prescriber(did, practice.address)  # re-admitted: its token is still there
    await practice.cancel(key.address)
    with pytest.raises(errors.Cancelled):
        await pharmacy.spend(key.private_key)


async def test_gas_of_register_operations(deployment: Deployment) -> None:
    admin = deployment.admin
    did, long_did = new_did(), new_did(32)
    assert 21 <= len(did) <= 22 and 43 <= len(long_did) <= 44
    add = await admin.add_prescriber(did, new_practice(deployment).address)
    remove = await admin.remove_prescriber(did)
    re_add = await admin.add_prescriber(did, new_practice(deployment).address)
    add_long = await admin.add_prescriber(long_did, new_practice(deployment).address)
    remove_long = await admin.remove_prescriber(long_did)
    gas = {"addPrescriber": add, "removePrescriber": remove, "re-add": re_add,
           "addPrescriber (44-char DID)": add_long, "removePrescriber (44-char DID)": remove_long}
    print("\ngas: " + ", ".join(f"{op} {result.gas_used}" for op, result in gas.items()))
    assert max(r.gas_used for r in gas.values()) < 250_000


# ---- batches, gas, nonces, configuration ---------------------------------------------


async def test_batch_create_of_500_tokens(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[1], deployment.pharmacies[0]
    now = await doctor.chain_time()
    keys = [new_prescription_key() for _ in range(500)]
    specs = [
        TokenSpec(token=k.address, redemptions=1 + i % 3, not_before=now - 60, not_after=now + HOUR)
        for i, k in enumerate(keys)
    ]
    result = await doctor.create_batch(specs)
    print(f"\ngas: createBatch(500) {result.gas_used} ({result.gas_used // 500} per token)")
    for i in (0, 249, 499):
        status = await pharmacy.status(keys[i].address)
        assert (status.issuer, status.remaining) == (doctor.address, 1 + i % 3)
    await pharmacy.spend(keys[499].private_key)

    fresh = new_prescription_key()
    again = [TokenSpec(token=fresh.address, not_before=0, not_after=now + HOUR), specs[7]]
    with pytest.raises(errors.TokenExists) as refused:
        await doctor.create_batch(again)
    assert refused.value.token == keys[7].address
    assert not (await pharmacy.status(fresh.address)).exists  # all or nothing


async def test_gas_per_operation(deployment: Deployment) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    key, now = new_prescription_key(), await doctor.chain_time()
    create = await doctor.create(key.address, redemptions=2, not_before=now - 60, not_after=now + HOUR)
    spend = await pharmacy.spend(key.private_key)
    spend_last = await pharmacy.spend(key.private_key)
    other = await issue(doctor)
    cancel = await doctor.cancel(other.address)
    gas = {"create": create, "spend": spend, "last spend": spend_last, "cancel": cancel}
    print("\ngas: " + ", ".join(f"{op} {result.gas_used}" for op, result in gas.items()))
    assert max(create.gas_used, spend.gas_used, cancel.gas_used) < 80_000


async def test_many_transactions_in_flight_from_one_account(deployment: Deployment) -> None:
    doctor = deployment.doctors[0]
    keys = [new_prescription_key() for _ in range(30)]
    now = await doctor.chain_time()
    results = await asyncio.gather(*(doctor.create(k.address, not_before=0, not_after=now + HOUR) for k in keys))
    assert len({r.tx_hash for r in results}) == 30


async def test_nonce_resyncs_after_a_foreign_transaction(deployment: Deployment, actors: DevAccounts) -> None:
    admin = deployment.admin  # its nonce is tracked locally since the onboarding
    async with await PrescriptionTokenClient.connect(deployment.config, actors.authority) as elsewhere:
        await elsewhere.remove_dispenser(deployment.outsider_pharmacy.address)
    await admin.remove_dispenser(deployment.outsider_pharmacy.address)  # first try hits "nonce too low"


async def test_gas_priced_chain(deployment: Deployment) -> None:
    gwei = 10**9
    config = deployment.config.model_copy(update={"gas_price_wei": gwei})
    pharmacy = deployment.pharmacies[2]
    key = await issue(deployment.doctors[0])
    funds = 10**18
    await deployment.admin.rpc("anvil_setBalance", [pharmacy.address, hex(funds)])
    async with await PrescriptionTokenClient.connect(config, pharmacy.account) as priced:
        result = await priced.spend(key.private_key)
        balance = int(await priced.rpc("eth_getBalance", [pharmacy.address, "latest"]), 16)
        assert balance == funds - result.gas_used * gwei
        # One-time keys never need funds.
        assert int(await priced.rpc("eth_getBalance", [key.address, "latest"]), 16) == 0
        broke = priced.for_account(deployment.pharmacies[3].account)
        with pytest.raises(errors.RpcError):
            await broke.spend((await issue(deployment.doctors[0])).private_key)


async def test_endpoint_must_match_the_configuration(chain: RunningNode, actors: DevAccounts) -> None:
    with pytest.raises(errors.ChainConfigError):
        await PrescriptionTokenClient.connect(ChainConfig(rpc_url=chain.rpc_url, chain_id=31337), actors.authority)
    no_code = ChainConfig(rpc_url=chain.rpc_url, contract_address=actors.doctors[0].address)
    with pytest.raises(errors.ChainConfigError):
        await PrescriptionTokenClient.connect(no_code, actors.authority)
    with pytest.raises(errors.ChainUnavailable):
        await PrescriptionTokenClient.connect(
            ChainConfig(rpc_url="http://127.0.0.1:9", request_timeout=2), actors.authority
        )


# ---- persistence ---------------------------------------------------------------------


async def test_state_survives_node_restarts(anvil_nodes: AnvilNodes, actors: DevAccounts, tmp_path: Path) -> None:
    state = tmp_path / "chain-state.json"
    node = anvil_nodes.describe("anvil-persistent", state_file=state, state_interval=1)
    running = await anvil_nodes.start(node)
    deployed = await deploy_and_onboard(running.rpc_url, actors)
    doctor, pharmacy = deployed.doctors[0], deployed.pharmacies[0]
    key = await issue(doctor, redemptions=3, ends=24 * HOUR)
    await pharmacy.spend(key.private_key)
    await deployed.admin.close()

    # SIGTERM: anvil dumps the state on exit.
    assert running.stop(signal.SIGTERM) == 0
    assert prepare_state_file(state) == "loaded"
    running = await anvil_nodes.start(node)
    async with await PrescriptionTokenClient.connect(deployed.config, pharmacy.account) as pharmacy:
        assert (await pharmacy.status(key.address)).remaining == 2
        await pharmacy.spend(key.private_key)
        await asyncio.sleep(2.5)  # > state_interval: the periodic dump has run since

    # SIGKILL: only the periodic dump survives.
    running.stop(signal.SIGKILL)
    assert prepare_state_file(state) == "loaded"
    await anvil_nodes.start(node)
    async with await PrescriptionTokenClient.connect(deployed.config, pharmacy.account) as pharmacy:
        status = await pharmacy.status(key.address)
        assert (status.remaining, status.issuer) == (1, doctor.address)
        await pharmacy.spend(key.private_key)
        with pytest.raises(errors.AlreadySpent):
            await pharmacy.spend(key.private_key)


def test_truncated_state_file_falls_back_to_the_last_good_copy(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    assert prepare_state_file(state) == "fresh"
    state.write_text('{"best_block_number": 1}')
    assert prepare_state_file(state) == "loaded"
    state.write_text('{"best_block_number": 2, "acc')  # a SIGKILL during anvil's in-place dump
    assert prepare_state_file(state) == "restored-backup"
    assert json.loads(state.read_text()) == {"best_block_number": 1}
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == 1


# ---- privacy (keep last: it audits everything the tests above wrote) --------------------

PATIENT = {
    "name": "Erika Mustermann",
    "birth_date": "1964-08-12",
    "insurance_number": "A123456780",
    "address": "Heidestrasse 17, 51147 Koeln",
}
PRESCRIPTION = {"id": "160.000.100.000.001.05", "medication": "Ibuprofen 600 mg", "pzn": "01016107", "dosage": "1-0-1"}


async def test_chain_holds_no_patient_or_prescription_data(
    chain: RunningNode, deployment: Deployment, actors: DevAccounts
) -> None:
    doctor, pharmacy = deployment.doctors[0], deployment.pharmacies[0]
    # The flow around token creation: the doctor's credential carries patient, prescription and key...
    key = new_prescription_key()
    credential = {"patient": PATIENT, "prescription": PRESCRIPTION, "redemption_key": key.private_key}
    now = await doctor.chain_time()
    await doctor.create(key.address, redemptions=2, not_before=now, not_after=now + 28 * 24 * HOUR)
    await pharmacy.spend(credential["redemption_key"])  # ...and the pharmacy spends from the presented credential.
    await doctor.cancel(key.address)

    rpc = deployment.admin.rpc
    latest = int(await rpc("eth_blockNumber", []), 16)
    blocks = [await rpc("eth_getBlockByNumber", [hex(n), True]) for n in range(latest + 1)]
    txs = [tx for block in blocks for tx in block["transactions"]]
    diff_tracer = {"tracer": "prestateTracer", "tracerConfig": {"diffMode": True}}
    traces = [await rpc("debug_traceTransaction", [tx["hash"], diff_tracer]) for tx in txs]
    logs = await rpc("eth_getLogs", [{"fromBlock": "0x0", "toBlock": hex(latest)}])
    dump = gzip.decompress(bytes.fromhex((await rpc("anvil_dumpState", []))[2:]))

    # 1. No encoding of any personal or prescription value, nor the one-time private key, anywhere.
    haystack = b"".join(
        [dump, json.dumps(txs).encode(), json.dumps(traces).encode(), json.dumps(logs).encode()]
        + [bytes.fromhex(tx["input"][2:]) for tx in txs]
        + [bytes.fromhex(log["data"][2:]) for log in logs]
    ).lower()
    secrets = [*PATIENT.values(), *PRESCRIPTION.values()]
    for secret in secrets:
        for needle in encodings(secret):
            assert needle.lower() not in haystack, f"{secret!r} found on chain"
    private_key = bytes.fromhex(key.private_key[2:])
    assert private_key not in haystack and private_key.hex().encode() not in haystack

    # 2. Every storage write to a PrescriptionToken is a count, timestamp, flag or actor address, or an
    #    entry of the register of trusted prescribers: a practice's public DID and its account.
    deployer = actors.authority.address.lower()
    receipts = [await rpc("eth_getTransactionReceipt", [tx["hash"]]) for tx in txs]
    contracts = {
        r["contractAddress"].lower() for r in receipts if r["contractAddress"] and r["from"].lower() == deployer
    }
    actor_addresses = {a.address for a in (actors.authority, *actors.doctors, *actors.pharmacies)}
    doctor_addresses = {a.address for a in actors.doctors}
    events = {"0x" + event_abi_to_log_topic(e).hex(): e for e in load_artifact().abi if e["type"] == "event"}
    created = next(topic for topic, e in events.items() if e["name"] == "TokenCreated")
    token_addresses = {
        to_checksum_address("0x" + log["topics"][1][-40:]) for log in logs if log["topics"][0] == created
    }
    prescriber_added = next(topic for topic, e in events.items() if e["name"] == "PrescriberAdded")
    register = [
        (abi_decode(["string"], bytes.fromhex(log["data"][2:]))[0], to_checksum_address("0x" + log["topics"][1][-40:]))
        for log in logs
        if log["address"].lower() in contracts and log["topics"][0] == prescriber_added
    ]
    dids = {did for did, _ in register}
    assert all(0 < len(did) <= 64 and set(did) <= set(BASE58) for did in dids), dids
    practice_accounts = {account for _, account in register}
    issuer_addresses = doctor_addresses | practice_accounts
    role_slots = {
        keccak(abi_encode(["address", "uint256"], [a, s])): s
        for a in actor_addresses | practice_accounts
        for s in (2, 3)
    }
    token_slots = {keccak(abi_encode(["address", "uint256"], [t, 4])) for t in token_addresses}
    # Solidity's layout: _practices (slot 5) by keccak(did . 5); _dids (slot 6): its length there, entry i at
    # keccak(6) + i holding a short string inline (data, 2 * length) or a long one's 2 * length + 1, its data
    # at keccak(entry slot) + word; _activeDidOf (slot 7) by keccak(account . 7).
    practice_slots = {keccak(did.encode() + (5).to_bytes(32)) for did in dids}
    first_entry = int.from_bytes(keccak((6).to_bytes(32)))
    entry_slots = {(first_entry + i).to_bytes(32) for i in range(len(register))}
    data_slots = {(int.from_bytes(keccak(e)) + w).to_bytes(32) for e in entry_slots for w in (0, 1)}
    entry_values = {
        int.from_bytes(did.encode().ljust(31, b"\0") + bytes([2 * len(did)])) if len(did) < 32 else 2 * len(did) + 1
        for did in dids
    }
    data_values = {
        int.from_bytes(did.encode()[w : w + 32].ljust(32, b"\0")) for did in dids if len(did) >= 32 for w in (0, 32)
    }
    active_did_slots = {keccak(abi_encode(["address", "uint256"], [a, 7])) for a in practice_accounts}
    writes = [
        (slot, value)
        for trace in traces
        for account, post in trace["post"].items()
        if account.lower() in contracts
        for slot, value in post.get("storage", {}).items()
    ]
    assert writes and token_slots
    for slot_hex, value_hex in writes:
        slot, value = bytes.fromhex(slot_hex[2:]), int(value_hex, 16)
        if int.from_bytes(slot) in (0, 1):  # admin, pendingAdmin
            assert value == 0 or to_checksum_address(value.to_bytes(20)) in actor_addresses
        elif slot in role_slots:
            assert value in (0, 1)
        elif slot in practice_slots:
            account = to_checksum_address((value & (2**160 - 1)).to_bytes(20))
            since, active, index = (value >> 160) & 0xFFFFFFFF, (value >> 192) & 0xFF, (value >> 200) & 0xFFFFFFFF
            assert account in practice_accounts and abs(since - now) < 366 * 24 * HOUR
            assert active in (0, 1) and index < len(register) and value >> 232 == 0
        elif int.from_bytes(slot) == 6:  # the register's length
            assert value <= len(register)
        elif slot in entry_slots:
            assert value in entry_values, f"register entry {slot_hex}={value_hex} is not a registered DID"
        elif slot in data_slots:
            assert value in data_values, f"register data {slot_hex}={value_hex} is not part of a registered DID"
        elif slot in active_did_slots:
            assert value <= len(register)  # 1 + index of a DID, 0 once offboarded
        else:
            assert slot in token_slots, f"unexplained storage write {slot_hex}={value_hex}"
            issuer = to_checksum_address((value & (2**160 - 1)).to_bytes(20))
            not_before, not_after = (value >> 176) & 0xFFFFFFFF, (value >> 208) & 0xFFFFFFFF
            assert issuer in issuer_addresses
            assert all(t == 0 or abs(t - now) < 366 * 24 * HOUR for t in (not_before, not_after))
            assert (value >> 240) in (0, 1)  # cancelled flag, nothing above it

    # 3. Every event is one of ours and carries only actor, practice or token addresses, counts and
    #    timestamps, and the register's events a registered practice's DID.
    ours = [log for log in logs if log["address"].lower() in contracts]
    assert ours
    for log in ours:
        event = events[log["topics"][0]]
        assert all(t[2:26] == "0" * 24 for t in log["topics"][1:]), log  # all indexed fields are addresses
        indexed = [to_checksum_address("0x" + t[-40:]) for t in log["topics"][1:]]
        known = actor_addresses | token_addresses | practice_accounts
        assert all(a in known or int(a, 16) == 0 for a in indexed), log
        plain = [collapse_if_tuple(i) for i in event["inputs"] if not i["indexed"]]
        if event["name"] in ("PrescriberAdded", "PrescriberRemoved"):
            assert plain == ["string"] and abi_decode(plain, bytes.fromhex(log["data"][2:]))[0] in dids
            continue
        assert all(t.startswith("uint") for t in plain), event["name"]
        assert all(v < 2**32 for v in abi_decode(plain, bytes.fromhex(log["data"][2:])))
