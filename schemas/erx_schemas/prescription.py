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
import unicodedata
import uuid
from enum import StrEnum
from typing import Annotated, Any

from eth_account import Account
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StringConstraints, ValidationError,
                      ValidationInfo, field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

SCHEMA_NAME = "erx-prescription"
SCHEMA_VERSION = "2.0"  # 2.0: multi-part therapies, substitution, the signed pickup code

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
    "substitution_allowed",
    "redemptions",
    "valid_from",
    "valid_until",
    "prescriber_name",
    "prescriber_id",
    "issue_date",
    "therapy_id",
    "therapy_part",
    "therapy_parts",
    "token_chain_id",
    "token_contract",
    "token_secret_key",
    "pickup_code",
]

# What a pharmacy needs to dispense, and nothing more. Validity is proven by predicates instead;
# the number of redemptions is read from the chain; the issue date is not needed; the pickup code is
# the wallet's to hand to a representative (it repeats the prescription, signed by the practice).
NOT_REVEALED_FOR_DISPENSING = {"redemptions", "valid_from", "valid_until", "issue_date", "pickup_code"}
REVEALED_FOR_DISPENSING: list[str] = [a for a in ATTRIBUTES if a not in NOT_REVEALED_FOR_DISPENSING]

CODE_SYSTEMS = {"ATC", "PZN", "RXNORM", "SNOMED", "EAN"}
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_PRIVATE_KEY = re.compile(r"^0x[0-9a-fA-F]{64}$")

# -- the rules every prescription follows -------------------------------------------------------------
# One set of rules, checked where a prescription enters (JSON API, web form, FHIR MedicationRequest) and
# again wherever it is read (stored records, credential attributes, the pharmacy's dispense record). They
# are a subset of what every later mapping accepts: AnonCreds attribute strings, FHIR R4 `string`, `code`
# and `date`, and the token contract's validity window. docs/prescription-credential.md, "Rules".

# What a code is in each code system. The exact form only: nothing is upper-cased, trimmed or joined.
CODE_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "ATC": (re.compile(r"[ABCDGHJLMNPRSV][0-9]{2}[A-Z]{2}[0-9]{2}"),
            "a full 7-character ATC substance code (level 5), upper case, e.g. M01AE01"),
    "PZN": (re.compile(r"[0-9]{8}"), "8 digits (PZN-8), e.g. 01234567"),
    "RXNORM": (re.compile(r"[1-9][0-9]{0,9}"), "an RxCUI: 1 to 10 digits, no leading zero, e.g. 197806"),
    "SNOMED": (re.compile(r"[1-9][0-9]{5,17}"), "a SNOMED CT concept id: 6 to 18 digits, no leading zero"),
    "EAN": (re.compile(r"[0-9]{8}|[0-9]{13}"), "an EAN/GTIN of 8 or 13 digits"),
}

# The token contract keeps the validity window as uint32 unix seconds (contracts/src/PrescriptionToken.sol),
# from the start of valid_from to the end of valid_until (UTC): these are the days it can hold.
FIRST_VALID_DAY = dt.date(1970, 1, 1)
LAST_VALID_DAY = (dt.datetime.fromtimestamp(2**32, dt.UTC) - dt.timedelta(days=1)).date()  # 2106-02-06
# How long a prescription may be valid: valid_until - valid_from. A constant, not a setting: it holds for
# every order the schema reads (a lower limit set later would make stored prescriptions unreadable).
MAX_VALIDITY_DAYS = 365
DEFAULT_VALIDITY_DAYS = 28  # valid_until when none is given (a practice may set its own: PrescribingSettings)
# A therapy in parts (gematik's multi-part prescription has 2-4, NHS repeat dispensing issues at intervals
# over up to 12 months): at most this many parts, all within MAX_THERAPY_SPAN_DAYS of the first's start.
MAX_THERAPY_PARTS = 12
MAX_THERAPY_SPAN_DAYS = 365
# valid_from may lie this many days before today, for senders whose calendar is behind the server's.
VALID_FROM_TOLERANCE_DAYS = 1
FIRST_BIRTH_DATE = dt.date(1900, 1, 1)

