"""Dispense receipts between the roles: the pharmacy signs one per dispense (erx_schemas.receipt) and sends
it to the patient's wallet as a DIDComm basic message, `MESSAGE_PREFIX + JWS`; anyone verifies it against
the signer DID's verkey on the Indy network. Here: that message's form, and checking a receipt with the
verkey read through an agent (`check_receipt`), which both the pharmacy's public verify endpoint and the
wallet use. A receipt that does not verify is a `ReceiptCheck` naming the problem, never an exception.
"""

from __future__ import annotations

import json
import time
import uuid
from hashlib import sha256
from typing import Any, Awaitable, Callable

from pydantic import BaseModel

from erx_core.acapy_admin import AdminApiError, AgentUnreachable
from erx_schemas import receipt as receipts
from erx_schemas import signed
from erx_schemas.receipt import DispenseReceipt, ReceiptInvalid
from erx_schemas.signed import SignatureInvalid

MESSAGE_PREFIX = "erx-receipt:"  # a basic message carrying a receipt: the prefix, then the compact JWS
UNKNOWN_SIGNER = "unknown_signer"  # the kid's DID is not on the Indy network
INVALID_RECEIPT = "invalid_receipt"  # the signature verifies, but the payload is no valid receipt


class ReceiptCheck(BaseModel):
    """What checking a receipt found: `verified`, or the `problem` (a `signed.Problem` value,
    `unknown_signer` or `invalid_receipt`) with a detail that never quotes the document. `receipt` only
    when verified: what an unverified document claims is not shown."""

    verified: bool
    signer_did: str | None = None
    verkey: str | None = None
    problem: str | None = None
    detail: str = ""
    receipt: DispenseReceipt | None = None


Lookup = Callable[[str], Awaitable[str]]


async def check_receipt(jws: str, did_verkey: Lookup) -> ReceiptCheck:
    """Verify `jws` against the verkey the ledger holds for the DID its kid names (`did_verkey(did)`,
    e.g. `AcaPyAdmin.did_verkey`). A transient fault of that lookup (agent unreachable, 5xx) is raised:
    nothing was decided."""
    try:
        did = receipts.receipt_signer(jws)
    except SignatureInvalid as exc:
        return ReceiptCheck(verified=False, problem=exc.reason.value, detail=exc.detail)
    try:
        verkey = await did_verkey(did)
    except AdminApiError as exc:
        if isinstance(exc, AgentUnreachable) or exc.status >= 500:
            raise
        return ReceiptCheck(verified=False, signer_did=did, problem=UNKNOWN_SIGNER,
                            detail=f"the signer {did} is not on the Indy network")
    try:
        opened = receipts.open_receipt(jws, verkey)
    except SignatureInvalid as exc:
        return ReceiptCheck(verified=False, signer_did=did, verkey=verkey, problem=exc.reason.value, detail=exc.detail)
    except ReceiptInvalid as exc:
        return ReceiptCheck(verified=False, signer_did=did, verkey=verkey, problem=INVALID_RECEIPT, detail=str(exc))
    return ReceiptCheck(verified=True, signer_did=did, verkey=verkey, receipt=opened)


def receipt_in_message(content: object) -> str | None:
    """The JWS a basic message carries, if it is a receipt message (its form only; nothing verified)."""
    if not isinstance(content, str) or not content.startswith(MESSAGE_PREFIX):
        return None
    jws = content[len(MESSAGE_PREFIX):].strip()
    return jws if 0 < len(jws) <= signed.MAX_JWS_CHARS else None


def receipt_id(jws: str) -> str:
    """A record id for a receipt, the same for the same document (a receipt delivered twice is kept once)."""
    return str(uuid.UUID(bytes=sha256(jws.encode()).digest()[:16], version=4))


def own_receipt(jws: str) -> DispenseReceipt:
    """A receipt from this pharmacy's own records, read without verifying (it signed it itself; its key may
    have been rotated since). ReceiptInvalid / SignatureInvalid if it is not one."""
    document = signed.SignedDocument.parse(jws)
    payload = json.loads(signed.b64url_decode(document.payload_segment, "payload"))
    return DispenseReceipt.from_payload(payload)


def summary(receipt: DispenseReceipt) -> dict[str, Any]:
    """What a person reads of a receipt: medication, quantity, pharmacy, when, transaction, substitution."""
    resource = receipt.medication_dispense
    quantity = resource.get("quantity") or {}
    pharmacy = next((c for c in resource.get("contained") or []
                     if isinstance(c, dict) and c.get("resourceType") == "Organization"), {})
    substitution = resource.get("substitution") or {}
    kind = (substitution.get("type") or {}).get("text") if substitution.get("wasSubstituted") else None
    reasons = [r.get("text") for r in substitution.get("reason") or [] if isinstance(r, dict) and r.get("text")]
    return {"medication": str((resource.get("medicationCodeableConcept") or {}).get("text") or ""),
            "quantity": f"{quantity.get('value', '')} {quantity.get('unit', '')}".strip(),
            "pharmacy": str(pharmacy.get("name") or receipt.iss), "pharmacy_did": receipt.iss,
            "dispensed_at": receipt.dispensed_at.isoformat(timespec="seconds"), "tx_hash": receipt.tx_hash,
            "substitution": kind, "substitution_reason": "; ".join(reasons) or None}


class VerkeyCache:
    """Verkeys read from the ledger, kept `ttl_s` (the public verify endpoint must not turn every request
    into a ledger read). A DID the ledger does not know is kept too, as that answer (else random DIDs would
    cost a ledger read each); a transient fault is not kept."""

    def __init__(self, lookup: Lookup, ttl_s: float = 60.0, size: int = 256):
        self._lookup, self._ttl_s, self._size = lookup, ttl_s, size
        self._kept: dict[str, tuple[float, str | BaseException]] = {}

    async def __call__(self, did: str) -> str:
        now = time.monotonic()
        kept = self._kept.get(did)
        if kept is not None and now - kept[0] < self._ttl_s:
            if isinstance(kept[1], BaseException):
                raise kept[1]
            return kept[1]
        try:
            answer: str | BaseException = await self._lookup(did)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            answer = exc
        if len(self._kept) >= self._size:
            self._kept.pop(next(iter(self._kept)))
        self._kept[did] = (now, answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer
