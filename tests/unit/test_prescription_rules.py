"""The one set of rules a prescription follows, each refused with the field named: codes per code system,
free text, dates; and the readers after issuance (credential attributes, FHIR) accepting what it accepts."""

from __future__ import annotations

import copy
import datetime as dt
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.medicationdispense import MedicationDispense
from pydantic import SecretStr, ValidationError

from erx_schemas.fhir import FhirMappingError, medication_dispense, order_from_medication_request
from erx_schemas.prescription import (LAST_VALID_DAY, MAX_VALIDITY_DAYS, REVEALED_FOR_DISPENSING, Medication,
                                      Prescriber, Prescription, PrescriptionOrder, RevealedPrescription, TokenRef,
                                      code_problem, input_context, text_problem)

TODAY = dt.date(2026, 12, 1)
MEDICATION = {"name": "Ibuprofen", "code": "M01AE01", "code_system": "ATC", "strength": "400 mg", "form": "tablet"}
ORDER: dict[str, Any] = {"patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
                         "medication": MEDICATION, "dosage_instructions": "1-0-1", "quantity": 20, "redemptions": 2}
FIXTURE = Path(__file__).parent.parent / "fixtures" / "fhir" / "medication-request-ibuprofen.json"


def errors_of(data: dict, *, today: dt.date | None = TODAY, **kw: Any) -> dict[str, str]:
    """field -> message of every error, validating as input (JSON, strict, as the API does)."""
    context = input_context(today) if today else None
    with pytest.raises(ValidationError) as err:
        PrescriptionOrder.model_validate_json(json.dumps(data), context=context, **kw)
    return {".".join(map(str, e["loc"])): e["msg"] for e in err.value.errors()}


def accepted(data: dict, today: dt.date | None = TODAY) -> PrescriptionOrder:
    return PrescriptionOrder.model_validate_json(json.dumps(data), context=input_context(today) if today else None,
                                                 strict=True, extra="forbid")


def medication(**changes: Any) -> dict:
    return {"medication": MEDICATION | changes}


# -- medication codes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("system, code", [
    ("ATC", "M01AE01"), ("ATC", "N02BE01"), ("ATC", "V03AB15"),
    ("PZN", "01234567"), ("RXNORM", "1"), ("RXNORM", "197806"), ("SNOMED", "322236009"),
    ("SNOMED", "123456"), ("SNOMED", "1" * 18), ("EAN", "40123455"), ("EAN", "4012345678901"),
])
def test_codes_of_each_system(system, code):
    assert accepted(ORDER | medication(code_system=system, code=code)).medication.code == code


@pytest.mark.parametrize("system, code, says", [
    ("ATC", "M01  AE01", "no spaces"),  # the attacker's code: accepted before, bricked the dispense
    ("ATC", "M01AE01 ", "no spaces"),
    ("ATC", " M01AE01", "no spaces"),
    ("ATC", "M01AE01\t", "no spaces"),
    ("ATC", "m01ae01", "upper case"),
    ("ATC", "M01AE", "7-character"),  # a chemical subgroup, not a substance
    ("ATC", "M01", "7-character"),
    ("ATC", "X01AE01", "7-character"),  # no such anatomical group
    ("ATC", "M01AE011", "7-character"),
    ("PZN", "1234567", "8 digits"),
    ("PZN", "0123456A", "8 digits"),
    ("PZN", "٠١٢٣٤٥٦٧", "8 digits"),  # Arabic-Indic digits are digits to Python, not to a PZN
    ("RXNORM", "0197806", "leading zero"),
    ("RXNORM", "12345678901", "1 to 10 digits"),
    ("SNOMED", "12345", "6 to 18 digits"),
    ("SNOMED", "1" * 19, "6 to 18 digits"),
    ("EAN", "401234567890", "8 or 13"),
])
def test_bad_codes_are_refused_not_normalised(system, code, says):
    errors = errors_of(ORDER | medication(code_system=system, code=code))
    assert list(errors) == ["medication.code"] and says in errors["medication.code"]
    assert code_problem(system, code) is not None


def test_code_system_is_named_not_guessed():
    assert list(errors_of(ORDER | medication(code_system="ICD10"))) == ["medication.code_system"]
    assert list(errors_of(ORDER | medication(code_system="A" * 100_000))) == ["medication.code_system"]


# -- free text ---------------------------------------------------------------------------------------------

TEXT_FIELDS = ["patient_name", "dosage_instructions", "medication.name", "medication.strength", "medication.form"]