# Validation context of data entering from outside (API bodies, forms, FHIR): its value is "today".
# Only such input must start today (or yesterday); a stored prescription was checked when it came in.
INPUT = "erx_input"

# Bidirectional embeddings, overrides and isolates can make a text display as something else.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# A 32-byte hex run is a token key's (or a hash's) form: no person writes one, and the records that must
# never hold a key (the dispense receipt, the audit log) refuse what looks like one.
KEY_LIKE = re.compile(r"[0-9a-fA-F]{64}")
_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ATTRIBUTE_NUMBER = re.compile(r"0|[1-9][0-9]{0,19}")
_ATTRIBUTE_DATE = re.compile(r"[0-9]{8}")


RULES = "erx_prescribing_rules"


class ValidityLimit(BaseModel):
    """How long prescriptions of one kind may be valid, the kind told by ATC code prefixes (a product
    coded otherwise, e.g. by PZN, is of the standard kind: its ATC class is not known here)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=80)
    atc_prefixes: list[Annotated[str, StringConstraints(pattern=r"^[A-Z][0-9A-Z]{0,6}$")]] = Field(min_length=1)
    max_days: int = Field(ge=0, le=MAX_VALIDITY_DAYS)


class PrescribingRules(BaseModel):
    """A practice's defaults from practice (configurable, `ControllerConfig.prescribing`): the window a
    prescription gets when none is given, and the longest window per kind of medication."""

    model_config = ConfigDict(extra="forbid")

    default_validity_days: int = Field(default=DEFAULT_VALIDITY_DAYS, ge=0, le=MAX_VALIDITY_DAYS)
    max_validity_days: int = Field(default=MAX_VALIDITY_DAYS, ge=0, le=MAX_VALIDITY_DAYS,
                                   description="for every kind without its own limit")
    limits: list[ValidityLimit] = Field(default_factory=lambda: [
        # Germany's narcotics prescriptions (BtM) are valid 7 days after issue (§ 12 BtMVV)
        ValidityLimit(kind="opioid analgesics (narcotics)", atc_prefixes=["N02A"], max_days=7)])

    def limit(self, medication: Medication) -> ValidityLimit:
        if medication.code_system == "ATC":
            for limit in self.limits:
                if any(medication.code.startswith(prefix) for prefix in limit.atc_prefixes):
                    return limit
        return ValidityLimit(kind="this medication", atc_prefixes=["A"], max_days=self.max_validity_days)

    def default_days(self, medication: Medication) -> int:
        return min(self.default_validity_days, self.limit(medication).max_days)


def input_context(today: dt.date | None = None, rules: PrescribingRules | None = None) -> dict[str, Any]:
    """The validation context for input: `Model.model_validate_json(raw, context=input_context())`.
    `rules`: the practice's defaults and limits (default: the national defaults)."""
    return {INPUT: today or dt.date.today(), RULES: rules or PrescribingRules()}


def _input_today(info: ValidationInfo) -> dt.date | None:
    context = info.context
    today = context.get(INPUT) if isinstance(context, dict) else None
    return today if isinstance(today, dt.date) else None


def _input_rules(info: ValidationInfo) -> PrescribingRules | None:
    context = info.context
    rules = context.get(RULES) if isinstance(context, dict) else None
    return rules if isinstance(rules, PrescribingRules) else None


def _char(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X}" + (f" {name}" if name else "")


def text_problem(value: str) -> str | None:
    """Why `value` is no acceptable free text, or None. Free text is what a person reads (names,
    strength, form, dosage): printable characters, words separated by single spaces."""
    for i, ch in enumerate(value, start=1):
        if ch == " ":
            continue
        if ch.isspace():
            return (f"contains {_char(ch)} at position {i}: the only whitespace allowed is a single space "
                    f"between words (no tabs, line breaks or non-breaking spaces)")
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"contains the control character {_char(ch)} at position {i}"
        if category == "Cs":
            return f"contains an unpaired surrogate ({_char(ch)}) at position {i}: not valid Unicode text"
        if ch in _BIDI_CONTROLS:
            return f"contains the bidirectional control character {_char(ch)} at position {i}"
    if KEY_LIKE.search(value):
        return "contains a run of 64 hexadecimal digits, the form of a key: write no keys or hashes into a prescription"
    if value[:1] == " " or value[-1:] == " ":
        return "must not begin or end with a space"
    if "  " in value:
        return f"contains two spaces in a row at position {value.index('  ') + 1}"
    return None


