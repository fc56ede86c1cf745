"""FHIR R4 mapping: MedicationRequest <-> PrescriptionOrder, and the pharmacy's MedicationDispense."""

import copy
import datetime as dt
import json
import pickle
import secrets
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from pydantic import SecretStr

from erx_schemas import fhir
from erx_schemas.fhir import (FhirMappingError, FhirProblem, medication_dispense, medication_request_from_order,
                              order_from_medication_request)
from erx_schemas.prescription import (CODE_SYSTEMS, Medication, Prescriber, PrescriptionOrder, PresentedPrescription,
                                      RevealedPrescription, TherapyPart, TherapyPlan, TokenRef, therapy_orders)

FIXTURE = Path(__file__).parent.parent / "fixtures" / "fhir" / "medication-request-ibuprofen.json"
PATIENT, MEDICATION = 0, 1  # positions in the fixture's `contained`
PRESCRIBER = Prescriber(name="Dr. Anna Schmidt", identifier="123456789")
ATC = "http://www.whocc.no/atc"
PZN = "http://fhir.de/CodeSystem/ifa/pzn"


@pytest.fixture
def request_json() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def problems_of(resource: Any) -> list[FhirProblem]:
    with pytest.raises(FhirMappingError) as err:
        order_from_medication_request(resource)
    assert err.value.problems, "a FhirMappingError must say what is wrong"
    return err.value.problems


# -- the example ------------------------------------------------------------------------------------

def test_realistic_request_maps_to_the_expected_order(request_json):
    untouched = copy.deepcopy(request_json)
    order = order_from_medication_request(request_json)
    assert order == PrescriptionOrder(
        patient_name="Erika Mustermann",  # the official name, not the maiden name listed first
        patient_birth_date=dt.date(1964, 8, 12),
        medication=Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg",
                              form="film-coated tablet"),
        dosage_instructions="1 tablet in the morning and 1 in the evening, with meals",
        quantity=20,
        redemptions=2,  # one repeat
        valid_from=dt.date(2030, 3, 4),
        valid_until=dt.date(2030, 4, 1),
    )
    assert request_json == untouched


def test_without_validity_period_the_order_defaults_apply(request_json):
    del request_json["dispenseRequest"]["validityPeriod"]
    del request_json["dispenseRequest"]["numberOfRepeatsAllowed"]
    order = order_from_medication_request(request_json)
    assert order.valid_from == dt.date.today()
    assert order.valid_until == dt.date.today() + dt.timedelta(days=28)
    assert order.redemptions == 1


def test_datetime_validity_takes_the_date_as_written(request_json):
    request_json["dispenseRequest"]["validityPeriod"] = {"start": "2030-03-04T23:30:00-05:00",
                                                         "end": "2030-04-01T00:10:00+14:00"}
    order = order_from_medication_request(request_json)
    assert (order.valid_from, order.valid_until) == (dt.date(2030, 3, 4), dt.date(2030, 4, 1))


def test_name_from_text_wins_over_parts(request_json):
    request_json["contained"][PATIENT]["name"] = [{"text": "Erika M. Mustermann", "family": "Mustermann"}]
    assert order_from_medication_request(request_json).patient_name == "Erika M. Mustermann"


# -- which code ------------------------------------------------------------------------------------

def codings(request_json: dict, *items: dict) -> dict:
    request_json["contained"][MEDICATION]["code"]["coding"] = list(items)
    return request_json


def test_product_code_is_preferred_over_atc(request_json):
    order = order_from_medication_request(codings(request_json, {"system": ATC, "code": "M01AE01"},
                                                  {"system": PZN, "code": "01234567"}))
    assert (order.medication.code_system, order.medication.code) == ("PZN", "01234567")


def test_user_selected_coding_wins(request_json):
    order = order_from_medication_request(codings(request_json,
                                                  {"system": ATC, "code": "M01AE01", "userSelected": True},
                                                  {"system": PZN, "code": "01234567"}))
    assert (order.medication.code_system, order.medication.code) == ("ATC", "M01AE01")


