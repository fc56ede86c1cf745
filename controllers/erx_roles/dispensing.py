"""May this be dispensed? The pharmacy's decisions as pure functions, with no I/O.

The holder composes its presentation: which credential (sub-proof) proves which referent, and in which
order the sub-proofs' identifiers are listed. So nothing here looks at "the first identifier":

* the revealed attribute group and every requested predicate must be proven by one and the same
  sub-proof, and that sub-proof's credential must be over the national prescription schema;
* its issuer (the DID that wrote *that* sub-proof's credential definition) must be trusted: listed on
  the national register of prescribers, unless the pharmacy's own override allows or denies it
  (`trusted()`);
* the agent's cryptographic verification must have said "true";
* the revealed values must be the ones the proof signs (raw values encode to the proven values);
* then the token, read from the chain, must be live, unspent and valid at the chain's time.

`examine()` reads what was proven from a verified presentation; `decide()` turns that, the trust
list and the chain's facts into one refusal or none; `abandoned()` names what a wallet's problem
report means. The service only fetches inputs and records the outcome.
"""

from __future__ import annotations

from enum import StrEnum

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from erx_contracts.client import TokenStatus
from erx_schemas.paper import PickupCode
from erx_schemas.prescription import (REVEALED_FOR_DISPENSING, Medication, Prescriber, PresentedPrescription, Refusal,
                                      RefusalReason, RevealedPrescription, TherapyPart, TokenRef, text_problem)

ATTRIBUTE_GROUP = "prescription"
_INT32 = 2**31


def encode(raw: str) -> str:
    """AnonCreds' encoding of a raw attribute value, as ACA-Py computes it: a string that reads as a
    32-bit integer stands for that integer, anything else for the integer of its SHA-256."""
    try:
        value = int(raw)
        if -_INT32 <= value < _INT32:
            return str(value)
    except ValueError:
        pass
    return str(int.from_bytes(hashlib.sha256(raw.encode()).digest(), "big"))


class Identifiers(BaseModel):
    schema_id: str
    cred_def_id: str
    rev_reg_id: str | None = None
    timestamp: int | None = None


@dataclass(frozen=True)
class Presented:
    """What one sub-proof proved: the prescription it reveals and the credential it comes from."""

    prescription: RevealedPrescription
    identifiers: Identifiers
    verified: bool
    sub_proof: int


@dataclass(frozen=True)
class ChainFacts:
    """What the chain says about the presented token, read after `examine()`."""

    on_our_chain: bool  # the token's chain id and contract are the ones this pharmacy spends on
    status: TokenStatus | None  # None when not on our chain
    now: int | None  # the chain's time (latest block)


class Override(StrEnum):
    """A pharmacy's own decision about one credential definition, on top of the national register."""

    ALLOW = "allow"  # e.g. a practice abroad, or one the register has not listed yet
    DENY = "deny"    # e.g. a practice under investigation, before the authority has acted


def issuer_did(cred_def_id: str) -> str:
    """The DID that wrote a credential definition: the ledger only accepts a CLAIM_DEF whose id starts
    with its submitter's DID, so this is who signed every credential under it."""
    return cred_def_id.split(":", 1)[0]


def trusted(override: Override | None, registered: bool) -> bool:
    """The pharmacy's override wins; without one, the national register decides."""
    if override is not None:
        return override is Override.ALLOW
    return registered


def _invalid(detail: str) -> Refusal:
    return Refusal(reason=RefusalReason.INVALID_PRESENTATION, detail=detail)