def with_text(field: str, value: str) -> dict:
    if field.startswith("medication."):
        return ORDER | medication(**{field.split(".")[1]: value})
    return ORDER | {field: value}


@pytest.mark.parametrize("field", TEXT_FIELDS)
@pytest.mark.parametrize("value, says", [
    ("Ibu  profen", "two spaces"),
    (" Ibuprofen", "begin or end"),
    ("Ibuprofen ", "begin or end"),
    (" ", "begin or end"),
    ("Ibu\tprofen", "U+0009"),
    ("Ibu\nprofen", "U+000A"),
    ("Ibu\u00a0profen", "NO-BREAK SPACE"),
    ("Ibu\u2028profen", "LINE SEPARATOR"),
    ("Ibu\u3000profen", "IDEOGRAPHIC SPACE"),
    ("Ibu\x00profen", "control character U+0000"),
    ("Ibu\x7fprofen", "control character U+007F"),
    ("Ibu\x85profen", "U+0085"),
    ("Ibu\x9bprofen", "control character U+009B"),
    ("Ibu\u202eprofen", "bidirectional"),
    ("Ibu\u2066profen", "bidirectional"),
    ("Ibu\ud800profen", "surrogate"),
])
def test_free_text_rules(field, value, says):
    assert says in text_problem(value)
    if "\ud800" in value:  # neither JSON parsers nor pydantic's str let a lone surrogate through
        with pytest.raises(ValidationError) as err:
            PrescriptionOrder.model_validate(with_text(field, value))
        assert [".".join(map(str, e["loc"])) for e in err.value.errors()] == [field]
        return
    errors = errors_of(with_text(field, value))
    assert list(errors) == [field] and says in errors[field], errors


@pytest.mark.parametrize("value", ["Ibuprofen", "Müller-Lüdenscheidt", "إيبوبروفين", "布洛芬", "O'Brien, Jr.",
                                   "1-0-1 (morning/evening), max. 3×/day", "Zoë\u200dWilliams", "פרופן\u200f 400"])
def test_free_text_in_any_script(value):
    assert text_problem(value) is None
    for field in TEXT_FIELDS:
        accepted(with_text(field, value))


@pytest.mark.parametrize("field, limit", [("patient_name", 200), ("dosage_instructions", 500),
                                          ("medication.name", 200), ("medication.strength", 60),
                                          ("medication.form", 60)])
def test_every_text_has_a_cap(field, limit):
    accepted(with_text(field, "x" * limit))
    assert list(errors_of(with_text(field, "x" * (limit + 1)))) == [field]


def test_prescriber_rules():
    Prescriber(name="Dr. Anna Schmidt", identifier="123456789")
    Prescriber(name="Dr. Anna Schmidt", identifier="NcYxiDXkpYi6ov5FcYDi1e")
    for bad in ({"name": "Dr.  Anna"}, {"identifier": "123 456"}, {"identifier": "x" * 61}, {"identifier": "1\n"}):
        with pytest.raises(ValidationError) as err:
            Prescriber.model_validate({"name": "Dr. Anna Schmidt", "identifier": "123"} | bad)
        assert [e["loc"] for e in err.value.errors()] == [(next(iter(bad)),)]


# -- strict JSON types, no unknown fields ------------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"quantity": True}, "quantity"),
    ({"quantity": "2"}, "quantity"),
    ({"quantity": 2.0}, "quantity"),
    ({"redemptions": "2"}, "redemptions"),
    ({"patient_birth_date": 19640812}, "patient_birth_date"),
    ({"valid_from": 1800000000}, "valid_from"),
    ({"valid_from": "2026-12-01T00:00:00"}, "valid_from"),
    ({"patient_name": 5}, "patient_name"),
    ({"medication": MEDICATION | {"code": 1234567}}, "medication.code"),
    ({"unknown": 1}, "unknown"),
    ({"medication": MEDICATION | {"strength_unit": "mg"}}, "medication.strength_unit"),
])
def test_input_is_strict(change, field):
    assert field in errors_of(ORDER | change, strict=True, extra="forbid")


def test_unknown_fields_are_refused_even_without_the_api():
    assert "unknown" in errors_of(ORDER | {"unknown": 1})


# -- dates -------------------------------------------------------------------------------------------------

def test_dates_default_to_today_and_four_weeks():
    order = accepted(ORDER)
    assert (order.valid_from, order.valid_until) == (TODAY, TODAY + dt.timedelta(days=28))