def _checked_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def code_problem(code_system: str, code: str) -> str | None:
    """Why `code` is no code of `code_system`, or None."""
    pattern, expected = CODE_FORMATS[code_system]
    if pattern.fullmatch(code):
        return None
    if any(ch.isspace() for ch in code):
        return f"{code_system} codes contain no spaces or other whitespace: {expected}"
    if code_system == "ATC" and pattern.fullmatch(code.upper()):
        return f"ATC codes are upper case ({code.upper()}, not {code}): {expected}"
    return f"not a {code_system} code: {expected}"


def _not_before_1900(value: dt.date) -> dt.date:
    if value < FIRST_BIRTH_DATE:
        raise ValueError(f"a birth date must not be before {FIRST_BIRTH_DATE.isoformat()}")
    return value


def _rule_error(title: str, problems: list[tuple[tuple[str | int, ...], str, Any]]) -> ValidationError:
    """A ValidationError whose errors are located at the fields concerned (not at the whole model)."""
    return ValidationError.from_exception_data(title, [
        InitErrorDetails(type=PydanticCustomError("prescription_rule", "{message}", {"message": message}),
                         loc=loc, input=value)
        for loc, message, value in problems])


# Free text: at least one character, a length cap per field, the rules of `text_problem`.
Text = Annotated[str, AfterValidator(_checked_text)]
BirthDate = Annotated[dt.date, AfterValidator(_not_before_1900)]
PrescriptionId = Annotated[str, StringConstraints(pattern=_UUID, max_length=36)]


def yyyymmdd(day: dt.date) -> int:
    return day.year * 10000 + day.month * 100 + day.day


