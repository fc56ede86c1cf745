"""The prescription credential (AnonCreds) and what a pharmacy asks of it.

Schema `erx-prescription` 1.0 is published once by the health authority, so that every practice's
credential definition refers to the same national schema and a pharmacy can tell a prescription from
any other credential by schema id. Each practice publishes its own revocable credential definition.

AnonCreds attribute values are strings; dates are YYYYMMDD integers so that the validity window can be
checked by zero-knowledge predicates (`valid_from <= today <= valid_until`) without being revealed.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from enum import StrEnum
from typing import Any

from eth_account import Account
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

SCHEMA_NAME = "erx-prescription"
SCHEMA_VERSION = "1.0"

# Order matters only for humans; AnonCreds treats attribute names as a set.
ATTRIBUTES: list[str] = [
    "prescription_id",
    "patient_name",
    "patient_birth_date",
    "medication_name",
    "medication_code",
    "medication_code_system",
    "medication_strength",
    "medication_form",
    "dosage_instructions",
    "quantity",
    "redemptions",
    "valid_from",
    "valid_until",
    "prescriber_name",
    "prescriber_id",
    "issue_date",
    "token_chain_id",
    "token_contract",
    "token_secret_key",
]

# What a pharmacy needs to dispense, and nothing more. Validity is proven by predicates instead;
# the number of redemptions is read from the chain; the issue date is not needed.
NOT_REVEALED_FOR_DISPENSING = {"redemptions", "valid_from", "valid_until", "issue_date"}
REVEALED_FOR_DISPENSING: list[str] = [a for a in ATTRIBUTES if a not in NOT_REVEALED_FOR_DISPENSING]

CODE_SYSTEMS = {"ATC", "PZN", "RXNORM", "SNOMED", "EAN"}
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PRIVATE_KEY = re.compile(r"^0x[0-9a-fA-F]{64}$")


def yyyymmdd(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def from_yyyymmdd(value: int | str) -> dt.date:
    v = int(value)
    return dt.date(v // 10000, v // 100 % 100, v % 100)


class Medication(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=40)
    code_system: str = Field(default="ATC", description=f"one of {sorted(CODE_SYSTEMS)}")
    strength: str = Field(min_length=1, max_length=60, examples=["400 mg"])
    form: str = Field(min_length=1, max_length=60, examples=["tablet"])

    @field_validator("code_system")
    @classmethod
    def _known_code_system(cls, v: str) -> str:
        if v.upper() not in CODE_SYSTEMS:
            raise ValueError(f"unknown code system {v!r}; use one of {sorted(CODE_SYSTEMS)}")
        return v.upper()


class PrescriptionOrder(BaseModel):
    """What a doctor fills in. Everything the credential needs except the token, which the doctor's
    controller creates."""

    model_config = ConfigDict(str_strip_whitespace=True)

    patient_name: str = Field(min_length=1, max_length=200)
    patient_birth_date: dt.date
    medication: Medication
    dosage_instructions: str = Field(min_length=1, max_length=500)
    quantity: int = Field(ge=1, le=1000)
    redemptions: int = Field(default=1, ge=1, le=12)
    valid_from: dt.date | None = None  # default: today
    valid_until: dt.date | None = None  # default: valid_from + 28 days

    @model_validator(mode="after")
    def _window(self) -> PrescriptionOrder:
        today = dt.date.today()
        if self.valid_from is None:
            self.valid_from = today
        if self.valid_until is None:
            self.valid_until = self.valid_from + dt.timedelta(days=28)
        if self.valid_until < self.valid_from:
            raise ValueError("valid_until must not be before valid_from")
        if self.patient_birth_date > today:
            raise ValueError("patient_birth_date is in the future")
        return self


class TokenRef(BaseModel):
    """Where a prescription's redemption token lives, and the one-time key that controls it."""

    chain_id: int
    contract: str
    secret_key: SecretStr

    @field_validator("contract")
    @classmethod
    def _address(cls, v: str) -> str:
        if not _ADDRESS.match(v):
            raise ValueError("contract must be a 0x-prefixed 20-byte hex address")
        return v

    @field_validator("secret_key")
    @classmethod
    def _key(cls, v: SecretStr) -> SecretStr:
        if not _PRIVATE_KEY.match(v.get_secret_value()):
            raise ValueError("secret_key must be a 0x-prefixed 32-byte hex private key")
        return v

    @property
    def address(self) -> str:
        """The token's key on chain: the address of the one-time key pair."""
        return Account.from_key(self.secret_key.get_secret_value()).address