@pytest.mark.parametrize("change, field, says", [
    ({"valid_until": "2200-01-01"}, "valid_until", "2106-02-06"),  # the attacker's dates: 500 before
    ({"valid_until": "9999-12-31"}, "valid_until", "2106-02-06"),
    ({"valid_from": "0001-01-01"}, "valid_from", "1970-01-01"),
    ({"valid_from": "9999-12-31"}, "valid_from", "2106-02-06"),
    ({"valid_from": "2106-02-01"}, "valid_until", "valid_from + the default window"),  # the default would overflow the chain
    ({"valid_from": "2026-11-29"}, "valid_from", "in the past"),
    ({"valid_from": "2026-12-01", "valid_until": "2027-12-02"}, "valid_until", f"{MAX_VALIDITY_DAYS} days"),
    ({"valid_from": "2030-01-10", "valid_until": "2030-01-01"}, "valid_until", "before valid_from"),
    ({"patient_birth_date": "1899-12-31"}, "patient_birth_date", "1900-01-01"),
    ({"patient_birth_date": "0001-01-01"}, "patient_birth_date", "1900-01-01"),
    ({"patient_birth_date": "2026-12-02"}, "patient_birth_date", "future"),
    ({"patient_birth_date": "9999-12-31"}, "patient_birth_date", "future"),
])
def test_date_bounds(change, field, says):
    errors = errors_of(ORDER | change)
    assert list(errors) == [field] and says in errors[field], errors


def test_date_bounds_that_are_just_inside():
    accepted(ORDER | {"valid_from": "2026-11-30"})  # yesterday: a sender in a time zone behind the server's
    accepted(ORDER | {"valid_from": "2026-12-01", "valid_until": "2027-12-01"})  # 365 days
    accepted(ORDER | {"valid_from": "2105-02-06", "valid_until": LAST_VALID_DAY.isoformat()})
    accepted(ORDER | {"patient_birth_date": "1900-01-01"})
    accepted(ORDER | {"patient_birth_date": TODAY.isoformat()})


def test_a_stored_order_is_not_judged_by_todays_date():
    """Only input must start today: an order read back later (a stored record, or re-validated from
    its dump) keeps its dates, however long ago they were."""
    issued = accepted(ORDER | {"valid_from": "2026-12-01"})
    later = dt.date(2031, 5, 5)
    assert PrescriptionOrder.model_validate_json(issued.model_dump_json()) == issued
    assert PrescriptionOrder(**issued.model_dump()) == issued
    assert "valid_from" in errors_of(json.loads(issued.model_dump_json()), today=later)


# -- after issuance: the credential's attributes ------------------------------------------------------------

def prescription(order: PrescriptionOrder) -> Prescription:
    return Prescription(order=order, prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="123456789"),
                        token=TokenRef(chain_id=1337, contract="0x" + "ab" * 20,
                                       secret_key=SecretStr("0x" + secrets.token_hex(32))))


def revealed_attributes(order: PrescriptionOrder | None = None) -> dict[str, str]:
    attributes = prescription(order or accepted(ORDER)).to_attributes()
    return {name: attributes[name] for name in REVEALED_FOR_DISPENSING}


def test_attributes_read_back_exactly():
    order = accepted(ORDER | medication(name="Ibuprofen Saft"))
    revealed = RevealedPrescription.from_attributes(revealed_attributes(order))
    assert (revealed.patient_name, revealed.patient_birth_date, revealed.medication, revealed.quantity) == \
        (order.patient_name, order.patient_birth_date, order.medication, order.quantity)


@pytest.mark.parametrize("name, value", [
    ("quantity", " 20"), ("quantity", "20.0"), ("quantity", "2_0"), ("quantity", "٢٠"), ("quantity", "020"),
    ("quantity", "0"), ("quantity", "1001"), ("patient_birth_date", "1964-08-12"), ("patient_birth_date", "19640231"),
    ("patient_birth_date", "18991231"), ("token_chain_id", "0x539"), ("medication_code", "M01  AE01"),
    ("medication_code_system", "FOO"), ("patient_name", "Erika\tMustermann"), ("prescription_id", "rx-1"),
    ("prescriber_id", "123 456"),
])
def test_attributes_are_read_as_strictly_as_they_are_written(name, value):
    """A presentation is refused (invalid_presentation) rather than read loosely."""
    with pytest.raises((ValueError, ValidationError)):
        RevealedPrescription.from_attributes(revealed_attributes() | {name: value})