def from_yyyymmdd(value: int | str) -> dt.date:
    v = int(value)
    return dt.date(v // 10000, v // 100 % 100, v % 100)


class Medication(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    code: str = Field(min_length=1, max_length=40, description="in the form of its code system: "
                      + "; ".join(f"{system}: {expected}" for system, (_, expected) in CODE_FORMATS.items()))
    code_system: str = Field(default="ATC", max_length=10, description=f"one of {sorted(CODE_SYSTEMS)}")
    strength: Text = Field(min_length=1, max_length=60, examples=["400 mg"])
    form: Text = Field(min_length=1, max_length=60, examples=["tablet"])

    @field_validator("code_system")
    @classmethod
    def _known_code_system(cls, v: str) -> str:
        if v.upper() not in CODE_SYSTEMS:
            raise ValueError(f"unknown code system {v!r}; use one of {sorted(CODE_SYSTEMS)}")
        return v.upper()

    @model_validator(mode="after")
    def _code_of_its_system(self) -> Medication:
        problem = code_problem(self.code_system, self.code)
        if problem:
            raise _rule_error("Medication", [(("code",), problem, self.code)])
        return self


class PrescriptionOrder(BaseModel):
    """What a doctor fills in. Everything the credential needs except the token, which the doctor's
    controller creates."""

    model_config = ConfigDict(extra="forbid")

    patient_name: Text = Field(min_length=1, max_length=200)
    patient_birth_date: BirthDate
    medication: Medication
    dosage_instructions: Text = Field(min_length=1, max_length=500)
    quantity: int = Field(ge=1, le=1000)
    substitution_allowed: bool = Field(default=True, description="may the pharmacy dispense an equivalent "
                                       "product (a generic) instead? false: exactly this product (aut idem)")
    redemptions: int = Field(default=1, ge=1, le=12)
    valid_from: dt.date | None = Field(default=None, description="default: today. Input must not be before "
                                       f"yesterday ({VALID_FROM_TOLERANCE_DAYS} day's tolerance for time zones)")
    valid_until: dt.date | None = Field(default=None, description=f"default: valid_from + {DEFAULT_VALIDITY_DAYS} "
                                        f"days; at most {MAX_VALIDITY_DAYS} days after valid_from")

    @field_validator("patient_birth_date")
    @classmethod
    def _born(cls, v: dt.date, info: ValidationInfo) -> dt.date:
        if v > (_input_today(info) or dt.date.today()):
            raise ValueError("patient_birth_date is in the future")
        return v

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _on_chain(cls, v: dt.date | None, info: ValidationInfo) -> dt.date | None:
        if v is None:
            return v
        if not FIRST_VALID_DAY <= v <= LAST_VALID_DAY:
            raise ValueError(f"{info.field_name} must be from {FIRST_VALID_DAY.isoformat()} to "
                             f"{LAST_VALID_DAY.isoformat()} (the days the token's validity window can hold)")
        today = _input_today(info)
        earliest = today - dt.timedelta(days=VALID_FROM_TOLERANCE_DAYS) if today else None
        if info.field_name == "valid_from" and earliest and v < earliest:
            raise ValueError(f"valid_from {v.isoformat()} is in the past: a prescription starts today or later "
                             f"(not before {earliest.isoformat()})")
        return v

    @model_validator(mode="after")
    def _window(self, info: ValidationInfo) -> PrescriptionOrder:
        rules = _input_rules(info)
        if self.valid_from is None:
            self.valid_from = _input_today(info) or dt.date.today()
        if self.valid_until is None:
            days = rules.default_days(self.medication) if rules else DEFAULT_VALIDITY_DAYS
            self.valid_until = self.valid_from + dt.timedelta(days=days)
        latest = self.valid_from + dt.timedelta(days=MAX_VALIDITY_DAYS)
        problem = None
        if self.valid_until < self.valid_from:
            problem = "valid_until must not be before valid_from"
        elif self.valid_until > latest:
            problem = (f"valid_until must be at most {MAX_VALIDITY_DAYS} days after valid_from "
                       f"({latest.isoformat()})")
        elif self.valid_until > LAST_VALID_DAY:  # only a default can get here: a given one is checked above
            problem = (f"valid_until (valid_from + the default window) must not be after "
                       f"{LAST_VALID_DAY.isoformat()} (the last day the token's validity window can hold)")
        elif rules and (limit := rules.limit(self.medication)).max_days < self.validity_days:
            problem = (f"a prescription of {limit.kind} is valid at most {limit.max_days} days "
                       f"(until {(self.valid_from + dt.timedelta(days=limit.max_days)).isoformat()})")
        if problem:
            raise _rule_error("PrescriptionOrder", [(("valid_until",), problem, self.valid_until)])
        return self


    def with_window(self, valid_from: dt.date, valid_until: dt.date) -> PrescriptionOrder:
        """The same order over another window, checked by the same rules (but not as input: a later
        part of a therapy starts in the future, which input allows anyway)."""
        data = self.model_dump() | {"valid_from": valid_from, "valid_until": valid_until}
        return PrescriptionOrder.model_validate(data)

    @property
    def validity_days(self) -> int:
        return (self.valid_until - self.valid_from).days


class TherapyPart(BaseModel):
    """Which part of a therapy a prescription is. A prescription on its own is part 1 of 1 of a therapy
    whose id is its own prescription id."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    therapy_id: PrescriptionId
    part: int = Field(ge=1, le=MAX_THERAPY_PARTS)
    parts: int = Field(ge=1, le=MAX_THERAPY_PARTS)

    @model_validator(mode="after")
    def _part_of_parts(self) -> TherapyPart:
        if self.part > self.parts:
            raise _rule_error("TherapyPart", [(("part",), f"part {self.part} of only {self.parts}", self.part)])
        return self


class TherapyPlan(BaseModel):
    """A therapy in parts: the first part is the order as given, each further part starts `interval_days`
    after the one before and is valid as long as the first."""

    model_config = ConfigDict(extra="forbid")

    parts: int = Field(ge=2, le=MAX_THERAPY_PARTS, description="2-4 for a multi-part prescription, up to "
                       f"{MAX_THERAPY_PARTS} for repeats at an interval")
    interval_days: int = Field(ge=1, le=MAX_THERAPY_SPAN_DAYS,
                               description="days from the start of one part to the start of the next")


def therapy_orders(order: PrescriptionOrder, plan: TherapyPlan) -> list[PrescriptionOrder]:
    """Each part's order: the same prescription over its own window. Raises a ValidationError located at
    the plan's fields when the parts would end more than MAX_THERAPY_SPAN_DAYS after the first starts."""
    length = dt.timedelta(days=order.validity_days)
    starts = [order.valid_from + dt.timedelta(days=plan.interval_days * k) for k in range(plan.parts)]
    last_end = starts[-1] + length
    if last_end > order.valid_from + dt.timedelta(days=MAX_THERAPY_SPAN_DAYS) or last_end > LAST_VALID_DAY:
        raise _rule_error("TherapyPlan", [(("interval_days",), (
            f"the last part would be valid until {last_end.isoformat()}: a therapy ends at most "
            f"{MAX_THERAPY_SPAN_DAYS} days after its first part starts ({order.valid_from.isoformat()})"),
            plan.interval_days)])
    return [order.with_window(start, start + length) for start in starts]


def therapy_problem(orders: list[PrescriptionOrder]) -> str | None:
    """Why these orders are no therapy (parts given one by one, e.g. from FHIR), or None: 2 to
    MAX_THERAPY_PARTS parts of one prescription for one patient, within MAX_THERAPY_SPAN_DAYS."""
    if not 2 <= len(orders) <= MAX_THERAPY_PARTS:
        return f"a therapy has 2 to {MAX_THERAPY_PARTS} parts, not {len(orders)}"
    first = orders[0]
    same = {"patient_name", "patient_birth_date", "medication", "dosage_instructions", "substitution_allowed"}
    for number, other in enumerate(orders[1:], start=2):
        differing = sorted(f for f in same if getattr(other, f) != getattr(first, f))
        if differing:
            return f"part {number} differs from part 1 in {', '.join(differing)}: the parts of a therapy are one prescription"
    start = min(o.valid_from for o in orders)
    end = max(o.valid_until for o in orders)
    if end > start + dt.timedelta(days=MAX_THERAPY_SPAN_DAYS):
        return (f"the parts span {start.isoformat()} to {end.isoformat()}: at most {MAX_THERAPY_SPAN_DAYS} days")
    return None


class TokenRef(BaseModel):
    """Where a prescription's redemption token lives, and the one-time key that controls it."""

    chain_id: int = Field(ge=1, le=2**63 - 1)
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
    name: Text = Field(min_length=1, max_length=200)
    identifier: str = Field(min_length=1, max_length=60, pattern=r"^[!-~]+$",
                            description="e.g. the national physician number: printable ASCII, no spaces")


class Prescription(BaseModel):
    """The credential's content, typed. `to_attributes()` / `from_attributes()` convert to and from the
    AnonCreds string attributes."""

    prescription_id: PrescriptionId = Field(default_factory=lambda: str(uuid.uuid4()))
    order: PrescriptionOrder
    prescriber: Prescriber
    issue_date: dt.date = Field(default_factory=dt.date.today)
    token: TokenRef
    therapy: TherapyPart | None = Field(default=None, description="default: part 1 of 1 of its own therapy")
    # the practice-signed code a representative (or a patient without a wallet) redeems with; it repeats
    # the prescription and the token key (erx_schemas.paper), so it is never revealed in a proof
    pickup_code: str = Field(default="", max_length=4000)

    @property
    def therapy_part(self) -> TherapyPart:
        return self.therapy or TherapyPart(therapy_id=self.prescription_id, part=1, parts=1)

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
            "substitution_allowed": int(o.substitution_allowed),
            "redemptions": o.redemptions,
            "valid_from": yyyymmdd(o.valid_from),
            "valid_until": yyyymmdd(o.valid_until),
            "prescriber_name": self.prescriber.name,
            "prescriber_id": self.prescriber.identifier,
            "issue_date": yyyymmdd(self.issue_date),
            "therapy_id": self.therapy_part.therapy_id,
            "therapy_part": self.therapy_part.part,
            "therapy_parts": self.therapy_part.parts,
            "token_chain_id": self.token.chain_id,
            "token_contract": self.token.contract,
            "token_secret_key": self.token.secret_key.get_secret_value(),
            "pickup_code": self.pickup_code,
        }
        assert list(values) == ATTRIBUTES
        return {k: str(v) for k, v in values.items()}


class PresentedPrescription(BaseModel):
    """What a pharmacy may keep and show of a presentation: everything revealed but the token."""

    prescription_id: PrescriptionId
    patient_name: Text = Field(min_length=1, max_length=200)
    patient_birth_date: BirthDate
    medication: Medication
    dosage_instructions: Text = Field(min_length=1, max_length=500)
    quantity: int = Field(ge=1, le=1000)
    substitution_allowed: bool = True
    prescriber: Prescriber
    therapy: TherapyPart


def _attribute_flag(raw: dict[str, str], name: str) -> bool:
    value = raw[name]
    if value not in ("0", "1"):
        raise ValueError(f"attribute {name} is not 0 or 1")
    return value == "1"


def _attribute_number(raw: dict[str, str], name: str) -> int:
    value = raw[name]
    if not isinstance(value, str) or not _ATTRIBUTE_NUMBER.fullmatch(value):
        raise ValueError(f"attribute {name} is not a whole number in decimal digits")
    return int(value)


def _attribute_date(raw: dict[str, str], name: str) -> dt.date:
    value = raw[name]
    try:
        if not isinstance(value, str) or not _ATTRIBUTE_DATE.fullmatch(value):
            raise ValueError
        return from_yyyymmdd(value)
    except ValueError:
        raise ValueError(f"attribute {name} is not a date (YYYYMMDD)") from None


class RevealedPrescription(PresentedPrescription):
    """What a pharmacy learns from a presentation: the revealed attributes, typed, with the token."""

    token: TokenRef

    @classmethod
    def from_attributes(cls, raw: dict[str, str]) -> RevealedPrescription:
        """Reads the attributes as `Prescription.to_attributes()` writes them, and nothing looser: a
        ValueError (or ValidationError, one) names what is wrong."""
        missing = [a for a in REVEALED_FOR_DISPENSING if a not in raw]
        if missing:
            raise ValueError(f"presentation lacks attributes {missing}")
        not_text = [a for a in REVEALED_FOR_DISPENSING if not isinstance(raw[a], str)]
        if not_text:
            raise ValueError(f"attributes {not_text} are not strings")
        return cls(
            prescription_id=raw["prescription_id"],
            patient_name=raw["patient_name"],
            patient_birth_date=_attribute_date(raw, "patient_birth_date"),
            medication=Medication(name=raw["medication_name"], code=raw["medication_code"],
                                  code_system=raw["medication_code_system"],
                                  strength=raw["medication_strength"], form=raw["medication_form"]),
            dosage_instructions=raw["dosage_instructions"],
            quantity=_attribute_number(raw, "quantity"),
            substitution_allowed=_attribute_flag(raw, "substitution_allowed"),
            prescriber=Prescriber(name=raw["prescriber_name"], identifier=raw["prescriber_id"]),
            therapy=TherapyPart(therapy_id=raw["therapy_id"], part=_attribute_number(raw, "therapy_part"),
                                parts=_attribute_number(raw, "therapy_parts")),
            token=TokenRef(chain_id=_attribute_number(raw, "token_chain_id"), contract=raw["token_contract"],
                           secret_key=SecretStr(raw["token_secret_key"])),
        )


class RefusalReason(StrEnum):
    UNTRUSTED_ISSUER = "untrusted_issuer"
    REVOKED = "revoked"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # e.g. a later part of a therapy, before its window opens
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
    RefusalReason.EXPIRED: "the prescription is no longer valid (its validity window has ended)",
    RefusalReason.NOT_YET_VALID: "the prescription is not valid yet (a later part of a therapy: its window has not "
                                 "opened)",
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