@pytest.mark.parametrize("uri, system, code", [
    ("urn:oid:1.3.160", "EAN", "4012345678901"),
    ("https://www.gs1.org/gtin", "EAN", "40123455"),
    ("http://www.nlm.nih.gov/research/umls/rxnorm", "RXNORM", "197806"),
    ("http://snomed.info/sct", "SNOMED", "322236009"),
])
def test_code_system_uris(request_json, uri, system, code):
    order = order_from_medication_request(codings(request_json, {"system": uri, "code": code}))
    assert (order.medication.code_system, order.medication.code) == (system, code)


def test_name_falls_back_to_the_display_of_the_chosen_coding(request_json):
    del request_json["contained"][MEDICATION]["code"]["text"]
    assert order_from_medication_request(request_json).medication.name == "ibuprofen"


def test_every_credential_code_system_has_a_fhir_uri():
    assert set(fhir._CODE_SYSTEM_URIS) == CODE_SYSTEMS
    assert set(fhir._CODE_PREFERENCE) == CODE_SYSTEMS


# -- strength ----------------------------------------------------------------------------------------

def strength(request_json: dict, ratio: dict) -> str:
    request_json["contained"][MEDICATION]["ingredient"][0]["strength"] = ratio
    return order_from_medication_request(request_json).medication.strength


@pytest.mark.parametrize("ratio, text", [
    ({"numerator": {"value": 400, "unit": "mg"}}, "400 mg"),
    ({"numerator": {"value": 0.50, "unit": "mg"}, "denominator": {"value": 1}}, "0.5 mg"),
    ({"numerator": {"value": 100, "unit": "mg"}, "denominator": {"value": 5, "unit": "mL"}}, "100 mg/5 mL"),
    ({"numerator": {"value": 20, "code": "mg", "system": "http://unitsofmeasure.org"},
      "denominator": {"value": 1, "code": "mL", "system": "http://unitsofmeasure.org"}}, "20 mg/mL"),
    ({"numerator": {"value": 400, "unit": "mg"},
      "denominator": {"value": 1, "unit": "Tablet", "system": "http://standardterms.edqm.eu", "code": "15054000"}},
     "400 mg"),
    ({"numerator": {"value": 400, "unit": "mg"}, "denominator": {"value": 1, "unit": "film-coated tablets"}},
     "400 mg"),
    ({"numerator": {"value": 400, "unit": "mg"}, "denominator": {"value": 1, "unit": "sachet"}}, "400 mg/sachet"),
])
def test_strength_ratio_becomes_text(request_json, ratio, text):
    assert strength(request_json, ratio) == text


# -- rejections ---------------------------------------------------------------------------------------

def edit(fn: Callable[[dict], Any]) -> Callable[[dict], dict]:
    def apply(resource: dict) -> dict:
        fn(resource)
        return resource
    return apply


def med(resource: dict) -> dict:
    return resource["contained"][MEDICATION]


def patient(resource: dict) -> dict:
    return resource["contained"][PATIENT]


