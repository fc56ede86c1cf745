"""The pickup code: a prescription signed by its practice's DID key, with the token's one-time key.

Printed as a QR code on a paper prescription (`channel` "paper", for a patient without a wallet) or held
in the wallet's credential (`channel` "wallet", attribute `pickup_code`) so that the patient can hand one
redemption to a representative. Whoever holds the code can redeem it, like a paper prescription.

    text   = "ERX1:" + compact JWS  (erx_schemas.signed: EdDSA, kid did:sov:<practice DID>#key-1,
                                      typ "erx-pickup+jwt", payload = `PickupCode.signing_payload()`)

Reading one, as a pharmacy does (every step on hostile input):
    jws = parse_pickup_code(text)            # ValueError: not a pickup code
    did = pickup_signer(jws)                 # SignatureInvalid: not a signed document of this profile
    verkey = <the ledger's verkey for did>   # AcaPyAdmin.did_verkey
    code = open_pickup_code(jws, verkey)     # SignatureInvalid / PickupCodeInvalid
then the practice on the register of prescribers (`code.iss`), then the token, as for a presentation.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError, model_validator

from erx_schemas import signed
from erx_schemas.prescription import (FIRST_VALID_DAY, LAST_VALID_DAY, MAX_VALIDITY_DAYS, BirthDate, Medication,
                                      Prescriber, PrescriptionId, Text, TokenRef)

PREFIX = "ERX1:"
TYP = "erx-pickup+jwt"  # the JWS header's typ: a receipt or any other signed document is no pickup code
VERSION = 1
MAX_TEXT_CHARS = 4_000  # a QR code holds at most 2,953 bytes; the credential attribute at most 4,000
# the largest QR code (version 40) at error correction M, the level the pages print: a longer code is
# refused when it is made, not when a pharmacy fails to scan it
MAX_QR_CHARS = 2_331
MAX_THERAPY_PARTS = 12  # as erx_schemas.prescription's therapies (gematik: 2-4 parts; NHS repeats: up to 12)

IndyDid = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{21,22}$")]
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class PickupCodeInvalid(ValueError):
    """A signed document that is no valid pickup code; the message names fields, never their values."""


# values are never shown in errors (the token key is among them); the wire names are short aliases (a
# QR code's size grows with every byte), the Python names those of erx_schemas.prescription
_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True,
                     validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


class CodeMedication(Medication):
    model_config = _CONFIG

    code_system: str = Field(alias="system", max_length=10)


class CodePrescriber(Prescriber):
    model_config = _CONFIG

    identifier: str = Field(alias="id", min_length=1, max_length=60, pattern=r"^[!-~]+$")


class CodeTherapy(BaseModel):
    """Which part of a therapy in parts (a multi-part prescription, repeats) this prescription is."""

    model_config = _CONFIG

    therapy_id: PrescriptionId = Field(alias="id")
    part: int = Field(ge=1, le=MAX_THERAPY_PARTS)
    parts: int = Field(alias="of", ge=1, le=MAX_THERAPY_PARTS)

    @model_validator(mode="after")
    def _part_of_parts(self) -> CodeTherapy:
        if self.part > self.parts:
            raise ValueError("part is greater than the number of parts")
        return self


class CodeToken(TokenRef):
    """The token, with its one-time secret key: masked everywhere but in `signing_payload()`."""

    model_config = _CONFIG

    chain_id: int = Field(alias="chain", ge=1, le=2**63 - 1)
    secret_key: SecretStr = Field(alias="key")


class PickupCode(BaseModel):
    """What the practice signs (wire names in `WIRE_NAMES`, docs/paper-and-receipts.md)."""

    model_config = _CONFIG

    v: Literal[1] = VERSION
    channel: Literal["paper", "wallet"] = Field(alias="ch")
    iss: IndyDid = Field(description="the practice's public DID (unqualified), the JWS kid's DID")
    prescription_id: PrescriptionId = Field(alias="id")
    issue_date: dt.date = Field(alias="issued")
    patient_name: Text = Field(alias="patient", min_length=1, max_length=200)
    patient_birth_date: BirthDate = Field(alias="born")
    medication: CodeMedication = Field(alias="med")
    dosage_instructions: Text = Field(alias="dosage", min_length=1, max_length=500)
    quantity: int = Field(alias="qty", ge=1, le=1000)
    substitution_allowed: bool = Field(default=True, alias="subst")
    redemptions: int = Field(alias="uses", ge=1, le=12)
    valid_from: dt.date = Field(alias="from")
    valid_until: dt.date = Field(alias="until")
    prescriber: CodePrescriber = Field(alias="by")
    therapy: CodeTherapy | None = None
    token: CodeToken

    @model_validator(mode="after")
    def _consistent(self) -> PickupCode:
        problems = []
        for field in ("valid_from", "valid_until"):
            if not FIRST_VALID_DAY <= getattr(self, field) <= LAST_VALID_DAY:
                problems.append(f"{field} is outside the days a token's validity window can hold")
        if self.valid_until < self.valid_from:
            problems.append("valid_until is before valid_from")
        elif (self.valid_until - self.valid_from).days > MAX_VALIDITY_DAYS:
            problems.append(f"valid_until is more than {MAX_VALIDITY_DAYS} days after valid_from")
        if self.patient_birth_date > self.issue_date:
            problems.append("patient_birth_date is after issue_date")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def signing_payload(self) -> dict[str, Any]:
        """The JSON payload to sign (wire names), the one place the token's secret key is revealed."""
        payload = self.model_dump(mode="json", exclude_none=True)
        payload["token"]["key"] = self.token.secret_key.get_secret_value()
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> PickupCode:
        """A verified payload, validated as the wire form: JSON types, strictly, wire names only."""
        try:
            return cls.model_validate_json(json.dumps(payload), by_alias=True, by_name=False)
        except ValidationError as exc:
            raise PickupCodeInvalid("not a valid pickup code: " + _problems(exc)) from None


