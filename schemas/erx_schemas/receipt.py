"""The dispense receipt: the pharmacy's FHIR MedicationDispense, with the token's spend transaction,
signed with the pharmacy's public DID key (erx_schemas.signed: EdDSA, kid did:sov:<pharmacy DID>#key-1,
typ "erx-receipt+jwt"). Anyone verifies it against the pharmacy's verkey on the Indy ledger:

    did = receipt_signer(jws); verkey = <the ledger's verkey for did>; receipt = open_receipt(jws, verkey)

A receipt never holds the token's secret key: the only 32-byte hex value allowed in it is the spend
transaction's hash (a secret key has the same form, so any other is refused).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from typing import Annotated, Any, Literal

from fhir.resources.R4B.medicationdispense import MedicationDispense
from pydantic import (AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, ValidationError,
                      field_validator, model_validator)

from erx_schemas import signed

TYP = "erx-receipt+jwt"
VERSION = 1
MAX_RESOURCE_CHARS = 16_000  # a MedicationDispense of this system is about 1,500
TOKEN_SPEND_TX_SYSTEM = "urn:erx:token-spend-tx"  # the identifier erx_schemas.fhir.medication_dispense writes

IndyDid = Annotated[str, StringConstraints(pattern=r"^[1-9A-HJ-NP-Za-km-z]{21,22}$")]
TxHash = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-fA-F]{64}$")]
_LONG_HEX = re.compile(r"[0-9a-fA-F]{64,}")  # a 32-byte hex value, alone or inside a longer run


class ReceiptInvalid(ValueError):
    """A signed document that is no valid receipt; the message names fields, never their values."""


class DispenseReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, hide_input_in_errors=True,
                              validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    v: Literal[1] = VERSION
    iss: IndyDid = Field(description="the pharmacy's public DID (unqualified), the JWS kid's DID")
    tx_hash: TxHash = Field(alias="tx", description="the token's spend transaction")
    dispensed_at: AwareDatetime = Field(alias="at")
    medication_dispense: dict[str, Any] = Field(alias="dispense", description="FHIR R4 MedicationDispense")

    @field_validator("medication_dispense")
    @classmethod
    def _fhir(cls, resource: dict[str, Any]) -> dict[str, Any]:
        try:
            written = json.dumps(resource)
        except (TypeError, ValueError):
            raise ValueError("the MedicationDispense is not JSON") from None
        if len(written) > MAX_RESOURCE_CHARS:
            raise ValueError(f"the MedicationDispense is longer than {MAX_RESOURCE_CHARS} characters as JSON")
        if resource.get("resourceType") != "MedicationDispense":
            raise ValueError("resourceType must be MedicationDispense")
        try:
            MedicationDispense.model_validate(copy.deepcopy(resource))
        except ValidationError as exc:
            where = sorted({".".join(str(p) for p in e["loc"][:3]) for e in exc.errors(include_input=False)})[:5]
            raise ValueError(f"not a valid FHIR R4 MedicationDispense (at {', '.join(where)})") from None
        except Exception as exc:  # noqa: BLE001 - the library raises more than ValidationError on bad input
            raise ValueError(f"not a valid FHIR R4 MedicationDispense ({type(exc).__name__})") from None
        return resource

    @model_validator(mode="after")
    def _consistent(self) -> DispenseReceipt:
        resource = self.medication_dispense
        written = json.dumps(resource)
        others = {run.lower() for run in _LONG_HEX.findall(written)} - {self.tx_hash.lower()[2:]}
        if others:
            raise ValueError("the MedicationDispense holds a 32-byte hex value other than the spend transaction's "
                             "hash (it could be a token key): a receipt never carries one")
        for identifier in resource.get("identifier") or []:
            if isinstance(identifier, dict) and identifier.get("system") == TOKEN_SPEND_TX_SYSTEM \
                    and str(identifier.get("value", "")).lower() != self.tx_hash.lower():
                raise ValueError("the MedicationDispense names another spend transaction than the receipt")
        handed_over = resource.get("whenHandedOver")
        if handed_over is not None:
            try:
                when = dt.datetime.fromisoformat(handed_over)
            except (TypeError, ValueError):
                raise ValueError("whenHandedOver is not a date and time") from None
            if when.tzinfo is None or when != self.dispensed_at:
                raise ValueError("the MedicationDispense's whenHandedOver is not the receipt's dispensed_at")
        return self

    def signing_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> DispenseReceipt:
        try:
            return cls.model_validate_json(json.dumps(payload), by_alias=True, by_name=False)
        except ValidationError as exc:
            parts = [f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in exc.errors(include_input=False, include_url=False)[:10]]
            raise ReceiptInvalid("not a valid dispense receipt: " + "; ".join(parts)) from None


def receipt_signer(jws: str) -> str:
    """The DID whose ledger verkey verifies this receipt (from its kid; nothing is trusted yet)."""
    doc = signed.SignedDocument.parse(jws)
    if doc.typ != TYP:
        raise signed.SignatureInvalid(signed.Problem.WRONG_TYPE, f"not a dispense receipt (typ must be {TYP})")
    return doc.signer_did


def open_receipt(jws: str, verkey: str) -> DispenseReceipt:
    """The receipt, if its signature verifies under `verkey` (the ledger's verkey for `receipt_signer(jws)`)
    and its payload is a valid receipt issued by that same DID."""
    payload = signed.verify(jws, verkey, typ=TYP)
    receipt = DispenseReceipt.from_payload(payload)
    if receipt.iss != signed.SignedDocument.parse(jws).signer_did:
        raise signed.SignatureInvalid(signed.Problem.SIGNER_MISMATCH, "the receipt's issuer is not its signer")
    return receipt