class Prescriber(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    identifier: str = Field(min_length=1, max_length=60, description="e.g. the national physician number")


class Prescription(BaseModel):
    """The credential's content, typed. `to_attributes()` / `from_attributes()` convert to and from the
    AnonCreds string attributes."""

    prescription_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    order: PrescriptionOrder
    prescriber: Prescriber
    issue_date: dt.date = Field(default_factory=dt.date.today)
    token: TokenRef

    def to_attributes(self) -> dict[str, str]:
        o, m = self.order, self.order.medication
        values: dict[str, Any] = {
            "prescription_id": self.prescription_id,
            "patient_name": o.patient_name,
            "patient_birth_date": yyyymmdd(o.patient_birth_date),
            "medication_name": m.name,
            "medication_code": m.code,
            "medication_code_system": m.code_system,
            "medication_strength": m.strength,
            "medication_form": m.form,
            "dosage_instructions": o.dosage_instructions,
            "quantity": o.quantity,
            "redemptions": o.redemptions,
            "valid_from": yyyymmdd(o.valid_from),
            "valid_until": yyyymmdd(o.valid_until),
            "prescriber_name": self.prescriber.name,
            "prescriber_id": self.prescriber.identifier,
            "issue_date": yyyymmdd(self.issue_date),
            "token_chain_id": self.token.chain_id,
            "token_contract": self.token.contract,
            "token_secret_key": self.token.secret_key.get_secret_value(),
        }
        assert list(values) == ATTRIBUTES
        return {k: str(v) for k, v in values.items()}


class PresentedPrescription(BaseModel):
    """What a pharmacy may keep and show of a presentation: everything revealed but the token."""

    prescription_id: str = Field(min_length=1)
    patient_name: str
    patient_birth_date: dt.date
    medication: Medication
    dosage_instructions: str
    quantity: int
    prescriber: Prescriber


class RevealedPrescription(PresentedPrescription):
    """What a pharmacy learns from a presentation: the revealed attributes, typed, with the token."""

    token: TokenRef

    @classmethod
    def from_attributes(cls, raw: dict[str, str]) -> RevealedPrescription:
        missing = [a for a in REVEALED_FOR_DISPENSING if a not in raw]
        if missing:
            raise ValueError(f"presentation lacks attributes {missing}")
        return cls(
            prescription_id=raw["prescription_id"],
            patient_name=raw["patient_name"],
            patient_birth_date=from_yyyymmdd(raw["patient_birth_date"]),
            medication=Medication(name=raw["medication_name"], code=raw["medication_code"],
                                  code_system=raw["medication_code_system"],
                                  strength=raw["medication_strength"], form=raw["medication_form"]),
            dosage_instructions=raw["dosage_instructions"],
            quantity=int(raw["quantity"]),
            prescriber=Prescriber(name=raw["prescriber_name"], identifier=raw["prescriber_id"]),
            token=TokenRef(chain_id=int(raw["token_chain_id"]), contract=raw["token_contract"],
                           secret_key=SecretStr(raw["token_secret_key"])),
        )


class RefusalReason(StrEnum):
    UNTRUSTED_ISSUER = "untrusted_issuer"
    REVOKED = "revoked"
    EXPIRED = "expired"
    ALREADY_REDEEMED = "already_redeemed"
    CANCELLED = "cancelled"
    UNKNOWN_TOKEN = "unknown_token"
    INVALID_PRESENTATION = "invalid_presentation"
    # the wallet answered with a problem report instead of a presentation
    DECLINED = "declined"  # the patient chose not to share
    NO_MATCHING_CREDENTIAL = "no_matching_credential"  # nothing held answers the request (none, revoked, not valid)
    TIMED_OUT = "timed_out"  # the check itself ran out of time; the prescription is untouched


REFUSAL_TEXT: dict[RefusalReason, str] = {
    RefusalReason.UNTRUSTED_ISSUER: "the prescription was not issued by a prescriber this pharmacy trusts",
    RefusalReason.REVOKED: "the prescriber revoked this prescription",
    RefusalReason.EXPIRED: "the prescription is not valid today (expired or not yet valid)",
    RefusalReason.ALREADY_REDEEMED: "the prescription has already been redeemed as often as allowed",
    RefusalReason.CANCELLED: "the prescription's redemption token was cancelled by its prescriber",
    RefusalReason.UNKNOWN_TOKEN: "the prescription's key does not match any redemption token",
    RefusalReason.INVALID_PRESENTATION: "the presentation could not be verified",
    RefusalReason.DECLINED: "the patient declined to share the prescription",
    RefusalReason.NO_MATCHING_CREDENTIAL: "the patient's wallet holds no valid prescription for this request "
                                          "(none, only revoked ones, or none valid today)",
    RefusalReason.TIMED_OUT: "the check was not completed in time; nothing was redeemed, ask for the prescription "
                             "again",
}


class Refusal(BaseModel):
    reason: RefusalReason
    detail: str = ""

    @property
    def text(self) -> str:
        return REFUSAL_TEXT[self.reason] + (f" ({self.detail})" if self.detail else "")


def dispensing_proof_request(schema_id: str, today: dt.date | None = None, now: int | None = None) -> dict[str, Any]:
    """The pharmacy's AnonCreds proof request.

    Attributes are restricted to credentials of the national prescription schema; whether the issuing
    practice is trusted is checked by the pharmacy against its allow-list after verification (see
    docs/prescription-credential.md: a nationwide allow-list does not fit into a QR-sized request, and
    a refusal can then name its reason). Validity is proven by predicates without revealing dates, and
    non-revocation is asked as of now only (`{"to": now}`; a `from` hangs some mobile wallets).
    """
    day = yyyymmdd(today or dt.date.today())
    restrictions = [{"schema_id": schema_id}]
    return {
        "name": "Prescription for dispensing",
        "version": "1.0",
        "nonce": str(uuid.uuid4().int)[:29],
        "requested_attributes": {
            "prescription": {"names": REVEALED_FOR_DISPENSING, "restrictions": restrictions},
        },
        "requested_predicates": {
            "valid_until": {"name": "valid_until", "p_type": ">=", "p_value": day, "restrictions": restrictions},
            "valid_from": {"name": "valid_from", "p_type": "<=", "p_value": day, "restrictions": restrictions},
        },
        "non_revoked": {"to": now or int(time.time())},
    }