def examine(request: dict, presentation: dict, verified: str | None, schema_id: str) -> Presented | Refusal:
    """Which single credential proves the request, and what it reveals; or why the presentation is
    not one genuine prescription. `request` is the proof request the pharmacy sent, `presentation`
    the AnonCreds presentation as received, `verified` the agent's verdict ("true"/"false")."""
    proof = presentation.get("requested_proof") or {}
    identifiers = presentation.get("identifiers") or []
    group = (proof.get("revealed_attr_groups") or {}).get(ATTRIBUTE_GROUP)
    if not isinstance(group, dict) or not isinstance(group.get("sub_proof_index"), int):
        return _invalid("the prescription's attributes were not revealed")
    index = group["sub_proof_index"]
    if not 0 <= index < len(identifiers):
        return _invalid("the attributes name a sub-proof the presentation does not have")
    asked = set((request.get("requested_predicates") or {}))
    proven = proof.get("predicates") or {}
    if set(proven) != asked:
        return _invalid(f"the presentation proves predicates {sorted(proven)}, not {sorted(asked)}")
    others = sorted(name for name, p in proven.items() if not isinstance(p, dict) or p.get("sub_proof_index") != index)
    if others:
        return _invalid(f"predicates {others} are proven by another credential than the prescription's attributes")
    if proof.get("self_attested_attrs") or proof.get("revealed_attrs") or proof.get("unrevealed_attrs"):
        return _invalid("the presentation carries attributes the request did not ask for in this form")
    try:
        ids = Identifiers.model_validate(identifiers[index])
    except ValidationError:
        return _invalid("the sub-proof's identifiers are unreadable")
    if ids.schema_id != schema_id:
        return _invalid(f"the credential is over schema {ids.schema_id}, not the national prescription schema")
    values = group.get("values") or {}
    raw: dict[str, str] = {}
    for name in REVEALED_FOR_DISPENSING:
        value = values.get(name)
        if not isinstance(value, dict) or not isinstance(value.get("raw"), str):
            return _invalid(f"attribute {name} was not revealed")
        if value.get("encoded") != encode(value["raw"]):
            return _invalid(f"attribute {name}: the revealed value is not the one the proof signs")
        raw[name] = value["raw"]
    try:
        prescription = RevealedPrescription.from_attributes(raw)
    except (ValueError, ValidationError) as exc:
        return _invalid(f"unreadable prescription: {str(exc).splitlines()[0][:200]}")
    return Presented(prescription=prescription, identifiers=ids, verified=verified == "true", sub_proof=index)


def token_refusal(chain: ChainFacts) -> Refusal | None:
    """The token's own verdict: exists, not cancelled, not used up, valid at the chain's time."""
    status = chain.status
    if not chain.on_our_chain or status is None:
        return Refusal(reason=RefusalReason.UNKNOWN_TOKEN, detail="the token is not on this pharmacy's chain")
    if not status.exists:
        return Refusal(reason=RefusalReason.UNKNOWN_TOKEN)
    if status.cancelled:
        return Refusal(reason=RefusalReason.CANCELLED)
    if status.remaining == 0:
        return Refusal(reason=RefusalReason.ALREADY_REDEEMED)
    if chain.now is not None and chain.now < status.not_before:
        opens = dt.datetime.fromtimestamp(status.not_before, dt.UTC).date().isoformat()
        return Refusal(reason=RefusalReason.NOT_YET_VALID, detail=f"valid from {opens}")
    if chain.now is None or not status.not_before <= chain.now <= status.not_after:
        return Refusal(reason=RefusalReason.EXPIRED)
    return None


def decide(presented: Presented | Refusal, is_trusted: Callable[[str], bool], chain: ChainFacts | None,
           verification_detail: str = "") -> Refusal | None:
    """None: the prescription may be dispensed. Otherwise the one reason it may not.

    A presentation that does not verify is refused as `revoked` only when the chain confirms that
    its prescriber withdrew it (revocation cancels the token); ACA-Py itself does not say why."""
    if isinstance(presented, Refusal):
        return presented
    if not presented.verified:
        if chain is not None and chain.on_our_chain and chain.status is not None and chain.status.cancelled:
            return Refusal(reason=RefusalReason.REVOKED, detail=verification_detail)
        return _invalid(verification_detail or "the proof does not verify")
    if not is_trusted(presented.identifiers.cred_def_id):
        return Refusal(reason=RefusalReason.UNTRUSTED_ISSUER,
                       detail=f"{presented.prescription.prescriber.name}, credential definition "
                              f"{presented.identifiers.cred_def_id}")
    if chain is None:
        raise ValueError("a verified, trusted prescription needs the chain's facts to be decided")
    return token_refusal(chain)


