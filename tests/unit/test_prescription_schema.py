"""The credential's attributes, its validation, and the pharmacy's proof request."""

import datetime as dt

import pytest
from pydantic import SecretStr, ValidationError

from erx_contracts.client import new_prescription_key
from erx_schemas.prescription import (ATTRIBUTES, REVEALED_FOR_DISPENSING, Prescriber, Prescription,
                                      PrescriptionOrder, RevealedPrescription, TokenRef, dispensing_proof_request)

ORDER = {"patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
         "medication": {"name": "Ibuprofen", "code": "M01AE01", "code_system": "atc", "strength": "400 mg",
                        "form": "tablet"},
         "dosage_instructions": "1-0-1", "quantity": 20, "redemptions": 2}


def prescription() -> Prescription:
    key = new_prescription_key()
    return Prescription(order=PrescriptionOrder.model_validate(ORDER), prescriber=Prescriber(name="Dr A", identifier="123"),
                        token=TokenRef(chain_id=1337, contract="0x" + "ab" * 20, secret_key=SecretStr(key.private_key)))


def test_attributes_cover_the_schema_and_round_trip_what_is_revealed():
    p = prescription()
    attrs = p.to_attributes()
    assert list(attrs) == ATTRIBUTES
    assert all(isinstance(v, str) for v in attrs.values())
    assert attrs["valid_from"] == dt.date.today().strftime("%Y%m%d")
    assert attrs["medication_code_system"] == "ATC"
    revealed = RevealedPrescription.from_attributes({k: attrs[k] for k in REVEALED_FOR_DISPENSING})
    assert revealed.prescription_id == p.prescription_id
    assert revealed.token.address == p.token.address
    assert revealed.patient_birth_date == dt.date(1964, 8, 12)


def test_secret_key_is_not_shown_by_repr_or_json():
    p = prescription()
    key = p.token.secret_key.get_secret_value()
    assert key not in repr(p) and key not in p.model_dump_json()


@pytest.mark.parametrize("change, field", [
    ({"quantity": 0}, "quantity"),
    ({"redemptions": 13}, "redemptions"),
    ({"patient_name": "  "}, "patient_name"),
    ({"medication": {**ORDER["medication"], "code_system": "XYZ"}}, "medication.code_system"),
    ({"valid_from": "2030-01-10", "valid_until": "2030-01-01"}, ""),
    ({"patient_birth_date": "2999-01-01"}, ""),
])
def test_bad_orders_are_refused_with_the_field(change, field):
    with pytest.raises(ValidationError) as err:
        PrescriptionOrder.model_validate(ORDER | change)
    if field:
        assert field in {".".join(map(str, e["loc"])) for e in err.value.errors()}


def test_missing_revealed_attribute_is_an_error():
    attrs = prescription().to_attributes()
    del attrs["token_secret_key"]
    with pytest.raises(ValueError, match="token_secret_key"):
        RevealedPrescription.from_attributes(attrs)


def test_proof_request_reveals_only_dispensing_data_and_proves_validity_by_predicates():
    pr = dispensing_proof_request("S:2:erx-prescription:1.0", today=dt.date(2026, 11, 21), now=1_800_000_000)
    names = pr["requested_attributes"]["prescription"]["names"]
    assert names == REVEALED_FOR_DISPENSING
    assert not {"valid_from", "valid_until", "redemptions", "issue_date"} & set(names)
    preds = pr["requested_predicates"]
    assert preds["valid_until"]["p_type"] == ">=" and preds["valid_until"]["p_value"] == 20261121
    assert preds["valid_from"]["p_type"] == "<=" and preds["valid_from"]["p_value"] == 20261121
    assert pr["non_revoked"] == {"to": 1_800_000_000}, "never a 'from': it hangs some mobile wallets"
    assert pr["requested_attributes"]["prescription"]["restrictions"] == [{"schema_id": "S:2:erx-prescription:1.0"}]
