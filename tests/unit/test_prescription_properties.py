"""Property: every order the API accepts survives every later mapping. Issuance accepted a code with two
spaces that the pharmacy's FHIR MedicationDispense then refused; here any accepted `PrescriptionOrder`
must pass, unchanged: JSON and the store, the credential's attributes and back, the MedicationDispense
(FHIR-valid), MedicationRequest out and in again, and the token's validity window on chain.
Whatever the order model refuses it refuses with a ValidationError, never another exception."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from erx_contracts.client import UINT32_MAX, TokenSpec, new_prescription_key
from erx_roles.doctor import _validity_window
from erx_schemas import fhir
from erx_schemas.fhir import medication_dispense, medication_request_from_order, order_from_medication_request
from erx_schemas.prescription import (CODE_FORMATS, FIRST_BIRTH_DATE, LAST_VALID_DAY, MAX_VALIDITY_DAYS,
                                      REVEALED_FOR_DISPENSING, Prescriber, Prescription, PrescriptionOrder,
                                      RevealedPrescription, TokenRef, input_context, yyyymmdd)

TODAY = dt.date.today()  # the FHIR import judges by the real today; a midnight in between is tolerated
PROFILE = settings(max_examples=120, deadline=None, database=None,  # no .hypothesis/ in the work tree
                   suppress_health_check=[HealthCheck.too_slow])
KEY = new_prescription_key()
TOKEN = TokenRef(chain_id=1337, contract="0x" + "ab" * 20, secret_key=SecretStr(KEY.private_key))
HANDED_OVER = dt.datetime(2030, 3, 5, 10, 42, tzinfo=dt.UTC)

# -- what a sender may send -----------------------------------------------------------------------------

ANY_CHARACTER = st.characters(codec="utf-8")  # controls, odd spaces, bidi marks, every script
WORD_CHARACTER = st.characters(codec="utf-8", exclude_categories=("Cc", "Zs", "Zl", "Zp"))


def mostly(valid: st.SearchStrategy, *invalid: st.SearchStrategy) -> st.SearchStrategy:
    """`valid` unless three coin tosses say otherwise: a prescription has many fields, each of which may
    refuse it, and the property is about the accepted ones."""
    return st.tuples(st.booleans(), st.booleans(), st.booleans()).flatmap(
        lambda coins: st.one_of(*invalid) if all(coins) else valid)


def texts(max_size: int) -> st.SearchStrategy[str]:
    words = st.lists(st.text(WORD_CHARACTER, min_size=1, max_size=12), min_size=1, max_size=6).map(" ".join)
    return mostly(words.filter(lambda t: len(t) <= max_size), st.text(ANY_CHARACTER, max_size=max_size + 2))


def codes(system: str) -> st.SearchStrategy[str]:
    pattern = CODE_FORMATS[system][0].pattern
    return mostly(st.from_regex(f"^(?:{pattern})$", fullmatch=True), st.from_regex(f"^(?:{pattern})$"),
                  st.text(max_size=12))


STRENGTHS = mostly(
    st.from_regex(r"[0-9]{1,18}(\.[0-9]{1,18})? ?(mg|g|µg|mL|%|\[iU\]|\{puff\}|I\.E\.|mg x)"
                  r"( ?/ ?([0-9]{1,4}(\.[0-9]{1,3})? ?)?(mL|tablet|tablets|g|dose|Tablette))?", fullmatch=True),
    texts(60))
FORMS = st.one_of(st.sampled_from(["tablet", "film-coated tablet", "mL", "capsule", "Tablette", "solution"]),
                  texts(60))


@st.composite
def medications(draw: st.DrawFn) -> dict[str, Any]:
    system = draw(st.sampled_from(sorted(CODE_FORMATS)))
    return {"name": draw(texts(200)), "code": draw(codes(system)),
            "code_system": draw(st.sampled_from([system, system.lower()])), "strength": draw(STRENGTHS),
            "form": draw(FORMS)}


def days(lo: dt.date, hi: dt.date) -> st.SearchStrategy[str]:
    return st.dates(lo, hi).map(dt.date.isoformat)


def shifted(day: dt.date, by: int) -> str:
    return dt.date.fromordinal(min(max(day.toordinal() + by, 1), dt.date.max.toordinal())).isoformat()


@st.composite
def order_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Orders as JSON would carry them: mostly acceptable, some not, some far outside every bound."""
    start = draw(mostly(st.one_of(st.none(), days(TODAY, LAST_VALID_DAY), days(TODAY, TODAY + dt.timedelta(days=30))),
                        days(dt.date.min, dt.date.max)))
    anchor = dt.date.fromisoformat(start) if start else TODAY
    until = draw(mostly(st.one_of(st.none(), st.integers(0, MAX_VALIDITY_DAYS).map(lambda n: shifted(anchor, n))),
                        st.integers(-2, MAX_VALIDITY_DAYS + 2).map(lambda n: shifted(anchor, n)),
                        days(dt.date.min, dt.date.max)))
    data = {"patient_name": draw(texts(200)),
            "patient_birth_date": draw(mostly(days(FIRST_BIRTH_DATE, TODAY), days(dt.date.min, dt.date.max))),
            "medication": draw(medications()),
            "dosage_instructions": draw(texts(500)),
            "quantity": draw(mostly(st.integers(1, 1000), st.integers(), st.booleans(), st.just("2"))),
            "redemptions": draw(mostly(st.integers(1, 12), st.integers()))}
    for name, value in (("valid_from", start), ("valid_until", until)):
        if value is not None or draw(st.booleans()):
            data[name] = value
    return data