def shown(presented: Presented | Refusal, refusal: Refusal | None) -> bool:
    """May the pharmacy show and keep what was presented? Only what a trusted prescriber provably
    signed: never the content of a forged, unverifiable or untrusted presentation."""
    return isinstance(presented, Presented) and presented.verified and (
        refusal is None or refusal.reason not in (RefusalReason.INVALID_PRESENTATION, RefusalReason.REVOKED,
                                                  RefusalReason.UNTRUSTED_ISSUER))


_DECLINED = ("declin", "reject", "refus", "denied", "cancelled by the user")
_NOTHING_HELD = ("unable to automatically select", "no prescription", "no credential", "no matching",
                 "not found", "could not find")


def abandoned(error_msg: str | None) -> Refusal:
    """What a wallet's problem report (the exchange ended `abandoned`) means for the pharmacist.

    Wallets answer with a problem report when they will not or cannot present: the user declined
    (both our stand-in and Credo say "declined"), or nothing held answers the request (Credo: "Unable
    to automatically select requested attributes"; it skips revoked credentials and never checks
    predicates, so a wallet whose one prescription is revoked says this). Our predicates are only the
    validity dates, so a wallet reporting an unmet predicate holds no prescription valid today."""
    text = (error_msg or "").strip() or "the wallet abandoned the request without saying why"
    lowered = text.lower()
    if "predicate" in lowered:
        # our predicates: valid_from <= today (unmet: not valid yet) and valid_until >= today (unmet: expired)
        reason = RefusalReason.NOT_YET_VALID if "valid_from" in lowered and "valid_until" not in lowered \
            else RefusalReason.EXPIRED
        return Refusal(reason=reason, detail=text)
    if any(word in lowered for word in _DECLINED):
        return Refusal(reason=RefusalReason.DECLINED, detail=text)
    if any(words in lowered for words in _NOTHING_HELD):
        return Refusal(reason=RefusalReason.NO_MATCHING_CREDENTIAL, detail=text)
    return _invalid(f"the wallet could not present: {text}")


# -- pickup codes (paper prescriptions, representatives) ----------------------------------------------

def revealed_from_pickup(code: PickupCode) -> RevealedPrescription:
    """What a verified pickup code says, as the prescription a presentation reveals."""
    m = code.medication
    therapy = code.therapy
    return RevealedPrescription(
        prescription_id=code.prescription_id, patient_name=code.patient_name,
        patient_birth_date=code.patient_birth_date,
        medication=Medication(name=m.name, code=m.code, code_system=m.code_system, strength=m.strength, form=m.form),
        dosage_instructions=code.dosage_instructions, quantity=code.quantity,
        substitution_allowed=code.substitution_allowed,
        prescriber=Prescriber(name=code.prescriber.name, identifier=code.prescriber.identifier),
        therapy=TherapyPart(therapy_id=therapy.therapy_id, part=therapy.part, parts=therapy.parts) if therapy
        else TherapyPart(therapy_id=code.prescription_id, part=1, parts=1),
        token=TokenRef(chain_id=code.token.chain_id, contract=code.token.contract, secret_key=code.token.secret_key))


def pickup_refusal(code: PickupCode, is_trusted: bool, chain: ChainFacts) -> Refusal | None:
    """A verified pickup code's verdict: its signer trusted (the register of prescribers, or this
    pharmacy's override), then the token's own. None: it may be dispensed."""
    if not is_trusted:
        return Refusal(reason=RefusalReason.UNTRUSTED_ISSUER,
                       detail=f"{code.prescriber.name}, practice DID {code.iss} is not a trusted prescriber")
    return token_refusal(chain)


# -- substitution: what the pharmacist may hand over instead --------------------------------------------

class SubstitutionKind(StrEnum):
    GENERIC = "generic"  # another product: same active ingredient, strength and form (needs substitution_allowed)
    PACK_SIZE = "pack_size"  # the prescribed medication in another pack: at most the prescribed quantity


