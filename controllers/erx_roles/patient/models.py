"""The wallet stand-in's records and the bodies and answers of its API: what the user opened, holds, is
offered and is asked for, with exactly what answering would disclose."""

from __future__ import annotations

import time

from pydantic import BaseModel, Field, computed_field

from erx_core.ids import RecordId


class OpenInvitation(BaseModel):
    invitation_url: str = Field(min_length=10, max_length=20000)
    # present this credential (wallet referent) if the invitation carries a proof request
    credential_id: RecordId | None = None


class Share(BaseModel):
    credential_id: RecordId


class Approve(BaseModel):
    credential_id: RecordId | None = None


class HeldCredential(BaseModel):
    credential_id: str
    cred_def_id: str
    attributes: dict[str, str]


class OpenedInvitation(BaseModel):
    """Who invited the wallet: names the verifier of a connectionless proof request."""

    invitation_id: str
    label: str
    opened_at: float = Field(default_factory=time.time)


class Attribute(BaseModel):
    name: str
    value: str  # exactly what is disclosed, or a mask for the token's secret key
    masked: bool = False
    readable: str = ""  # the value as people read it, where that differs (dates)


class OfferView(BaseModel):
    cred_ex_id: str
    issuer: str
    comment: str = ""
    attributes: list[Attribute]
    created_at: str | None = None


class PredicateCheck(BaseModel):
    statement: str  # e.g. "valid until ≥ 2026-11-21": proven, the value itself is not disclosed
    yours: str      # the credential's own value, shown to its holder only
    satisfied: bool


class Candidate(BaseModel):
    """One held credential that could answer a proof request, with what answering would disclose."""

    credential_id: str
    title: str
    issue_date: str
    disclosed: list[Attribute]
    predicates: list[PredicateCheck]

    @computed_field
    @property
    def usable(self) -> bool:
        return all(p.satisfied for p in self.predicates)


class RequestView(BaseModel):
    pres_ex_id: str
    verifier: str
    name: str
    attribute_names: list[str]
    predicates: list[str]
    candidates: list[Candidate]
    chosen: str | None = None  # the credential preselected (named when the invitation was opened, or newest)
    created_at: str | None = None


class WalletReceipt(BaseModel):
    """A dispense receipt a pharmacy sent over a connection (a DIDComm basic message), as the wallet checked
    it against the signer DID's verkey on the Indy network. What it says (`summary`) is kept only once it
    verified: an unverified document's claims are not shown."""

    receipt_id: str
    connection_id: str | None = None
    jws: str
    received_at: float = Field(default_factory=time.time)
    verified: bool | None = None  # None: not checked yet (the ledger could not be read); checked again when listed
    signer_did: str | None = None
    problem: str | None = None  # why it does not verify (erx_roles.receipts.ReceiptCheck.problem)
    detail: str = ""
    # medication, quantity, pharmacy, pharmacy_did, dispensed_at, tx_hash, substitution, substitution_reason
    summary: dict[str, str | None] | None = None
    medication_dispense: dict | None = None  # the FHIR MedicationDispense it carries, once verified