PRESCRIBERS = st.builds(lambda name, identifier: {"name": name, "identifier": identifier},
                        texts(200), st.from_regex(r"[!-~]{1,60}", fullmatch=True))


# -- the property ------------------------------------------------------------------------------------------

@PROFILE
@given(order_inputs(), PRESCRIBERS)
def test_every_accepted_order_survives_every_mapping(data: dict[str, Any], prescriber_data: dict[str, str]):
    try:  # exactly as the REST API reads a body (erx_roles.http.parse_body)
        order = PrescriptionOrder.model_validate_json(json.dumps(data), strict=True, extra="forbid",
                                                      context=input_context(TODAY))
        prescriber = Prescriber.model_validate(prescriber_data)
    except ValidationError:
        event("refused")
        return
    event("accepted")
    stored_and_read_back(order)
    credential_and_dispense(order, prescriber)
    fhir_request_and_back(order, prescriber)
    validity_window_on_chain(order)


def stored_and_read_back(order: PrescriptionOrder) -> None:
    """The doctor's record: stored as JSON, read back without today's input rules, re-validated from a dump."""
    assert PrescriptionOrder.model_validate_json(order.model_dump_json()) == order
    assert PrescriptionOrder(**order.model_dump()) == order
    assert PrescriptionOrder.model_validate_json(order.model_dump_json(), strict=True, extra="forbid",
                                                 context=input_context(TODAY)) == order


def credential_and_dispense(order: PrescriptionOrder, prescriber: Prescriber) -> None:
    attributes = Prescription(order=order, prescriber=prescriber, token=TOKEN).to_attributes()
    assert all(isinstance(value, str) for value in attributes.values())
    for name in ("patient_birth_date", "valid_from", "valid_until", "issue_date"):  # predicates compare them
        assert len(attributes[name]) == 8 and attributes[name].isdigit()
    assert int(attributes["valid_from"]) == yyyymmdd(order.valid_from) <= int(attributes["valid_until"])

    revealed = RevealedPrescription.from_attributes({name: attributes[name] for name in REVEALED_FOR_DISPENSING})
    assert (revealed.patient_name, revealed.patient_birth_date, revealed.medication, revealed.dosage_instructions,
            revealed.quantity, revealed.prescriber) == (order.patient_name, order.patient_birth_date,
                                                        order.medication, order.dosage_instructions, order.quantity,
                                                        prescriber)
    arguments = dict(dispense_id=str(uuid.uuid4()), when_handed_over=HANDED_OVER, pharmacy_name="Apotheke am Markt",
                     pharmacy_identifier="NcYxiDXkpYi6ov5FcYDi1e", token_tx_hash="0x" + "9f" * 32,
                     remaining_redemptions=order.redemptions - 1)
    resource = medication_dispense(revealed, **arguments)
    MedicationDispense.model_validate(resource)
    stored = json.loads(json.dumps(revealed.model_dump(mode="json", exclude={"token"})))  # the pharmacy's record
    assert medication_dispense(stored, **arguments) == resource
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == order.medication.code


def fhir_request_and_back(order: PrescriptionOrder, prescriber: Prescriber) -> None:
    prescription_id = str(uuid.uuid4())
    resource = medication_request_from_order(order, prescription_id=prescription_id, prescriber=prescriber,
                                             authored_on=TODAY)
    MedicationRequest.model_validate(resource)
    read = order_from_medication_request(json.loads(json.dumps(resource)))  # as it travels
    assert read == order.model_copy(update={"medication": order.medication.model_copy(
        update={"strength": read.medication.strength})})
    if read.medication.strength == order.medication.strength:
        return
    # only a strength written as a FHIR Ratio may come back in its normal form, with the same amounts
    event("strength normalised")
    again = medication_request_from_order(read, prescription_id=prescription_id, prescriber=prescriber,
                                          authored_on=TODAY)
    assert order_from_medication_request(json.loads(json.dumps(again))) == read
    first, second = (ingredient(r)["strength"] for r in (resource, again))
    assert first["numerator"] == second["numerator"]
    assert Decimal(str(first["denominator"]["value"])) == Decimal(str(second["denominator"]["value"]))
    assert first["denominator"]["unit"] == second["denominator"]["unit"] or \
        fhir._same_unit(first["denominator"]["unit"], order.medication.form)


def ingredient(resource: dict) -> dict:
    medication = next(r for r in resource["contained"] if r["resourceType"] == "Medication")
    return medication["ingredient"][0]


def validity_window_on_chain(order: PrescriptionOrder) -> None:
    not_before, not_after = _validity_window(order)
    assert 0 <= not_before <= not_after <= UINT32_MAX < 2**64  # the contract's uint32 (so uint64 too)
    TokenSpec(token=KEY.address, redemptions=order.redemptions, not_before=not_before, not_after=not_after)
    assert dt.datetime.fromtimestamp(not_before, dt.UTC).date() == order.valid_from
    assert dt.datetime.fromtimestamp(not_after, dt.UTC).date() == order.valid_until


# -- the generator reaches both sides ------------------------------------------------------------------------

def test_the_generator_produces_accepted_and_refused_orders():
    outcomes = {"accepted": 0, "refused": 0}

    @settings(max_examples=100, deadline=None, database=None)
    @given(order_inputs())
    def count(data: dict[str, Any]) -> None:
        try:
            PrescriptionOrder.model_validate_json(json.dumps(data), strict=True, extra="forbid",
                                                  context=input_context(TODAY))
            outcomes["accepted"] += 1
        except ValidationError:
            outcomes["refused"] += 1

    count()
    assert outcomes["accepted"] >= 25 and outcomes["refused"] >= 10, outcomes
