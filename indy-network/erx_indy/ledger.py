"""Typed async access to an Indy ledger through indy-vdr (the client ACA-Py itself uses).

Reads: indy-vdr checks every GET_NYM reply's state proof (the Patricia-trie proof from the value
to the state root, the BLS multi-signature of n-f validators over that root, and the signature's
freshness) and accepts a single reply only when all of that holds; otherwise it waits for f+1
identical replies. ``get_nym`` additionally refuses (``UnprovenReadError``) a reply that carries
no multi-signed proof, is signed by fewer than n-f validators, signs another root, or is older
than indy-vdr's freshness window, i.e. any reply indy-vdr could not have accepted on its proof.

A new pool has no signed state until its first write (or its first freshness batch, 5 minutes
after start): until then only ``get_nym(did, require_state_proof=False)`` can answer, and its
answer rests on f+1 identical replies instead.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import base58
import nacl.signing
from indy_vdr import Pool, VdrError, VdrErrorCode, ledger, open_pool
from pydantic import BaseModel, ConfigDict

# indy-vdr's default PoolConfig.freshness_threshold: older multi-signatures are not trusted.
FRESHNESS_THRESHOLD_S = 600


class Role(StrEnum):
    TRUSTEE = "TRUSTEE"
    STEWARD = "STEWARD"
    ENDORSER = "ENDORSER"
    NETWORK_MONITOR = "NETWORK_MONITOR"


# How roles are stored on the ledger.
_ROLE_BY_CODE = {"0": Role.TRUSTEE, "2": Role.STEWARD, "101": Role.ENDORSER, "201": Role.NETWORK_MONITOR}


class IndyLedgerError(Exception):
    """A ledger request failed."""


class LedgerRequestRejected(IndyLedgerError):
    """The validators refused the request (REJECT: e.g. an auth rule; REQNACK: malformed)."""

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(f"{op}: {reason}")
        self.op = op
        self.reason = reason


class LedgerTimeout(IndyLedgerError):
    """Not enough validators answered in time."""


class UnprovenReadError(IndyLedgerError):
    """A read reply carried no state proof that indy-vdr could have verified."""


class StateProof(BaseModel):
    """What the validators' BLS multi-signature in a read reply vouches for."""

    model_config = ConfigDict(frozen=True)

    root_hash: str  # state trie root the proof nodes lead to
    participants: list[str]  # validators whose BLS signatures are aggregated
    signed_at: datetime  # when that state was signed (ordering or freshness batch)
    pool_state_root_hash: str
    txn_root_hash: str


class NymRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    did: str
    verkey: str | None  # full base58 key, expanded if the ledger holds the "~abbreviated" form
    role: Role | None
    seq_no: int
    txn_time: datetime | None  # None for genesis transactions
    proof: StateProof | None  # None only from get_nym(..., require_state_proof=False)


class NymWriteResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    did: str
    seq_no: int
    txn_time: datetime


class NodeStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    mode: str | None  # "participating", "syncing", "discovering", ...; None if no answer
    reachable_nodes: int | None  # validators this node is connected to, itself included
    error: str | None = None

    @property
    def participating(self) -> bool:
        return self.mode == "participating"


class PoolStatus(BaseModel):
    """Each validator's own account of itself, from a signed GET_VALIDATOR_INFO."""

    model_config = ConfigDict(frozen=True)

    nodes: list[NodeStatus]

    @property
    def total(self) -> int:
        return len(self.nodes)

    @property
    def participating(self) -> int:
        return sum(n.participating for n in self.nodes)


def did_from_seed(seed: str | bytes) -> tuple[str, str]:
    """(did, verkey) for a seed, as ACA-Py derives them: did = base58(verkey[:16])."""
    verkey = bytes(_signing_key(seed).verify_key)
    return base58.b58encode(verkey[:16]).decode(), base58.b58encode(verkey).decode()


def _signing_key(seed: str | bytes) -> nacl.signing.SigningKey:
    # ACA-Py's seed rules: 32 ASCII characters, or base64 if it contains "=".
    if isinstance(seed, str):
        seed = base64.b64decode(seed) if "=" in seed else seed.encode("ascii")
    if len(seed) != 32:
        raise ValueError("a seed must be 32 bytes (32 characters, or base64 of 32 bytes)")
    return nacl.signing.SigningKey(seed)


