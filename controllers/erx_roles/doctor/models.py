"""The doctor's records and the bodies and answers of its REST API: a prescription as the practice keeps
it (its state, its token, its revocation ids; never the token's secret key) and as the API shows it."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from erx_core.ids import RecordId
from erx_schemas.prescription import Prescriber, PrescriptionOrder, TherapyPart, TherapyPlan


class PrescriptionState(StrEnum):
    CREATING_TOKEN = "creating_token"
    PRINTING = "printing"  # paper: the token is mined, the page not handed over yet (`issued` once it is)
    OFFERED = "offered"
    ISSUED = "issued"
    DECLINED = "declined"
    REVOKED = "revoked"
    FAILED = "failed"


class Channel(StrEnum):
    """How the prescription reaches the patient."""

    WALLET = "wallet"  # an AnonCreds credential offered to the patient's connected wallet
    PAPER = "paper"  # a printed page with the practice-signed pickup code (erx_schemas.paper)


class TokenState(StrEnum):
    """Where the prescription's token is, apart from the credential's own state: the offer goes out
    while the create is on its way (`erx_roles.doctor.tokens`), so a prescription is `issued` only once
    the wallet stored the credential AND the token is `created`."""

    PENDING = "pending"  # handed to the batcher, sent or being sent (token_tx once journaled)
    CREATED = "created"  # mined: the token exists
    FAILED = "failed"  # reverted, dropped or refused: it does not exist and this create never will


class IssuedPrescription(BaseModel):
    """The practice's own record of a prescription (it is the practice's patient file, not the chain)."""

    prescription_id: str
    connection_id: str  # "" for a paper prescription
    channel: Channel = Channel.WALLET
    state: PrescriptionState
    order: PrescriptionOrder
    prescriber: Prescriber | None = None  # who prescribed it (records from before staff accounts: the practice)
    # a therapy in parts (None: a prescription on its own, part 1 of 1 of its own therapy)
    therapy_id: str | None = None
    part: int = 1
    parts: int = 1
    token_address: str
    token_tx: str | None = None  # the create's transaction (a createBatch shared with other prescriptions)
    # records from before the pipeline had their token before the offer went out
    token_state: TokenState = TokenState.CREATED
    cred_ex_id: str | None = None
    thread_id: str | None = None  # the issue exchange's DIDComm thread
    rev_reg_id: str | None = None
    cred_rev_id: str | None = None
    revoke_tx: str | None = None
    credential_stored: bool = False  # the wallet acknowledged the credential (`issued` once the token is too)
    error: str | None = None
    created_at: float = Field(default_factory=time.time)


    @property
    def therapy(self) -> TherapyPart:
        return TherapyPart(therapy_id=self.therapy_id or self.prescription_id, part=self.part, parts=self.parts)


class PrescriptionView(IssuedPrescription):
    """A record with its live status from the chain."""

    remaining_redemptions: int | None = None
    token_cancelled: bool | None = None
    status: str


class IssueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection_id: RecordId = Field(description="the patient's connection (from an invitation)")
    order: PrescriptionOrder


class TherapyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection_id: RecordId = Field(description="the patient's connection (from an invitation)")
    order: PrescriptionOrder = Field(description="the first part; each further part is the same prescription "
                                     "over its own window")
    plan: TherapyPlan


class PaperRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order: PrescriptionOrder
    plan: TherapyPlan | None = Field(default=None, description="a therapy in parts: one page per part")


class FhirTherapyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection_id: RecordId = Field(description="the patient's connection (from an invitation)")
    medication_requests: list[dict[str, Any]] = Field(min_length=2, max_length=12, description=(
        "one FHIR R4 MedicationRequest per part, each with its own dispenseRequest.validityPeriod"))


class TherapyView(BaseModel):
    """A therapy in parts with each part's live status, in part order."""

    therapy_id: str
    parts: list[PrescriptionView]


class DoctorStatus(BaseModel):
    role: str = "doctor"
    cred_def_id: str | None
    issuer_did: str | None
    schema_id: str
    chain_account: str


class FhirIssueRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection_id: RecordId = Field(description="the patient's connection (from an invitation)")
    medication_request: dict[str, Any] = Field(description="a FHIR R4 MedicationRequest resource (JSON)")


class TokenBatch(BaseModel):
    """One create transaction as journaled before it was sent (table `token_batch`, key its hash): the
    signed bytes let a restarted controller finish it with `resume()`; never shown by the API."""

    tx_hash: str
    raw_tx: str
    prescription_ids: list[str]
    sent_at: float = Field(default_factory=time.time)


class CredDefMeta(BaseModel):
    """The practice's credential definition and the schema it is over (table `meta`, key `cred_def`)."""

    cred_def_id: str
    schema_id: str
