"""The pharmacy's records and the bodies and answers of its REST API: a check (one presentation, from
request to dispense or refusal), and the pharmacy's own overrides of the national register of prescribers."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from erx_core.ids import CredDefId, RecordId
from erx_roles.dispensing import Override, Substitution
from erx_schemas.prescription import Refusal
from erx_schemas.receipt import DispenseReceipt
from erx_schemas.signed import MAX_JWS_CHARS

FINAL = ("dispensed", "refused")


class CheckState(StrEnum):
    REQUESTED = "requested"
    VERIFIED = "verified"
    DISPENSING = "dispensing"
    DISPENSED = "dispensed"
    REFUSED = "refused"


class Channel(StrEnum):
    """How the prescription came to the counter."""

    WALLET = "wallet"  # presented by the patient's wallet (AnonCreds proof)
    PAPER = "paper"  # a printed paper prescription's pickup code (erx_schemas.paper, channel "paper")
    # the pickup code a patient's wallet handed to someone collecting for them (channel "wallet")
    REPRESENTATIVE = "representative"


class AfterDispense(StrEnum):
    """What is still to do once a spend is recorded; the housekeeping loop retries a step that failed."""

    ANNOUNCE = "announce"  # the `prescription.dispensed` event is not recorded yet (it carries the receipt)
    SIGN = "sign"  # no receipt yet: the pharmacy's agent did not sign it
    DELIVER = "deliver"  # the receipt waits to be sent to the patient's wallet over the check's connection


class DispenseCheck(BaseModel):
    check_id: str
    pres_ex_id: str  # "" for a pickup code (paper or representative): no presentation exchange
    channel: Channel = Channel.WALLET
    connection_id: str | None = None
    state: CheckState = CheckState.REQUESTED
    refusal: Refusal | None = None
    # what was presented (without the token's secret key), and by whom it was issued
    prescription: dict[str, Any] | None = None
    cred_def_id: str | None = None
    token_address: str | None = None
    # the spend: journaled before sending
    spend_tx_hash: str | None = None
    spend_raw_tx: str | None = Field(default=None, exclude=True)
    remaining_redemptions: int | None = None
    dispensed_at: float | None = None
    # what was handed over instead of exactly the prescription (its medication and quantity); None: as prescribed
    substitution: Substitution | None = None
    # the dispense receipt: the FHIR MedicationDispense signed with the pharmacy's DID key (erx_schemas.receipt);
    # it holds no secret. None until signed (a failed signing is retried, see `after_dispense`)
    receipt_jws: str | None = None
    after_dispense: AfterDispense | None = Field(default=None, exclude=True)
    # a connectionless request: the invitation carrying it (too long for a QR code), and its short link
    invitation_url: str | None = None
    short_url: str | None = None
    qr_svg_url: str | None = None
    qr_png_url: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)

    @property
    def final(self) -> bool:
        return self.state in FINAL


class StoredCheck(DispenseCheck):
    """The durable form keeps the journaled raw transaction, which the API never shows, and what is still
    to do after a dispense."""

    spend_raw_tx: str | None = None
    after_dispense: AfterDispense | None = None


class TrustedPrescriber(BaseModel):
    """The pharmacy's own override for one credential definition, on top of the national register of
    prescribers (which the health authority keeps on chain): allow one the register does not list,
    or deny one it does."""

    model_config = ConfigDict(extra="forbid")

    # the same format the DELETE path parameter is checked against: whatever is added can be removed
    cred_def_id: CredDefId
    label: str = Field(default="", max_length=200)
    decision: Override = Override.ALLOW


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connection_id: RecordId | None = Field(default=None, description="omit for a connectionless request (QR code)")


class PaperCheckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(max_length=4000, description="the scanned or pasted pickup code (ERX1:…) of a paper "
                      "prescription or of a patient's wallet")


class PharmacyStatus(BaseModel):
    role: str = "pharmacy"
    schema_id: str
    chain_account: str
    trusted_prescribers: int


def public(check: StoredCheck) -> DispenseCheck:
    """A check as the API shows it: without the journaled raw transaction."""
    return DispenseCheck.model_validate(check.model_dump())


class DispenseBody(BaseModel):
    """`POST /api/checks/{check_id}/dispense`: empty, or what is handed over instead of the prescription."""

    model_config = ConfigDict(extra="forbid")

    substitution: Substitution | None = Field(default=None, description=(
        "omit to dispense as prescribed. generic: another product of the prescribed strength and form (only if "
        "the prescription allows substitution); pack_size: the prescribed medication, at most the prescribed "
        "quantity. Either with a reason; a rule broken is a 422 naming it"))


class ReceiptView(BaseModel):
    """A dispensed check's signed receipt: the compact JWS and what it says."""

    check_id: str
    jws: str = Field(description="compact JWS (EdDSA), typ erx-receipt+jwt, kid did:sov:<pharmacy DID>#key-1")
    receipt: DispenseReceipt


class VerifyReceiptBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jws: str = Field(min_length=1, max_length=MAX_JWS_CHARS, description="a dispense receipt (compact JWS), "
                     "as printed in its QR code or received in a wallet")


class VerifiedReceipt(BaseModel):
    """A receipt whose signature verifies against its signer's verkey on the Indy network."""

    signer_did: str
    verkey: str = Field(description="the verkey the Indy network holds for signer_did, which verified it")
    receipt: DispenseReceipt
