"""What the pharmacist may hand over instead of the prescription (erx_roles.dispensing.substitution_problem):
every rule alone, and every combination of the choices a dispense form offers, against an oracle that
states the rules independently."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from pydantic import ValidationError

from erx_roles.dispensing import Substitution, SubstitutionKind, as_dispensed, substitution_problem
from erx_schemas.prescription import Medication, Prescriber, PresentedPrescription, TherapyPart

PRESCRIBED = Medication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg", form="tablet")
GENERIC = Medication(name="Ibu-ratiopharm", code="01016144", code_system="PZN", strength="400 mg", form="tablet")
ID = "5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f"


def prescription(substitution_allowed: bool = True, quantity: int = 20) -> PresentedPrescription:
    return PresentedPrescription(
        prescription_id=ID, patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
        medication=PRESCRIBED, dosage_instructions="1-0-1", quantity=quantity,
        substitution_allowed=substitution_allowed, prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="1"),
        therapy=TherapyPart(therapy_id=ID, part=1, parts=1))


def generic(**changes) -> Substitution:
    medication = GENERIC.model_copy(update=changes.pop("medication", {}))
    return Substitution.model_validate({"kind": "generic", "medication": medication.model_dump(),
                                        "reason": "the brand is out of stock"} | changes)


def pack(quantity: int | None = 10, **changes) -> Substitution:
    return Substitution.model_validate({"kind": "pack_size", "quantity": quantity,
                                        "reason": "only packs of 10 in stock"} | changes)


def test_as_prescribed_needs_no_rule():
    assert substitution_problem(prescription(substitution_allowed=False), None) is None


@pytest.mark.parametrize("substitution, allowed, broken", [
    (generic(), True, None),
    (generic(quantity=20), True, None),
    (generic(quantity=5), True, None),
    (generic(medication={"strength": "400mg"}), True, None),  # written differently, the same strength
    (generic(medication={"form": "Tablet"}), True, None),
    (generic(medication={"code_system": "ATC", "code": "M01AE14"}), True, None),  # another code in the same system
    (generic(), False, "aut idem"),
    (Substitution(kind="generic", reason="out of stock"), True, "names the product"),
    (generic(medication={"strength": "200 mg"}), True, "prescribed strength (400 mg), not 200 mg"),
    (generic(medication={"form": "effervescent tablet"}), True, "prescribed form (tablet)"),
    (generic(medication={"code_system": "ATC", "code": "M01AE01"}), True, "another product"),
    (generic(quantity=21), True, "at most the prescribed quantity (20 tablet)"),
    (generic(quantity=0), True, "at least 1"),
    (generic(reason=""), True, "needs a reason"),
    (pack(10), True, None),
    (pack(20), True, None),  # as many units in other packs (2 x 10 for 1 x 20)
    (pack(1), True, None),
    (pack(10), False, None),  # aut idem forbids another product, not another pack of this one
    (pack(None), True, "how many units"),
    (pack(21), True, "at most the prescribed quantity"),
    (pack(0), True, "at least 1"),
    (pack(-3), True, "at least 1"),
    (pack(10, medication=GENERIC.model_dump()), True, "name no other product"),
    (pack(10, reason=""), True, "needs a reason"),
])
def test_each_rule(substitution, allowed, broken):
    problem = substitution_problem(prescription(substitution_allowed=allowed), substitution)
    if broken is None:
        assert problem is None
    else:
        assert problem is not None and broken in problem, problem


def oracle(allowed: bool, kind: str, medication: str, quantity: int | None, reason: str) -> bool:
    """May it be dispensed? The rules as the dispense form explains them, stated apart from the code."""
    quantity_ok = quantity is None or 1 <= quantity <= 20
    if kind == "generic":
        return (allowed and medication == "generic" and quantity_ok and reason != "")
    return medication == "none" and quantity is not None and quantity_ok and reason != ""


MEDICATIONS = {"none": None, "generic": GENERIC, "prescribed": PRESCRIBED,
               "other strength": GENERIC.model_copy(update={"strength": "600 mg"}),
               "other form": GENERIC.model_copy(update={"form": "capsule"})}


@pytest.mark.parametrize("allowed, kind, medication, quantity, reason", list(itertools.product(
    (True, False), ("generic", "pack_size"), list(MEDICATIONS), (None, -1, 0, 1, 19, 20, 21, 1000),
    ("", "out of stock"))))
def test_every_combination_is_decided_as_the_rules_say(allowed, kind, medication, quantity, reason):
    substitution = Substitution(kind=kind, medication=MEDICATIONS[medication], quantity=quantity, reason=reason)
    problem = substitution_problem(prescription(substitution_allowed=allowed), substitution)
    assert (problem is None) == oracle(allowed, kind, medication, quantity, reason), problem


def test_the_record_says_what_was_handed_over():
    recorded = as_dispensed(prescription(), generic())
    assert recorded.medication == GENERIC and recorded.quantity == 20 and recorded.kind is SubstitutionKind.GENERIC
    recorded = as_dispensed(prescription(), pack(10))
    assert recorded.medication == PRESCRIBED and recorded.quantity == 10


@pytest.mark.parametrize("body", [
    {"kind": "brand"},
    {"kind": "generic", "colour": "red"},
    {"kind": "pack_size", "quantity": 10, "reason": "a\nb"},
    {"kind": "pack_size", "quantity": 10, "reason": "x" * 301},
    {"kind": "generic", "medication": {"name": "X", "code": "not a PZN", "code_system": "PZN", "strength": "400 mg",
                                       "form": "tablet"}, "reason": "r"},
])
def test_what_the_model_refuses_before_any_rule(body):
    with pytest.raises(ValidationError):
        Substitution.model_validate(body)


def test_a_key_shaped_product_name_is_refused_where_it_enters():
    """The text rules (erx_schemas.prescription) refuse a 64-digit hex run in any name: no such name can
    reach a dispense record or its receipt."""
    with pytest.raises(ValidationError, match="64 hexadecimal digits"):
        generic(medication={"name": "Ibu " + "ab" * 32})
    with pytest.raises(ValidationError, match="64 hexadecimal digits"):
        pack(10, reason="key " + "0f" * 32)
