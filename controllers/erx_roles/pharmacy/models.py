"""The pharmacy's records and the bodies and answers of its REST API: a check (one presentation, from
request to dispense or refusal), and the pharmacy's own overrides of the national register of prescribers."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from erx_core.ids import CredDefId, RecordId
from erx_roles.dispensing import Override
from erx_schemas.prescription import Refusal

FINAL = ("dispensed", "refused")


class CheckState(StrEnum):
    REQUESTED = "requested"
    VERIFIED = "verified"
    DISPENSING = "dispensing"
    DISPENSED = "dispensed"
    REFUSED = "refused"


class DispenseCheck(BaseModel):
    check_id: str
    pres_ex_id: str
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
    """The durable form keeps the journaled raw transaction, which the API never shows."""

    spend_raw_tx: str | None = None


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


class PharmacyStatus(BaseModel):
    role: str = "pharmacy"
    schema_id: str
    chain_account: str
    trusted_prescribers: int


def public(check: StoredCheck) -> DispenseCheck:
    """A check as the API shows it: without the journaled raw transaction."""
    return DispenseCheck.model_validate(check.model_dump())