def _problems(exc: ValidationError) -> str:
    """Each error's place and message, never the value (which may be the token key)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:10]:
        where = ".".join(str(p) for p in error["loc"]) or "payload"
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def pickup_code_text(jws: str) -> str:
    """The text a QR code (or the wallet's credential) carries. Refuses a code too long for a QR code."""
    signed.SignedDocument.parse(jws)
    text = PREFIX + jws
    if len(text) > MAX_QR_CHARS:
        raise ValueError(f"the pickup code has {len(text)} characters, more than a QR code holds at error "
                         f"correction M ({MAX_QR_CHARS}): shorten the dosage instructions")
    return text


def parse_pickup_code(text: object) -> str:
    """The compact JWS in a scanned or pasted pickup code (surrounding spaces and line breaks allowed).
    Checks the form only: `pickup_signer` and `open_pickup_code` check the rest."""
    if not isinstance(text, str):
        raise ValueError("a pickup code is text")  # noqa: TRY004 - callers answer every ValueError with a 4xx
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"a pickup code has at most {MAX_TEXT_CHARS} characters, this has {len(text)}")
    body = text.strip(" \t\r\n")
    if not body.startswith(PREFIX):
        if body[:len(PREFIX)].upper() == PREFIX:
            raise ValueError(f"a pickup code starts with {PREFIX} exactly (upper case)")
        raise ValueError(f"not a pickup code: it starts with {PREFIX}")
    jws = body[len(PREFIX):]
    if not _JWS.fullmatch(jws):
        raise ValueError(f"not a pickup code: after {PREFIX} come three base64url parts separated by dots")
    return jws


def pickup_signer(jws: str) -> str:
    """The DID whose ledger verkey verifies this code (from its kid; nothing is trusted yet)."""
    doc = signed.SignedDocument.parse(jws)
    if doc.typ != TYP:
        raise signed.SignatureInvalid(signed.Problem.WRONG_TYPE, f"not a pickup code (typ must be {TYP})")
    return doc.signer_did


def open_pickup_code(jws: str, verkey: str) -> PickupCode:
    """The pickup code, if the signature verifies under `verkey` (the ledger's verkey for
    `pickup_signer(jws)`) and the payload is a valid pickup code issued by that same DID."""
    payload = signed.verify(jws, verkey, typ=TYP)
    code = PickupCode.from_payload(payload)
    if code.iss != signed.SignedDocument.parse(jws).signer_did:  # verify() checked iss already: kept explicit
        raise signed.SignatureInvalid(signed.Problem.SIGNER_MISMATCH, "the code's issuer is not its signer")
    return code