MAX_REASON_CHARS = 300


class Substitution(BaseModel):
    """What the pharmacist hands over instead of exactly what was prescribed, and why. The model only
    types it; whether it may be dispensed is `substitution_problem`'s decision."""

    model_config = ConfigDict(extra="forbid")

    kind: SubstitutionKind
    medication: Medication | None = Field(default=None, description="generic: the product handed over (the "
                                          "prescribed strength and form, another product code); pack_size: none")
    quantity: int | None = Field(default=None, description="units handed over: pack_size: required, 1 to the "
                                 "prescribed quantity; generic: optional (default: the prescribed quantity)")
    reason: str = Field(default="", max_length=MAX_REASON_CHARS, description="why (required); the receipt and "
                        "the FHIR MedicationDispense record it")

    @field_validator("reason")
    @classmethod
    def _readable(cls, value: str) -> str:
        problem = text_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value


def _same(a: str, b: str) -> bool:
    """Strength and form as people write them: '400 mg' is '400mg' is '400 MG'."""
    return "".join(a.split()).casefold() == "".join(b.split()).casefold()


def _quantity_problem(quantity: int, prescription: PresentedPrescription) -> str | None:
    unit = prescription.medication.form
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        return f"the quantity handed over is a whole number of at least 1 {unit}"
    if quantity > prescription.quantity:
        return (f"at most the prescribed quantity ({prescription.quantity} {unit}) may be handed over, "
                f"not {quantity}")
    return None


def substitution_problem(prescription: PresentedPrescription, substitution: Substitution | None) -> str | None:
    """Why this substitution may not be dispensed for this prescription (the rule it breaks), or None.

    * a generic: only if the prescriber allowed substitution (no aut idem), of the prescribed strength and
      form, another product (a product code other than the prescribed one), optionally fewer units;
    * another pack size: of the prescribed medication itself, at least 1 and at most the prescribed quantity
      (equal: e.g. 2 packs of 10 for 1 of 20). Aut idem does not rule it out: the product is the same;
    * either one with a reason, and no 64-digit hex value in what is written down (a token key has that form).
    """
    if substitution is None:
        return None
    prescribed = prescription.medication
    if substitution.kind is SubstitutionKind.GENERIC:
        generic = substitution.medication
        if not prescription.substitution_allowed:
            return "the prescriber ruled out substitution (aut idem): hand over exactly the prescribed product"
        if generic is None:
            return "a generic substitution names the product handed over (medication)"
        if not _same(generic.strength, prescribed.strength):
            return f"a generic has the prescribed strength ({prescribed.strength}), not {generic.strength}"
        if not _same(generic.form, prescribed.form):
            return f"a generic has the prescribed form ({prescribed.form}), not {generic.form}"
        if generic.code_system == prescribed.code_system and generic.code.casefold() == prescribed.code.casefold():
            return (f"a generic is another product: its product code must differ from the prescribed one "
                    f"({prescribed.code_system} {prescribed.code})")
        if substitution.quantity is not None and (problem := _quantity_problem(substitution.quantity, prescription)):
            return problem
    else:
        if substitution.medication is not None:
            return ("another pack size is of the prescribed medication: name no other product (that is a "
                    "generic substitution)")
        if substitution.quantity is None:
            return "another pack size says how many units are handed over (quantity)"
        if problem := _quantity_problem(substitution.quantity, prescription):
            return problem
    if not substitution.reason.strip():
        return "a substitution needs a reason"
    return None  # (a key-shaped reason or name is refused by the text rules where it enters)


def as_dispensed(prescription: PresentedPrescription, substitution: Substitution) -> Substitution:
    """The substitution as the record keeps it: with the medication and quantity actually handed over."""
    return substitution.model_copy(update={
        "medication": substitution.medication or prescription.medication,
        "quantity": substitution.quantity if substitution.quantity is not None else prescription.quantity,
        "reason": substitution.reason.strip()})
