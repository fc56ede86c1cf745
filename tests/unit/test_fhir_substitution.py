"""The MedicationDispense says what was handed over: `substitution` (wasSubstituted, the HL7 v3
substanceAdminSubstitution type, the pharmacist's reason) and the dispensed medication and quantity."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from fhir.resources.R4B.medicationdispense import MedicationDispense
from pydantic import SecretStr

from erx_schemas.fhir import FhirMappingError, medication_dispense
from erx_schemas.prescription import Medication, Prescriber, RevealedPrescription, TherapyPart, TokenRef

V3 = "http://terminology.hl7.org/CodeSystem/v3-substanceAdminSubstitution"
KEY = "0x" + "7e" * 32
ID = "5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f"
GENERIC = Medication(name="Ibu-ratiopharm", code="01016144", code_system="PZN", strength="400 mg", form="tablet")


def revealed() -> RevealedPrescription:
    return RevealedPrescription(
        prescription_id=ID, patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
        medication=Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg", form="tablet"),
        dosage_instructions="1-0-1", quantity=20, prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="1"),
        therapy=TherapyPart(therapy_id=ID, part=1, parts=1),
        token=TokenRef(chain_id=1337, contract="0x" + "cd" * 20, secret_key=SecretStr(KEY)))


def dispense(**changes) -> dict:
    arguments = dict(dispense_id="check-1", when_handed_over=dt.datetime(2030, 3, 5, 10, 42, tzinfo=dt.UTC),
                     pharmacy_name="Apotheke am Markt", pharmacy_identifier="NcYxiDXkpYi6ov5FcYDi1e",
                     token_tx_hash="0x" + "ab" * 32, remaining_redemptions=0)
    resource = medication_dispense(revealed(), **arguments | changes)
    MedicationDispense.model_validate(resource)
    assert KEY[2:] not in json.dumps(resource)
    return resource


def test_as_prescribed_says_nothing_was_substituted():
    resource = dispense()
    assert resource["substitution"] == {"wasSubstituted": False}
    assert resource["quantity"] == {"value": 20, "unit": "tablet"}


def test_a_generic_is_an_equivalent_composition_with_the_reason_and_the_product_handed_over():
    resource = dispense(dispensed_medication=GENERIC, substitution="generic", substitution_reason="brand out of stock")
    assert resource["medicationCodeableConcept"] == {
        "coding": [{"system": "http://fhir.de/CodeSystem/ifa/pzn", "code": "01016144"}],
        "text": "Ibu-ratiopharm 400 mg tablet"}
    substitution = resource["substitution"]
    assert substitution["wasSubstituted"] is True
    assert substitution["type"]["coding"] == [{"system": V3, "code": "EC", "display": "equivalent composition"}]
    assert "Ibuprofen 400 mg tablet (ATC M01AE01)" in substitution["type"]["text"]  # what was prescribed
    assert substitution["reason"] == [{"text": "brand out of stock"}]
    assert resource["quantity"] == {"value": 20, "unit": "tablet"}
    # also as the pharmacy's stored JSON form
    assert medication_dispense(revealed().model_dump(mode="json", exclude={"token"}), **{
        "dispense_id": "check-1", "when_handed_over": dt.datetime(2030, 3, 5, 10, 42, tzinfo=dt.UTC),
        "pharmacy_name": "Apotheke am Markt", "pharmacy_identifier": "NcYxiDXkpYi6ov5FcYDi1e",
        "token_tx_hash": "0x" + "ab" * 32, "remaining_redemptions": 0,
        "dispensed_medication": GENERIC.model_dump(), "substitution": "generic",
        "substitution_reason": "brand out of stock"}) == resource


def test_another_pack_size_is_the_prescribed_medication_in_a_smaller_quantity():
    resource = dispense(dispensed_quantity=10, substitution="pack_size", substitution_reason="packs of 10 only")
    assert resource["quantity"] == {"value": 10, "unit": "tablet"}
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "M01AE01"
    substitution = resource["substitution"]
    assert substitution["wasSubstituted"] is True
    assert "coding" not in substitution["type"]  # v3 names changes of product, not of amount
    assert substitution["type"]["text"].startswith("other pack size: 10 of the 20 tablet prescribed")
    assert substitution["reason"] == [{"text": "packs of 10 only"}]


@pytest.mark.parametrize("changes, path", [
    ({"substitution": "brand"}, "MedicationDispense.substitution.type"),
    ({"dispensed_quantity": 0, "substitution": "pack_size"}, "MedicationDispense.quantity"),
    ({"dispensed_quantity": True, "substitution": "pack_size"}, "MedicationDispense.quantity"),
    ({"dispensed_quantity": 1001, "substitution": "pack_size"}, "MedicationDispense.quantity"),
    ({"dispensed_medication": {"name": "X"}, "substitution": "generic"},
     "MedicationDispense.medicationCodeableConcept.code"),
    ({"dispensed_medication": GENERIC}, "MedicationDispense.substitution"),  # handed over, but not said
    ({"dispensed_quantity": 10}, "MedicationDispense.substitution"),
])
def test_what_cannot_be_written(changes, path):
    with pytest.raises(FhirMappingError) as err:
        dispense(**changes)
    assert path in [p.path for p in err.value.problems]


def test_the_prescribed_quantity_restated_is_no_substitution():
    assert dispense(dispensed_quantity=20, dispensed_medication=revealed().medication)["substitution"] == \
        {"wasSubstituted": False}