def _full_verkey(did: str, verkey: str | None) -> str | None:
    if verkey and verkey.startswith("~"):
        return base58.b58encode(base58.b58decode(did) + base58.b58decode(verkey[1:])).decode()
    return verkey


def _from_epoch(ts: int | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class IndyLedger:
    """One indy-vdr pool handle. Use ``await IndyLedger.open(genesis)``; close when done."""

    def __init__(self, pool: Pool, node_names: list[str]) -> None:
        self._pool = pool
        self.node_names = node_names

    @classmethod
    async def open(cls, genesis_path: Path) -> IndyLedger:
        # No refresh here: it waits on the validators, and open() must not block on a pool
        # that is still starting. wait_ready() is the call that waits.
        pool = await open_pool(transactions_path=str(genesis_path), no_refresh=True)
        status = json.loads(await pool.get_status())
        return cls(pool, sorted(status["nodes"]))

    async def close(self) -> None:
        self._pool.close()

    async def __aenter__(self) -> IndyLedger:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def max_faulty(self) -> int:
        """f: how many validators may fail while the pool still orders (n >= 3f + 1)."""
        return (len(self.node_names) - 1) // 3

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Return once the pool answers a read (GET_TXN of pool transaction 1)."""
        deadline = time.monotonic() + timeout
        while True:
            attempt = min(5.0, max(deadline - time.monotonic(), 0.1))
            try:
                request = ledger.build_get_txn_request(None, ledger.LedgerType.POOL, 1)
                reply = await asyncio.wait_for(self._pool.submit_request(request), attempt)
                if reply.get("data"):
                    return
            except (TimeoutError, VdrError):
                pass
            if time.monotonic() >= deadline:
                raise LedgerTimeout(f"pool did not answer a read within {timeout:.0f} s")
            await asyncio.sleep(0.5)

    async def write_nym(
        self,
        submitter_seed: str | bytes,
        did: str,
        verkey: str,
        role: Role | str | None = None,
        alias: str | None = None,
    ) -> NymWriteResult:
        """Write a NYM signed by ``submitter_seed``'s DID; returns once f+1 validators replied."""
        submitter = _signing_key(submitter_seed)
        submitter_did, _ = did_from_seed(submitter_seed)
        request = ledger.build_nym_request(submitter_did, did, verkey, alias, Role(role).value if role else None)
        request.set_signature(submitter.sign(request.signature_input).signature)
        result = await self._submit(request)
        meta = result["txnMetadata"]
        return NymWriteResult(did=did, seq_no=meta["seqNo"], txn_time=_from_epoch(meta["txnTime"]))

    async def write_schema(self, submitter_seed: str | bytes, name: str, version: str,
                           attributes: list[str]) -> str:
        """Publish an AnonCreds schema under the submitter's DID (ENDORSER or above); returns its id."""
        submitter = _signing_key(submitter_seed)
        submitter_did, _ = did_from_seed(submitter_seed)
        schema_id = f"{submitter_did}:2:{name}:{version}"
        schema = {"ver": "1.0", "id": schema_id, "name": name, "version": version, "attrNames": attributes}
        request = ledger.build_schema_request(submitter_did, schema)
        request.set_signature(submitter.sign(request.signature_input).signature)
        await self._submit(request)
        return schema_id

    async def get_schema(self, schema_id: str) -> dict[str, Any] | None:
        """The schema's data (name, version, attr_names) and seqNo, or None if it is not on the ledger."""
        reply = await self._submit(ledger.build_get_schema_request(None, schema_id))
        data = reply.get("data") or {}
        if not reply.get("seqNo") or not data.get("attr_names"):
            return None
        return {**data, "seqNo": reply["seqNo"]}

    async def revoked_indexes(self, rev_reg_id: str) -> set[int]:
        """The credential revocation indexes the ledger's revocation registry marks revoked, now: what
        every verifier sees. Raises LedgerTimeout when the pool does not answer."""
        reply = await self._submit(ledger.build_get_revoc_reg_delta_request(None, rev_reg_id, None, int(time.time())))
        value = (reply.get("data") or {}).get("value") or {}
        return {int(i) for i in value.get("revoked") or []}

    async def get_nym(self, did: str, *, require_state_proof: bool = True) -> NymRecord | None:
        """The DID's NYM record, or None if the ledger has none; either answer state-proven.

        Raises UnprovenReadError when the reply has no usable state proof, unless
        ``require_state_proof`` is False: then such a reply (accepted by indy-vdr on f+1
        identical replies) is returned with ``proof=None``. A read right after a write may be
        answered by a validator that has not committed it yet (its proof is then valid for the
        earlier state): retry briefly when that matters.
        """
        reply = await self._submit(ledger.build_get_nym_request(None, did))
        try:
            proof = self._checked_proof(reply)
        except UnprovenReadError:
            if require_state_proof:
                raise
            proof = None
        if not reply.get("data"):
            return None
        data = json.loads(reply["data"])
        return NymRecord(
            did=did,
            verkey=_full_verkey(did, data.get("verkey")),
            role=_ROLE_BY_CODE.get(data.get("role")),
            seq_no=data["seqNo"],
            txn_time=_from_epoch(data.get("txnTime")),
            proof=proof,
        )

    async def nodes_status(self, submitter_seed: str | bytes, timeout: int = 5) -> PoolStatus:
        """Ask every validator for GET_VALIDATOR_INFO, signed by a TRUSTEE or STEWARD seed.

        A validator counts as participating when it reports Mode "participating": it has caught
        up and takes part in ordering. Validators that do not answer within ``timeout`` seconds
        are listed with ``error`` set.
        """
        submitter = _signing_key(submitter_seed)
        request = ledger.build_get_validator_info_request(did_from_seed(submitter_seed)[0])
        request.set_signature(submitter.sign(request.signature_input).signature)
        try:
            replies = await self._pool.submit_action(request, timeout=timeout)
        except VdrError as err:
            if err.code != VdrErrorCode.POOL_TIMEOUT:
                raise _translate(err) from err
            replies = {}  # indy-vdr raises instead of reporting per node when none answered
        return PoolStatus(nodes=[_node_status(name, replies.get(name, "no answer")) for name in self.node_names])

    async def _submit(self, request: ledger.Request) -> dict[str, Any]:
        try:
            return await self._pool.submit_request(request)
        except VdrError as err:
            raise _translate(err) from err

    def _checked_proof(self, reply: dict[str, Any]) -> StateProof:
        state_proof = reply.get("state_proof") or {}
        multi_sig = state_proof.get("multi_signature")
        if not multi_sig or not state_proof.get("proof_nodes"):
            raise UnprovenReadError(
                "reply carries no multi-signed state proof (a new pool has none until its first "
                "write or freshness batch)"
            )
        value = multi_sig["value"]
        participants = sorted(set(multi_sig["participants"]) & set(self.node_names))
        needed = len(self.node_names) - self.max_faulty
        if len(participants) < needed:
            raise UnprovenReadError(f"state signed by {participants}, needs {needed} validators")
        if value["state_root_hash"] != state_proof["root_hash"]:
            raise UnprovenReadError("multi-signature is over another state root than the proof")
        age = time.time() - value["timestamp"]
        if age > FRESHNESS_THRESHOLD_S:
            raise UnprovenReadError(f"state proof signed {age:.0f} s ago, older than indy-vdr accepts")
        return StateProof(
            root_hash=state_proof["root_hash"],
            participants=participants,
            signed_at=_from_epoch(value["timestamp"]),
            pool_state_root_hash=value["pool_state_root_hash"],
            txn_root_hash=value["txn_root_hash"],
        )


def _node_status(name: str, reply: Any) -> NodeStatus:
    try:
        data = (json.loads(reply) if isinstance(reply, str) else reply)["result"]["data"]
        return NodeStatus(
            name=name,
            mode=data["Node_info"]["Mode"],
            reachable_nodes=data["Pool_info"]["Reachable_nodes_count"],
        )
    except (TypeError, KeyError, ValueError):
        # indy-vdr puts "timeout" (or the raw error reply) where a node gave no answer.
        return NodeStatus(name=name, mode=None, reachable_nodes=None, error=str(reply))


def _translate(err: VdrError) -> IndyLedgerError:
    if err.code == VdrErrorCode.POOL_REQUEST_FAILED and err.extra:
        try:
            reply = json.loads(err.extra)
            return LedgerRequestRejected(reply.get("op", "REJECT"), reply.get("reason", err.extra))
        except ValueError:
            pass
    if err.code == VdrErrorCode.POOL_TIMEOUT:
        return LedgerTimeout(str(err))
    return IndyLedgerError(f"{err.code.name}: {err}")