# -- after issuance: FHIR ------------------------------------------------------------------------------------

def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("edit, path, field", [
    (lambda r: r["contained"][1]["code"]["coding"][1].update(code="m01ae01"),
     "MedicationRequest.contained[1].code.coding[1].code", "medication.code"),
    (lambda r: r["contained"][1]["code"].update(text="Ibu\u00a0profen"),
     "MedicationRequest.contained[1].code.text", "medication.name"),
    (lambda r: r["contained"][0]["name"][1].update(given=["Erika "]),
     "MedicationRequest.contained[0].name[1]", "patient_name"),
    (lambda r: r["dosageInstruction"][0].update(text="1-0-1  with meals"),
     "MedicationRequest.dosageInstruction[0].text", "dosage_instructions"),
    (lambda r: r["contained"][0].update(birthDate="1850-01-01"),
     "MedicationRequest.contained[0].birthDate", "patient_birth_date"),
    (lambda r: r["dispenseRequest"].update(validityPeriod={"start": "0001-01-01", "end": "2030-01-01"}),
     "MedicationRequest.dispenseRequest.validityPeriod.start", "valid_from"),
    (lambda r: r["dispenseRequest"].update(validityPeriod={"start": "2030-01-01", "end": "9999-12-31"}),
     "MedicationRequest.dispenseRequest.validityPeriod.end", "valid_until"),
    (lambda r: r["dispenseRequest"].update(validityPeriod={"start": "2020-01-01", "end": "2020-02-01"}),
     "MedicationRequest.dispenseRequest.validityPeriod.start", "valid_from"),
    (lambda r: r["dispenseRequest"].update(validityPeriod={"start": "2106-02-01"}),
     "MedicationRequest.dispenseRequest.validityPeriod.end", "valid_until"),
])
def test_fhir_input_follows_the_same_rules_told_at_the_element(edit, path, field):
    resource = fixture()
    edit(resource)
    with pytest.raises(FhirMappingError) as err:
        order_from_medication_request(resource)
    [problem] = err.value.problems
    assert problem.path == path and f"order field {field}" in problem.message, problem


def test_fhir_code_with_two_spaces_is_refused_before_it_reaches_the_order():
    resource = fixture()
    resource["contained"][1]["code"]["coding"][1]["code"] = "M01  AE01"  # not even a FHIR `code`
    with pytest.raises(FhirMappingError) as err:
        order_from_medication_request(resource)
    assert [p.path for p in err.value.problems] == ["MedicationRequest.contained[1].code.coding[1].code"]


def test_what_issuance_accepts_the_pharmacy_can_dispense():
    """The attacker's path: accepted order -> credential -> presentation -> MedicationDispense."""
    order = accepted(ORDER | medication(name="Ibuprofen 400 akut", strength="400 mg/tablet", form="film tablet"))
    revealed = RevealedPrescription.from_attributes(revealed_attributes(order))
    stored = revealed.model_dump(mode="json", exclude={"token"})  # what the pharmacy keeps per check
    for prescription_ in (revealed, copy.deepcopy(stored)):
        resource = medication_dispense(prescription_, dispense_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f",
                                       when_handed_over=dt.datetime(2026, 12, 1, 10, tzinfo=dt.UTC),
                                       pharmacy_name="Apotheke am Markt", pharmacy_identifier=None,
                                       token_tx_hash=None, remaining_redemptions=1)
        MedicationDispense.model_validate(resource)


def test_strength_with_more_digits_than_a_fhir_decimal_holds_travels_as_text():
    from erx_schemas.fhir import medication_request_from_order
    order = accepted(ORDER | medication(strength="0.1234567890123456789 mg"))
    resource = medication_request_from_order(order, prescription_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f",
                                             prescriber=Prescriber(name="Dr. A", identifier="1"))
    ingredient = resource["contained"][1]["ingredient"][0]
    assert "strength" not in ingredient and ingredient["extension"][0]["valueString"] == "0.1234567890123456789 mg"
    assert order_from_medication_request(json.loads(json.dumps(resource))).medication.strength == \
        "0.1234567890123456789 mg"


def test_medication_model_refuses_what_fhir_would():
    with pytest.raises(ValidationError) as err:
        Medication(name="Ibuprofen", code="M01  AE01", code_system="ATC", strength="400 mg", form="tablet")
    assert [e["loc"] for e in err.value.errors()] == [("code",)]