REJECTIONS = [
    # what and how it may be dispensed
    ("resourceType", edit(lambda r: r.update(resourceType="Patient")), "MedicationRequest.resourceType"),
    ("draft", edit(lambda r: r.update(status="draft")), "MedicationRequest.status"),
    ("cancelled", edit(lambda r: r.update(status="cancelled")), "MedicationRequest.status"),
    ("proposal", edit(lambda r: r.update(intent="proposal")), "MedicationRequest.intent"),
    ("doNotPerform", edit(lambda r: r.update(doNotPerform=True)), "MedicationRequest.doNotPerform"),
    ("substitution as a concept", edit(lambda r: r.update(substitution={"allowedCodeableConcept": {"text": "G"}})),
     "MedicationRequest.substitution.allowedCodeableConcept"),
    ("a lone part of a therapy", edit(lambda r: r.update(extension=[{
        "url": "urn:erx:fhir:extension:therapy-part",
        "extension": [{"url": "part", "valuePositiveInt": 2}, {"url": "parts", "valuePositiveInt": 3}]}])),
     "MedicationRequest.extension"),
    ("note", edit(lambda r: r.update(note=[{"text": "patient is pregnant"}])), "MedicationRequest.note"),
    ("dispenseInterval", edit(lambda r: r["dispenseRequest"].update(dispenseInterval={"value": 7, "unit": "d"})),
     "MedicationRequest.dispenseRequest.dispenseInterval"),
    ("modifierExtension", edit(lambda r: r["dosageInstruction"][0].update(
        modifierExtension=[{"url": "http://example.org/x", "valueBoolean": True}])),
     "MedicationRequest.dosageInstruction[0].modifierExtension"),
    ("implicitRules", edit(lambda r: r.update(implicitRules="http://example.org/rules")),
     "MedicationRequest.implicitRules"),
    # the medication
    ("non-contained medication", edit(lambda r: r.update(medicationReference={"reference": "Medication/42"})),
     "MedicationRequest.medicationReference.reference"),
    ("dangling medication", edit(lambda r: r.update(medicationReference={"reference": "#nothing"})),
     "MedicationRequest.medicationReference.reference"),
    ("code only", edit(lambda r: (r.pop("medicationReference"), r.update(
        medicationCodeableConcept={"coding": [{"system": ATC, "code": "M01AE01"}], "text": "Ibuprofen"}))),
     "MedicationRequest.medicationCodeableConcept"),
    ("no known system", edit(lambda r: med(r)["code"].update(coding=[med(r)["code"]["coding"][0]])),
     "MedicationRequest.contained[1].code.coding"),
    ("two PZNs", edit(lambda r: med(r)["code"].update(coding=[{"system": PZN, "code": "01234567"},
                                                              {"system": PZN, "code": "07654321"}])),
     "MedicationRequest.contained[1].code.coding"),
    ("no form", edit(lambda r: med(r).pop("form")), "MedicationRequest.contained[1].form"),
    ("no ingredient", edit(lambda r: med(r).pop("ingredient")), "MedicationRequest.contained[1].ingredient"),
    ("two ingredients", edit(lambda r: med(r)["ingredient"].append(copy.deepcopy(med(r)["ingredient"][0]))),
     "MedicationRequest.contained[1].ingredient"),
    ("no strength", edit(lambda r: med(r)["ingredient"][0].pop("strength")),
     "MedicationRequest.contained[1].ingredient[0].strength"),
    ("strength bound", edit(lambda r: med(r)["ingredient"][0]["strength"]["numerator"].update(comparator="<")),
     "MedicationRequest.contained[1].ingredient[0].strength.numerator.comparator"),
    # the patient
    ("non-contained patient", edit(lambda r: r.update(subject={"reference": "Patient/123"})),
     "MedicationRequest.subject.reference"),
    ("subject by identifier", edit(lambda r: r.update(subject={"identifier": {"value": "X234567890"}})),
     "MedicationRequest.subject"),
    ("subject is the medication", edit(lambda r: r.update(subject={"reference": "#medication"})),
     "MedicationRequest.subject.reference"),
    ("no patient name", edit(lambda r: patient(r).pop("name")), "MedicationRequest.contained[0].name"),
    ("no birth date", edit(lambda r: patient(r).pop("birthDate")), "MedicationRequest.contained[0].birthDate"),
    ("partial birth date", edit(lambda r: patient(r).update(birthDate="1964")),
     "MedicationRequest.contained[0].birthDate"),
    ("birth date ahead", edit(lambda r: patient(r).update(birthDate="2999-01-01")),
     "MedicationRequest.contained[0].birthDate"),
    # dosage
    ("no dosage text", edit(lambda r: r["dosageInstruction"][0].pop("text")),
     "MedicationRequest.dosageInstruction[0].text"),
    ("no dosage", edit(lambda r: r.pop("dosageInstruction")), "MedicationRequest.dosageInstruction"),
    ("two dosages", edit(lambda r: r["dosageInstruction"].append({"sequence": 2, "text": "then 1 a day"})),
     "MedicationRequest.dosageInstruction"),
    ("patientInstruction", edit(lambda r: r["dosageInstruction"][0].update(patientInstruction="with water")),
     "MedicationRequest.dosageInstruction[0].patientInstruction"),
    # dispenseRequest
    ("no dispenseRequest", edit(lambda r: r.pop("dispenseRequest")), "MedicationRequest.dispenseRequest"),
    ("no quantity", edit(lambda r: r["dispenseRequest"].pop("quantity")),
     "MedicationRequest.dispenseRequest.quantity"),
    ("fractional quantity", edit(lambda r: r["dispenseRequest"]["quantity"].update(value=20.5)),
     "MedicationRequest.dispenseRequest.quantity.value"),
    ("zero quantity", edit(lambda r: r["dispenseRequest"]["quantity"].update(value=0)),
     "MedicationRequest.dispenseRequest.quantity.value"),
    ("too large quantity", edit(lambda r: r["dispenseRequest"]["quantity"].update(value=1001)),
     "MedicationRequest.dispenseRequest.quantity.value"),
    ("quantity as string", edit(lambda r: r["dispenseRequest"]["quantity"].update(value="20")),
     "MedicationRequest.dispenseRequest.quantity.value"),
    ("quantity in mL", edit(lambda r: r["dispenseRequest"].update(
        quantity={"value": 100, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"})),
     "MedicationRequest.dispenseRequest.quantity.unit"),
    ("quantity in packs", edit(lambda r: r["dispenseRequest"].update(quantity={"value": 2, "unit": "pack"})),
     "MedicationRequest.dispenseRequest.quantity.unit"),
    ("too many repeats", edit(lambda r: r["dispenseRequest"].update(numberOfRepeatsAllowed=12)),
     "MedicationRequest.dispenseRequest.numberOfRepeatsAllowed"),
    ("repeats as boolean", edit(lambda r: r["dispenseRequest"].update(numberOfRepeatsAllowed=True)),
     "MedicationRequest.dispenseRequest.numberOfRepeatsAllowed"),
    ("period backwards", edit(lambda r: r["dispenseRequest"].update(
        validityPeriod={"start": "2030-04-01", "end": "2030-03-04"})),
     "MedicationRequest.dispenseRequest.validityPeriod"),
    ("partial period", edit(lambda r: r["dispenseRequest"].update(validityPeriod={"start": "2030-03"})),
     "MedicationRequest.dispenseRequest.validityPeriod.start"),
    # what fhir.resources itself refuses
    ("not FHIR: unknown element", edit(lambda r: r.update(dosage="1-0-1")), "MedicationRequest.dosage"),
    ("not FHIR: wrong type", edit(lambda r: r["dosageInstruction"][0].update(text=5)),
     "MedicationRequest.dosageInstruction[0].text"),
    ("not FHIR: bad date", edit(lambda r: patient(r).update(birthDate="12.08.1964")),
     "MedicationRequest.contained[0].birthDate"),
    ("not FHIR: unknown contained type", edit(lambda r: r["contained"].append({"resourceType": "Prescription"})),
     "MedicationRequest.contained[3].resourceType"),
    ("not FHIR: no status", edit(lambda r: r.pop("status")), "MedicationRequest.status"),
    # what PrescriptionOrder refuses, told at the FHIR element
    ("order: dosage too long", edit(lambda r: r["dosageInstruction"][0].update(text="x" * 501)),
     "MedicationRequest.dosageInstruction[0].text"),
    ("order: code too long", edit(lambda r: med(r)["code"]["coding"][1].update(code="M" * 41)),
     "MedicationRequest.contained[1].code.coding[1].code"),
]


@pytest.mark.parametrize("change, path", [pytest.param(change, path, id=name) for name, change, path in REJECTIONS])
def test_rejections_name_the_fhir_element(request_json, change, path):
    problems = problems_of(change(request_json))
    assert path in [p.path for p in problems], problems


def test_draft_is_refused_with_the_reason(request_json):
    request_json["status"] = "draft"
    [problem] = problems_of(request_json)
    assert "not signed" in problem.message


def test_order_errors_say_which_limit(request_json):
    request_json["dosageInstruction"][0]["text"] = "x" * 501
    [problem] = problems_of(request_json)
    assert "500" in problem.message and "dosage_instructions" in problem.message


def test_all_problems_are_reported_at_once(request_json):
    request_json.update(status="draft", intent="plan")
    request_json["dispenseRequest"]["numberOfRepeatsAllowed"] = 20
    patient(request_json).pop("birthDate")
    paths = {p.path for p in problems_of(request_json)}
    assert paths == {"MedicationRequest.status", "MedicationRequest.intent",
                     "MedicationRequest.dispenseRequest.numberOfRepeatsAllowed",
                     "MedicationRequest.contained[0].birthDate"}


@pytest.mark.parametrize("resource", [None, [], "MedicationRequest", {"resourceType": "MedicationRequest"}])
def test_garbage_gives_problems_not_library_errors(resource):
    assert problems_of(resource)


def test_error_is_a_readable_picklable_value_error():
    error = FhirMappingError([FhirProblem(path="MedicationRequest.status", message="not active"),
                              FhirProblem(path="MedicationRequest.intent", message="not an order")])
    assert isinstance(error, ValueError)
    assert str(error) == ("FHIR mapping failed (2 problems):\n  - MedicationRequest.status: not active"
                          "\n  - MedicationRequest.intent: not an order")
    assert pickle.loads(pickle.dumps(error)).problems == error.problems


# -- round trip -------------------------------------------------------------------------------------

ROUND_TRIP_ORDERS = [
    PrescriptionOrder(patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
                      medication=Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg",
                                            form="tablet"),
                      dosage_instructions="1-0-1", quantity=20, redemptions=2),
    PrescriptionOrder(patient_name="Max Müller-Lüdenscheidt", patient_birth_date=dt.date(2019, 2, 28),
                      medication=Medication(name="Amoxicillin Saft", code="01234567", code_system="PZN",
                                            strength="250 mg/5 mL", form="powder for oral suspension"),
                      dosage_instructions="5 mL three times a day for 7 days", quantity=1, redemptions=1,
                      valid_from=dt.date(2030, 1, 1), valid_until=dt.date(2030, 1, 1)),
    PrescriptionOrder(patient_name="Jane Doe", patient_birth_date=dt.date(1950, 1, 1),
                      medication=Medication(name="Insulin glargine", code="4012345678901", code_system="EAN",
                                            strength="100 [iU]/mL", form="solution for injection"),
                      dosage_instructions="20 units at night", quantity=5, redemptions=12,
                      valid_from=dt.date(2030, 6, 1), valid_until=dt.date(2030, 12, 31)),
    PrescriptionOrder(patient_name="John Roe", patient_birth_date=dt.date(1980, 12, 31),
                      medication=Medication(name="Betamethasone cream", code="123456", code_system="SNOMED",
                                            strength="0.1 %", form="cream"),
                      dosage_instructions="apply thinly twice a day", quantity=1, redemptions=3),
    PrescriptionOrder(patient_name="A B", patient_birth_date=dt.date(1990, 5, 5),
                      medication=Medication(name="Levothyroxine", code="10582", code_system="RXNORM",
                                            strength="0.075 mg", form="tablet"),
                      dosage_instructions="1 tablet before breakfast", quantity=100, redemptions=4),
]


@pytest.mark.parametrize("order", ROUND_TRIP_ORDERS, ids=lambda o: o.medication.code_system)
def test_round_trip(order):
    resource = medication_request_from_order(order, prescription_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f",
                                             prescriber=PRESCRIBER, authored_on=dt.date(2030, 1, 1))
    MedicationRequest.model_validate(resource)
    json.dumps(resource)  # plain JSON, ready to send
    assert order_from_medication_request(resource) == order


def test_request_carries_ids_and_prescriber():
    resource = medication_request_from_order(ROUND_TRIP_ORDERS[0], prescription_id="rx-1", prescriber=PRESCRIBER,
                                             authored_on=dt.datetime(2030, 1, 1, 9, 30, tzinfo=dt.UTC))
    assert resource["identifier"] == [{"system": "urn:erx:prescription-id", "value": "rx-1"}]
    assert resource["authoredOn"] == "2030-01-01T09:30:00Z"
    assert resource["dispenseRequest"]["numberOfRepeatsAllowed"] == 1
    assert resource["dispenseRequest"]["quantity"] == {"value": 20, "unit": "tablet"}
    [practitioner] = [c for c in resource["contained"] if c["resourceType"] == "Practitioner"]
    assert practitioner["identifier"] == [{"system": "urn:erx:prescriber-id", "value": "123456789"}]
    assert resource["requester"] == {"reference": "#prescriber", "display": "Dr. Anna Schmidt"}


def order_with_strength(text: str) -> PrescriptionOrder:
    return ROUND_TRIP_ORDERS[0].model_copy(update={"medication": ROUND_TRIP_ORDERS[0].medication.model_copy(
        update={"strength": text})})


@pytest.mark.parametrize("written, read_back", [("400mg", "400 mg"), ("400.0 mg", "400 mg"),
                                                ("5 mg / 1 mL", "5 mg/mL"), ("400 mg/tablet", "400 mg")])
def test_strength_is_normalised_on_the_way_out(written, read_back):
    resource = medication_request_from_order(order_with_strength(written), prescription_id="rx-1",
                                             prescriber=PRESCRIBER)
    assert order_from_medication_request(resource).medication.strength == read_back


@pytest.mark.parametrize("written", ["0,5 mg", "1,000 mg", "2.5 mg + 12.5 mg", "one tablet", "1-2 mg"])
def test_strength_that_is_no_ratio_travels_as_text_and_reads_back_unchanged(written):
    """Every order the doctor's API accepted can be exported: what a Ratio cannot hold (or would make
    ambiguous) is kept verbatim in an extension, and the importer reads that extension back."""
    resource = medication_request_from_order(order_with_strength(written), prescription_id="rx-1",
                                             prescriber=PRESCRIBER)
    ingredient = next(r for r in resource["contained"] if r["resourceType"] == "Medication")["ingredient"][0]
    assert "strength" not in ingredient
    assert ingredient["extension"] == [{"url": "urn:erx:fhir:extension:strength-text", "valueString": written}]
    assert order_from_medication_request(resource).medication.strength == written


def test_naive_authored_datetime_is_refused():
    with pytest.raises(FhirMappingError) as err:
        medication_request_from_order(ROUND_TRIP_ORDERS[0], prescription_id="rx-1", prescriber=PRESCRIBER,
                                      authored_on=dt.datetime(2030, 1, 1, 9, 30))
    assert [p.path for p in err.value.problems] == ["MedicationRequest.authoredOn"]


# -- dispense ---------------------------------------------------------------------------------------

SECRET_KEY = "0x" + secrets.token_hex(32)
TX_HASH = "0x" + "ab" * 32
HANDED_OVER = dt.datetime(2030, 3, 5, 10, 42, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def revealed() -> RevealedPrescription:
    return RevealedPrescription(
        prescription_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f", patient_name="Erika Mustermann",
        patient_birth_date=dt.date(1964, 8, 12),
        medication=Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg", form="tablet"),
        dosage_instructions="1-0-1", quantity=20, prescriber=PRESCRIBER,
        therapy=TherapyPart(therapy_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f", part=1, parts=1),
        token=TokenRef(chain_id=1337, contract="0x" + "cd" * 20, secret_key=SecretStr(SECRET_KEY)))


def dispense(prescription: Any = None, **changes: Any) -> dict:
    arguments: dict[str, Any] = dict(dispense_id="check-7b1e", when_handed_over=HANDED_OVER,
                                     pharmacy_name="Apotheke am Markt", pharmacy_identifier="3-01-2345678",
                                     token_tx_hash=TX_HASH, remaining_redemptions=1)
    return medication_dispense(prescription if prescription is not None else revealed(), **arguments | changes)


def test_dispense_validates_and_says_what_was_handed_over():
    resource = dispense()
    MedicationDispense.model_validate(resource)
    assert resource["status"] == "completed"
    assert resource["id"] == "check-7b1e"
    patient_, pharmacy = resource["contained"]
    assert patient_ == {"resourceType": "Patient", "id": "patient", "name": [{"text": "Erika Mustermann"}],
                        "birthDate": "1964-08-12"}
    assert resource["subject"] == {"reference": "#patient"}
    assert pharmacy["resourceType"] == "Organization" and pharmacy["name"] == "Apotheke am Markt"
    assert pharmacy["identifier"] == [{"system": "urn:erx:pharmacy-id", "value": "3-01-2345678"}]
    assert resource["performer"] == [{"actor": {"reference": "#pharmacy", "display": "Apotheke am Markt"}}]
    assert resource["medicationCodeableConcept"] == {"coding": [{"system": ATC, "code": "M01AE01"}],
                                                     "text": "Ibuprofen 400 mg tablet"}
    assert resource["quantity"] == {"value": 20, "unit": "tablet"}
    assert resource["dosageInstruction"] == [{"text": "1-0-1"}]
    [authorizing] = resource["authorizingPrescription"]
    assert authorizing["identifier"] == {"system": "urn:erx:prescription-id",
                                         "value": "5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f"}
    assert "reference" not in authorizing
    assert resource["identifier"] == [{"system": "urn:erx:token-spend-tx", "value": TX_HASH}]
    assert resource["extension"] == [{"url": "urn:erx:fhir:extension:remaining-redemptions", "valueUnsignedInt": 1}]
    assert resource["whenHandedOver"] == "2030-03-05T10:42:00+01:00"


def test_dispense_never_contains_the_secret_key():
    for resource in (dispense(), dispense(revealed().model_dump(mode="json") | {
            "token": {"chain_id": 1337, "contract": "0x" + "cd" * 20, "secret_key": SECRET_KEY}})):
        written = json.dumps(resource).lower()
        assert SECRET_KEY.lower() not in written and SECRET_KEY[2:].lower() not in written


def test_dispense_refuses_to_write_the_key_wherever_it_is_passed():
    with pytest.raises(FhirMappingError) as err:
        dispense(pharmacy_identifier=SECRET_KEY)
    assert SECRET_KEY[2:] not in str(err.value)
    assert [p.path for p in err.value.problems] == ["MedicationDispense"]


def test_dispense_from_the_pharmacys_stored_record():
    stored = revealed().model_dump(mode="json", exclude={"token"})  # what PharmacyService keeps per check
    assert dispense(stored) == dispense()


def test_dispense_without_optional_parts():
    resource = dispense(pharmacy_identifier=None, token_tx_hash=None, remaining_redemptions=None)
    MedicationDispense.model_validate(resource)
    assert "identifier" not in resource and "extension" not in resource
    assert "identifier" not in resource["contained"][1]


@pytest.mark.parametrize("changes, path", [
    ({"when_handed_over": dt.datetime(2030, 3, 5, 10, 42)}, "MedicationDispense.whenHandedOver"),
    ({"token_tx_hash": "0x1234"}, "MedicationDispense.identifier"),
    ({"remaining_redemptions": -1}, "MedicationDispense.extension"),
    ({"dispense_id": "not a FHIR id!"}, "MedicationDispense.id"),
])
def test_dispense_input_problems(changes, path):
    with pytest.raises(FhirMappingError) as err:
        dispense(**changes)
    assert path in [p.path for p in err.value.problems]


def test_dispense_of_an_incomplete_record_names_the_missing_field():
    stored = revealed().model_dump(mode="json", exclude={"token", "medication"})
    with pytest.raises(FhirMappingError) as err:
        dispense(stored)
    assert [p.path for p in err.value.problems] == ["prescription.medication"]


def test_dispensed_prescription_is_revealed_prescription_without_token():
    assert set(PresentedPrescription.model_fields) == set(RevealedPrescription.model_fields) - {"token"}


def test_public_surface_is_exactly_the_mapping():
    assert sorted(fhir.__all__) == ["FhirMappingError", "FhirProblem", "medication_dispense",
                                    "medication_request_from_order", "order_from_medication_request",
                                    "orders_from_therapy_requests"]


# -- substitution and therapies in parts -------------------------------------------------------------

def test_substitution_not_allowed_is_carried_both_ways():
    order = ROUND_TRIP_ORDERS[0].model_copy(update={"substitution_allowed": False})
    resource = medication_request_from_order(order, prescription_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f",
                                             prescriber=PRESCRIBER)
    assert resource["substitution"] == {"allowedBoolean": False}
    assert order_from_medication_request(resource).substitution_allowed is False


def _therapy_resources(parts: int = 3, interval: int = 30) -> list[dict]:
    first = ROUND_TRIP_ORDERS[0]
    orders = therapy_orders(first, TherapyPlan(parts=parts, interval_days=interval))
    therapy_id = "7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
    return [medication_request_from_order(o, prescription_id=str(uuid.uuid4()), prescriber=PRESCRIBER,
                                          therapy=TherapyPart(therapy_id=therapy_id, part=k, parts=parts))
            for k, o in enumerate(orders, start=1)]


def test_therapy_parts_round_trip_in_part_order_whatever_the_list_order():
    resources = _therapy_resources()
    assert {r["groupIdentifier"]["value"] for r in resources} == {"7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f"}
    orders = fhir.orders_from_therapy_requests(list(reversed(resources)))
    starts = [o.valid_from for o in orders]
    assert starts == sorted(starts) and len(set(starts)) == 3
    assert [o.valid_from for o in orders] == [dt.date.fromisoformat(r["dispenseRequest"]["validityPeriod"]["start"])
                                             for r in resources]


@pytest.mark.parametrize("spoil, path", [
    (lambda rs: rs[:1], "MedicationRequest.extension"),  # part 1 of 3 alone
    (lambda rs: [{k: v for k, v in rs[0].items() if k not in ("extension", "groupIdentifier")}],
     "MedicationRequest"),  # one request is no therapy
    (lambda rs: [rs[0], rs[0], rs[2]], "MedicationRequest.extension"),  # part 1 twice, part 2 missing
    (lambda rs: [rs[0], rs[1], {**rs[2], "groupIdentifier": {"system": "urn:erx:therapy-id", "value": "x"}}],
     "MedicationRequest.groupIdentifier"),
    (lambda rs: [rs[0], rs[1], {**rs[2], "status": "draft"}], "MedicationRequest[2].status"),
])
def test_a_broken_therapy_is_refused_at_the_element(spoil, path):
    with pytest.raises(FhirMappingError) as err:
        fhir.orders_from_therapy_requests(spoil(_therapy_resources()))
    assert path in [p.path for p in err.value.problems]


def test_parts_of_a_therapy_are_one_prescription():
    resources = _therapy_resources(parts=2)
    other = copy.deepcopy(resources[1])
    other["contained"][0]["name"] = [{"text": "Somebody Else"}]
    with pytest.raises(FhirMappingError) as err:
        fhir.orders_from_therapy_requests([resources[0], other])
    assert "patient_name" in str(err.value)
