"""FHIR R4 mapping: MedicationRequest -> PrescriptionOrder, and back; a MedicationDispense for the pharmacy.

Practice software speaks FHIR, the credential speaks `PrescriptionOrder`. The mapping is deliberately
strict: whatever a MedicationRequest says that the credential cannot carry, and that would change what
is dispensed or how, is refused with a `FhirProblem` naming the FHIR element, never dropped silently.
Elements that change nothing at the counter (narrative, identifiers, requester, category, ...) are
ignored. See docs/fhir.md for the table and the reasons.

The models are those of `fhir.resources.R4B` (FHIR 4.3.0): MedicationRequest, MedicationDispense and
every type they use are unchanged from R4 (4.0.1), so the JSON read and written here is R4.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.medicationdispense import MedicationDispense
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.resource import Resource
from pydantic import BaseModel, ConfigDict, ValidationError

from erx_schemas.prescription import (Medication, Prescriber, PrescriptionOrder, PresentedPrescription,
                                      PrescribingRules, RevealedPrescription, TherapyPart, input_context,
                                      therapy_problem)

__all__ = ["FhirMappingError", "FhirProblem", "medication_dispense", "medication_request_from_order",
           "order_from_medication_request", "orders_from_therapy_requests"]

# Code systems of the credential's `medication_code_system`, by canonical FHIR system URI. GTIN is
# written as its OID (the form R4 lists); the URI HL7 Terminology also registers is accepted on input.
_CODE_SYSTEM_URIS: dict[str, str] = {
    "ATC": "http://www.whocc.no/atc",
    "PZN": "http://fhir.de/CodeSystem/ifa/pzn",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "SNOMED": "http://snomed.info/sct",
    "EAN": "urn:oid:1.3.160",
}
_CODE_SYSTEM_BY_URI: dict[str, str] = {uri: name for name, uri in _CODE_SYSTEM_URIS.items()} | {
    "https://www.gs1.org/gtin": "EAN",
}
# Codings of one concept are translations of each other and their order means nothing (R4
# CodeableConcept). When the sender marks none as userSelected, the one naming the product most
# precisely wins: package codes first, the ATC substance class last.
_CODE_PREFERENCE: tuple[str, ...] = ("PZN", "EAN", "RXNORM", "SNOMED", "ATC")

_UCUM = "http://unitsofmeasure.org"
_PRESCRIPTION_ID_SYSTEM = "urn:erx:prescription-id"
_PRESCRIBER_ID_SYSTEM = "urn:erx:prescriber-id"
_PHARMACY_ID_SYSTEM = "urn:erx:pharmacy-id"
_TOKEN_SPEND_TX_SYSTEM = "urn:erx:token-spend-tx"
_REMAINING_REDEMPTIONS_URL = "urn:erx:fhir:extension:remaining-redemptions"
# MedicationDispense.substitution.type (example binding ActSubstanceAdminSubstitutionCode). A generic is EC,
# "equivalent composition": same active ingredient, strength, dosage form and route ("Lisinopril for
# Zestril"); its children G (a generic for a generic) and BC (a brand for a brand) would claim to know
# whether the prescribed product was a brand, which a prescription by ATC code does not say. The code
# system has no code for another pack of the same product (it names changes of product, not of amount):
# that is `wasSubstituted` with a type in text only.
_SUBSTITUTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-substanceAdminSubstitution"
_SUBSTITUTION_KINDS = ("generic", "pack_size")
# A therapy in parts: each part is a MedicationRequest of the therapy's group, numbered like gematik's
# multi-part prescription extension (part k of n).
_THERAPY_ID_SYSTEM = "urn:erx:therapy-id"
_THERAPY_PART_URL = "urn:erx:fhir:extension:therapy-part"
# A strength the doctor typed that a Ratio cannot hold ("1 puff", "0.5 %"): kept as text on the ingredient.
_STRENGTH_TEXT_URL = "urn:erx:fhir:extension:strength-text"

_MAX_REPEATS = 11  # PrescriptionOrder.redemptions <= 12, and redemptions = repeats + 1
_MAX_QUANTITY = 1000
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")

# "400 mg", "100 mg/5 mL", "20 mg/mL", "0.1 %": what a Ratio can hold without guessing. A unit starts
# with a letter, %, [ or { (UCUM), and never contains / or + (those would be a second amount). Digits are
# ASCII: other scripts' digits travel as text, verbatim.
_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
# A FHIR decimal is a JSON number, which readers (and fhir.resources) hold as a binary double: more
# significant digits than a double keeps exactly would change the amount on the way.
_MAX_SIGNIFICANT_DIGITS = 15
_UNIT = r"(?:[^\W\d_]|[%\[{])[^/+]*?"
_STRENGTH = re.compile(rf"(?P<num>{_NUMBER})\s*(?P<num_unit>{_UNIT})\s*"
                       rf"(?:/\s*(?:(?P<den>{_NUMBER})\s*)?(?P<den_unit>{_UNIT}))?")


class FhirProblem(BaseModel):
    """One reason a resource cannot be mapped, at a FHIRPath-like location."""

    model_config = ConfigDict(frozen=True)

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class FhirMappingError(ValueError):
    """All problems found, not just the first, so that a sender can fix its resource in one go."""

    def __init__(self, problems: list[FhirProblem]):
        self.problems: list[FhirProblem] = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        lines = "".join(f"\n  - {problem}" for problem in self.problems)
        return f"FHIR mapping failed ({count} problem{'s' if count != 1 else ''}):{lines}"

    def __reduce__(self) -> tuple[type[FhirMappingError], tuple[list[FhirProblem]]]:
        return type(self), (self.problems,)


# -- FHIR MedicationRequest -> PrescriptionOrder ----------------------------------------------------

def order_from_medication_request(resource: dict, *, rules: PrescribingRules | None = None,
                                  _allow_part: bool = False) -> PrescriptionOrder:
    """Read a FHIR R4 MedicationRequest (JSON dict) as the order a prescription credential is issued for.

    Patient and Medication must be contained in the request: we resolve no references to servers.
    Raises FhirMappingError listing every problem, with the FHIR path it concerns.
    """
    request = _validated(MedicationRequest, resource, "MedicationRequest")
    reading = _Reading()
    if not _allow_part and _therapy_part_of(resource, "MedicationRequest") is not None:
        reading.problem("MedicationRequest.extension", "this request is one part of a therapy: send all its "
                        "parts together (POST /api/therapies/fhir)")
    _refuse_modifiers(resource, "MedicationRequest", reading)
    _check_workflow(request, reading)
    _read_patient(request, reading)
    form = _read_medication(request, reading)
    _read_dosage(request, reading)
    _read_dispense_request(request, resource, form, reading)
    if reading.problems:
        raise FhirMappingError(reading.problems)
    try:
        return PrescriptionOrder.model_validate(reading.order_input(), context=input_context(rules=rules))
    except ValidationError as exc:
        raise FhirMappingError([reading.problem_for(error) for error in exc.errors()]) from None


# Where an order field that the request left out (and the order defaulted) would have been given.
_DEFAULTED_PATHS = {"valid_from": "MedicationRequest.dispenseRequest.validityPeriod.start",
                    "valid_until": "MedicationRequest.dispenseRequest.validityPeriod.end"}


class _Reading:
    """What has been read so far, where in the resource each value came from, and what went wrong."""

    def __init__(self) -> None:
        self.problems: list[FhirProblem] = []
        self.values: dict[str, Any] = {}  # dotted order field -> value
        self.paths: dict[str, str] = {}  # dotted order field -> FHIR path it was read from

    def problem(self, path: str, message: str) -> None:
        self.problems.append(FhirProblem(path=path, message=message))

    def put(self, field: str, value: Any, path: str) -> None:
        self.values[field] = value
        self.paths[field] = path

    def order_input(self) -> dict[str, Any]:
        nested: dict[str, Any] = {}
        for field, value in self.values.items():
            *parents, leaf = field.split(".")
            target = nested
            for parent in parents:
                target = target.setdefault(parent, {})
            target[leaf] = value
        return nested

    def problem_for(self, error: Any) -> FhirProblem:
        """A PrescriptionOrder validation error, told at the FHIR element the value came from."""
        field = ".".join(str(part) for part in error["loc"])
        path = self.paths.get(field) or _DEFAULTED_PATHS.get(field, "MedicationRequest")
        message = _clean_message(error["msg"])
        return FhirProblem(path=path, message=f"{message} (order field {field})" if field else message)


def _check_workflow(request: MedicationRequest, reading: _Reading) -> None:
    """Only a signed, positive order with no dispensing conditions the credential cannot enforce."""
    if request.status != "active":
        reading.problem("MedicationRequest.status",
                        "a draft is not signed yet: send it once it is 'active'" if request.status == "draft"
                        else f"only an 'active' request can become a prescription, not {request.status!r}")
    if request.intent != "order":
        reading.problem("MedicationRequest.intent", f"only intent 'order' is a prescription, not {request.intent!r}")
    if request.doNotPerform:
        reading.problem("MedicationRequest.doNotPerform",
                        "a request NOT to give a medication cannot become a prescription")
    substitution = request.substitution
    if substitution is not None:
        if substitution.allowedBoolean is None:
            reading.problem("MedicationRequest.substitution.allowedCodeableConcept",
                            "say whether substitution is allowed with allowedBoolean (true or false): the "
                            "credential carries only that")
        else:
            reading.put("substitution_allowed", substitution.allowedBoolean,
                        "MedicationRequest.substitution.allowedBoolean")
    if request.note:
        reading.problem("MedicationRequest.note",
                        "notes cannot be carried by the credential: write what the patient needs to know "
                        "into dosageInstruction.text")
    dispense = request.dispenseRequest
    if dispense is not None:
        for element, why in (("initialFill", "a different first fill"),
                             ("dispenseInterval", "a minimum interval between fills"),
                             ("performer", "a designated pharmacy")):
            if getattr(dispense, element) is not None:
                reading.problem(f"MedicationRequest.dispenseRequest.{element}",
                                f"{why} cannot be enforced: any pharmacy may redeem the credential, any time "
                                f"within its validity")


def _read_patient(request: MedicationRequest, reading: _Reading) -> None:
    found = _contained(request, request.subject, "Patient", "MedicationRequest.subject", reading)
    if found is None:
        return
    index, patient = found
    path = f"MedicationRequest.contained[{index}]"
    if patient.active is False:
        reading.problem(f"{path}.active", "the patient record is marked inactive")
    if patient.link:
        reading.problem(f"{path}.link", "links to other patient records cannot be followed")
    _read_patient_name(patient, path, reading)
    birth_date = _full_date(patient.birthDate, f"{path}.birthDate", reading)
    if patient.birthDate is None:
        reading.problem(f"{path}.birthDate", "the patient's birth date is needed (checked at the counter)")
    elif birth_date is not None and birth_date > dt.date.today():
        reading.problem(f"{path}.birthDate", "the birth date is in the future")
    elif birth_date is not None:
        reading.put("patient_birth_date", birth_date, f"{path}.birthDate")


def _read_patient_name(patient: Any, path: str, reading: _Reading) -> None:
    """The official name, else the usual one, else the first that is not an old name."""
    rank = {"official": 0, "usual": 1}
    names = [(j, name) for j, name in enumerate(patient.name or []) if name.use != "old"]
    if not names:
        reading.problem(f"{path}.name", "the patient's name is needed (checked at the counter)")
        return
    j, name = min(names, key=lambda item: rank.get(item[1].use, 2))
    # as written: the order's rules refuse stray whitespace rather than have it trimmed here
    text = name.text if name.text is not None else " ".join([*(name.given or []), *filter(None, [name.family])])
    if not text:
        reading.problem(f"{path}.name[{j}]", "the name has neither text nor given and family names")
        return
    reading.put("patient_name", text, f"{path}.name[{j}]")


def _read_medication(request: MedicationRequest, reading: _Reading) -> str | None:
    """Code, name, form and strength. Returns the form, which the quantity counts."""
    if request.medicationReference is None:
        path = "MedicationRequest.medicationCodeableConcept"
        if request.medicationCodeableConcept is not None:
            _read_code(request.medicationCodeableConcept, path, reading)
        reading.problem(path, "a code alone does not give strength and form: send a contained Medication "
                              "(medicationReference '#id') with form and ingredient[0].strength")
        return None
    found = _contained(request, request.medicationReference, "Medication", "MedicationRequest.medicationReference",
                       reading)
    if found is None:
        return None
    index, medication = found
    path = f"MedicationRequest.contained[{index}]"
    if medication.status not in (None, "active"):
        reading.problem(f"{path}.status", f"the medication is {medication.status!r}, not 'active'")
    if medication.code is None:
        reading.problem(f"{path}.code", "the medication's code is needed")
    else:
        _read_code(medication.code, f"{path}.code", reading)
    form = _read_form(medication, path, reading)
    _read_strength(medication, path, form, reading)
    return form


def _read_code(concept: Any, path: str, reading: _Reading) -> None:
    known = [(j, coding, _CODE_SYSTEM_BY_URI[coding.system]) for j, coding in enumerate(concept.coding or [])
             if coding.system in _CODE_SYSTEM_BY_URI]
    chosen_coding = None
    if not known:
        found = sorted({coding.system or "(no system)" for coding in concept.coding or []})
        reading.problem(f"{path}.coding", f"no coding from a supported code system "
                                          f"({', '.join(_CODE_SYSTEM_URIS.values())}, https://www.gs1.org/gtin); "
                                          f"found: {', '.join(found) or 'none'}")
    else:
        chosen = [item for item in known if item[1].userSelected]
        if len(chosen) != 1:
            best = min((item[2] for item in known), key=_CODE_PREFERENCE.index)
            chosen = [item for item in known if item[2] == best]
        j, chosen_coding, system = chosen[0]
        if len({item[1].code for item in chosen}) > 1:
            reading.problem(f"{path}.coding", f"{len(chosen)} different {system} codes and none marked userSelected")
        elif not chosen_coding.code:
            reading.problem(f"{path}.coding[{j}].code", "the coding has no code")
        else:
            reading.put("medication.code", chosen_coding.code, f"{path}.coding[{j}].code")
            reading.put("medication.code_system", system, f"{path}.coding[{j}].system")
    if concept.text:
        reading.put("medication.name", concept.text, f"{path}.text")
    elif chosen_coding is not None and chosen_coding.display:
        reading.put("medication.name", chosen_coding.display, f"{path}.coding[{chosen[0][0]}].display")
    else:
        reading.problem(f"{path}.text", "the medication's name is needed: text, or a display on its coding")


def _read_form(medication: Any, path: str, reading: _Reading) -> str | None:
    form = medication.form
    text = form and (form.text or next((coding.display for coding in form.coding or [] if coding.display), None))
    if not text:
        reading.problem(f"{path}.form", "the dosage form is needed (e.g. 'tablet'): text, or a display on its coding")
        return None
    reading.put("medication.form", text, f"{path}.form")
    return text


def _read_strength(medication: Any, path: str, form: str | None, reading: _Reading) -> None:
    ingredients = medication.ingredient or []
    if len(ingredients) != 1:
        reading.problem(f"{path}.ingredient",
                        "the strength is needed: one ingredient with strength" if not ingredients else
                        f"{len(ingredients)} ingredients: the credential holds one strength, combination products "
                        f"are not supported")
        return
    ingredient, ingredient_path = ingredients[0], f"{path}.ingredient[0]"
    if ingredient.isActive is False:
        reading.problem(f"{ingredient_path}.isActive", "the only ingredient is inactive: its amount is no strength")
    if ingredient.strength is None:
        as_text = [e.valueString for e in ingredient.extension or [] if e.url == _STRENGTH_TEXT_URL and e.valueString]
        if as_text:
            reading.put("medication.strength", as_text[0], f"{ingredient_path}.extension")
            return
        reading.problem(f"{ingredient_path}.strength", "the strength is needed (a Ratio such as 400 mg per tablet)")
        return
    text = _ratio_text(ingredient.strength, f"{ingredient_path}.strength", form, reading)
    if text is not None:
        reading.put("medication.strength", text, f"{ingredient_path}.strength")


def _ratio_text(ratio: Any, path: str, form: str | None, reading: _Reading) -> str | None:
    """'400 mg' (per unit of presentation), '100 mg/5 mL', '20 mg/mL'."""
    if ratio.numerator is None:
        reading.problem(f"{path}.numerator", "the strength needs a numerator")
        return None
    amount = _quantity_text(ratio.numerator, f"{path}.numerator", reading)
    denominator = ratio.denominator
    if amount is None or denominator is None:
        return amount
    if denominator.comparator:
        reading.problem(f"{path}.denominator.comparator", "a bound ('<', '>=', ...) is not an amount")
        return None
    if denominator.value is None:
        reading.problem(f"{path}.denominator.value", "the denominator needs a value")
        return None
    if denominator.value == 1 and _is_unit_of_presentation(denominator, form):
        return amount
    unit = denominator.unit or denominator.code
    if not unit:
        reading.problem(f"{path}.denominator", "a denominator other than 1 needs a unit")
        return None
    return f"{amount}/{unit}" if denominator.value == 1 else f"{amount}/{_number(denominator.value)} {unit}"


def _quantity_text(quantity: Any, path: str, reading: _Reading) -> str | None:
    if quantity.comparator:
        reading.problem(f"{path}.comparator", "a bound ('<', '>=', ...) is not an amount")
        return None
    unit = quantity.unit or quantity.code
    if quantity.value is None or not unit:
        reading.problem(path, "the amount needs a value and a unit")
        return None
    return f"{_number(quantity.value)} {unit}"


def _is_unit_of_presentation(quantity: Any, form: str | None) -> bool:
    """One tablet, one 'unit': a denominator that adds nothing to '400 mg'."""
    if not quantity.unit and not quantity.code:
        return True
    if quantity.system == _UCUM:
        return _is_ucum_count(quantity.code)
    if quantity.system:  # coded in a dose-form terminology (EDQM, HL7 orderableDrugForm), not a measure
        return True
    return _same_unit(quantity.unit, form)


def _is_ucum_count(code: str | None) -> bool:
    return code == "1" or (code or "").startswith("{")


def _same_unit(unit: str | None, form: str | None) -> bool:
    if not unit or not form:
        return False
    a, b = unit.strip().casefold(), form.strip().casefold()
    return a == b or a in (b + "s", b + "es") or b in (a + "s", a + "es")


def _read_dosage(request: MedicationRequest, reading: _Reading) -> None:
    dosages = request.dosageInstruction or []
    if not dosages:
        reading.problem("MedicationRequest.dosageInstruction", "a dosage instruction with text is needed")
        return
    if len(dosages) > 1:
        reading.problem("MedicationRequest.dosageInstruction",
                        f"{len(dosages)} dosage instructions: the credential holds one text, and joining them "
                        f"would blur sequential and concurrent doses; send one whose text states the whole regimen")
        return
    dosage, path = dosages[0], "MedicationRequest.dosageInstruction[0]"
    if dosage.patientInstruction:
        reading.problem(f"{path}.patientInstruction", "not carried: write it into text")
    if dosage.additionalInstruction:
        reading.problem(f"{path}.additionalInstruction", "not carried: write it into text")
    if not dosage.text or not dosage.text.strip():
        reading.problem(f"{path}.text", "the instruction text is needed: structured timing and doses are not "
                                        "carried, the text is")
        return
    reading.put("dosage_instructions", dosage.text, f"{path}.text")


def _read_dispense_request(request: MedicationRequest, raw: dict, form: str | None, reading: _Reading) -> None:
    dispense, path = request.dispenseRequest, "MedicationRequest.dispenseRequest"
    if dispense is None:
        reading.problem(path, "the quantity to dispense is needed")
        return
    raw_dispense = raw.get("dispenseRequest") or {}
    _read_quantity(dispense.quantity, (raw_dispense.get("quantity") or {}).get("value"), f"{path}.quantity", form,
                   reading)
    repeats = dispense.numberOfRepeatsAllowed
    if repeats is not None:
        raw_repeats = raw_dispense.get("numberOfRepeatsAllowed")
        repeats_path = f"{path}.numberOfRepeatsAllowed"
        if isinstance(raw_repeats, bool) or not isinstance(raw_repeats, int):
            reading.problem(repeats_path, "must be a JSON integer")
        elif repeats > _MAX_REPEATS:
            reading.problem(repeats_path, f"at most {_MAX_REPEATS} repeats ({_MAX_REPEATS + 1} redemptions), "
                                          f"not {repeats}")
        else:
            reading.put("redemptions", repeats + 1, repeats_path)
    period = dispense.validityPeriod
    if period is None:
        return
    start = _full_date(period.start, f"{path}.validityPeriod.start", reading)
    end = _full_date(period.end, f"{path}.validityPeriod.end", reading)
    if start is not None:
        reading.put("valid_from", start, f"{path}.validityPeriod.start")
    if end is not None:
        reading.put("valid_until", end, f"{path}.validityPeriod.end")
    if start is not None and end is not None and end < start:
        reading.problem(f"{path}.validityPeriod", "the validity period ends before it starts")
    elif start is None and period.start is None and end is not None and end < dt.date.today():
        reading.problem(f"{path}.validityPeriod.end", "the validity ends before today, the default start")


def _read_quantity(quantity: Any, raw_value: Any, path: str, form: str | None, reading: _Reading) -> None:
    """A whole number of units of the dosage form: the credential's quantity has no unit of its own."""
    if quantity is None:
        reading.problem(path, "the quantity to dispense is needed")
        return
    if quantity.comparator:
        reading.problem(f"{path}.comparator", "a bound ('<', '>=', ...) is not a quantity to dispense")
    value = quantity.value
    if value is None:
        reading.problem(f"{path}.value", "the quantity needs a value")
    elif isinstance(raw_value, bool) or not isinstance(raw_value, (int, float)):
        reading.problem(f"{path}.value", "must be a JSON number")
    elif value != value.to_integral_value() or not 1 <= value <= _MAX_QUANTITY:
        reading.problem(f"{path}.value", f"must be a whole number from 1 to {_MAX_QUANTITY}, not {_number(value)}")
    else:
        reading.put("quantity", int(value), f"{path}.value")
    counts_form = (not quantity.unit and not quantity.code) or (quantity.system == _UCUM and
                                                               _is_ucum_count(quantity.code)) \
        or _same_unit(quantity.unit, form)
    if not counts_form:
        reading.problem(f"{path}.unit", f"the credential's quantity counts units of the dosage form ({form!r}) and "
                                        f"has no unit of its own: {quantity.unit or quantity.code!r} cannot be carried "
                                        f"(use no unit, the form, or a UCUM count such as '1' or '{{tablet}}')")


def _full_date(value: Any, path: str, reading: _Reading) -> dt.date | None:
    """The calendar date as written; a partial date (year, year-month) is refused as ambiguous."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    reading.problem(path, f"a full date (YYYY-MM-DD) is needed, not {value!r}")
    return None


def _contained(request: MedicationRequest, reference: Any, expected: str, path: str,
               reading: _Reading) -> tuple[int, Any] | None:
    """The contained resource a '#id' reference points to; other references we cannot resolve."""
    ref = reference.reference if reference is not None else None
    if not ref or not ref.startswith("#") or ref == "#":
        given = (f"the reference {ref!r}" if ref else "a reference by identifier"
                 if reference is not None and reference.identifier is not None else "a reference without 'reference'")
        reading.problem(f"{path}.reference" if ref else path,
                        f"the {expected} must be contained in this resource and referenced as '#id': "
                        f"{given} cannot be resolved here")
        return None
    matches = [(i, resource) for i, resource in enumerate(request.contained or []) if resource.id == ref[1:]]
    if len(matches) != 1:
        reading.problem(f"{path}.reference", f"no contained resource has id {ref[1:]!r}" if not matches
                        else f"{len(matches)} contained resources have id {ref[1:]!r}")
        return None
    index, resource = matches[0]
    if resource.get_resource_type() != expected:
        reading.problem(f"{path}.reference", f"{ref} is a {resource.get_resource_type()}, not a {expected}")
        return None
    return index, resource


def _refuse_modifiers(raw: dict, root: str, reading: _Reading) -> None:
    """Modifier extensions and implicit rules change meaning and may not be ignored (FHIR R4 2.1.0.3)."""
    for path, key, value in _elements(raw, root):
        if key == "modifierExtension" and value:
            reading.problem(f"{path}.modifierExtension",
                            "a modifier extension changes the meaning of its element; none is understood here")
        elif key == "implicitRules" and value:
            reading.problem(f"{path}.implicitRules", "implicit rules must be understood to read the resource; "
                                                     "none are supported")


def _elements(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _elements(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _elements(item, f"{path}[{i}]")


# -- PrescriptionOrder -> FHIR MedicationRequest ----------------------------------------------------

def medication_request_from_order(order: PrescriptionOrder, *, prescription_id: str, prescriber: Prescriber,
                                  authored_on: dt.date | dt.datetime | None = None,
                                  therapy: TherapyPart | None = None) -> dict:
    """The order as a FHIR R4 MedicationRequest (JSON dict) that `order_from_medication_request` reads back.

    A strength that a FHIR Ratio cannot hold is kept as text in an extension of the ingredient
    (see docs/fhir.md), so every order can be written out and read back.
    """
    medication = order.medication
    dispense_request: dict[str, Any] = {
        "numberOfRepeatsAllowed": order.redemptions - 1,
        "quantity": {"value": order.quantity, "unit": medication.form},
    }
    if order.valid_from is not None or order.valid_until is not None:
        dispense_request["validityPeriod"] = {"start": order.valid_from, "end": order.valid_until}
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "contained": [
            _patient(order.patient_name, order.patient_birth_date),
            {"resourceType": "Medication", "id": "medication",
             "code": _medication_concept(medication, text=medication.name),
             "form": {"text": medication.form},
             "ingredient": [_ingredient(medication)]},
            {"resourceType": "Practitioner", "id": "prescriber",
             "identifier": [{"system": _PRESCRIBER_ID_SYSTEM, "value": prescriber.identifier}],
             "name": [{"text": prescriber.name}]},
        ],
        "identifier": [{"system": _PRESCRIPTION_ID_SYSTEM, "value": prescription_id}],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#medication"},
        "subject": {"reference": "#patient"},
        "authoredOn": authored_on,
        "requester": {"reference": "#prescriber", "display": prescriber.name},
        "dosageInstruction": [{"text": order.dosage_instructions}],
        "dispenseRequest": dispense_request,
        "substitution": {"allowedBoolean": order.substitution_allowed},
    }
    if therapy is not None and therapy.parts > 1:
        resource["groupIdentifier"] = {"system": _THERAPY_ID_SYSTEM, "value": therapy.therapy_id}
        resource["extension"] = [_therapy_extension(therapy)]
    return _json(_validated(MedicationRequest, _without_none(resource), "MedicationRequest"))


def _therapy_extension(therapy: TherapyPart) -> dict[str, Any]:
    return {"url": _THERAPY_PART_URL, "extension": [{"url": "part", "valuePositiveInt": therapy.part},
                                                    {"url": "parts", "valuePositiveInt": therapy.parts}]}


def _therapy_part_of(resource: dict, path: str) -> tuple[int, int] | None | FhirProblem:
    """(part, parts) from the therapy-part extension, None without one, or what is wrong with it."""
    extensions = [e for e in resource.get("extension") or [] if isinstance(e, dict) and e.get("url") == _THERAPY_PART_URL]
    if not extensions:
        return None
    values: dict[str, Any] = {}
    for sub in extensions[0].get("extension") or []:
        if isinstance(sub, dict) and sub.get("url") in ("part", "parts"):
            values[sub["url"]] = sub.get("valuePositiveInt")
    part, parts = values.get("part"), values.get("parts")
    if len(extensions) > 1 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (part, parts)) \
            or part > parts:
        return FhirProblem(path=f"{path}.extension", message=f"{_THERAPY_PART_URL} must appear once, with "
                           "positive integers part <= parts")
    return part, parts


def orders_from_therapy_requests(resources: list[dict], *,
                                 rules: PrescribingRules | None = None) -> list[PrescriptionOrder]:
    """A therapy in parts, one FHIR R4 MedicationRequest per part (each with its own
    dispenseRequest.validityPeriod and numberOfRepeatsAllowed), as the parts' orders in part order.

    The requests either all carry the therapy-part extension (part k of n, each part once, n the number
    of requests; and one groupIdentifier) or none does (the list order is the part order). Raises
    FhirMappingError with every problem, each at `MedicationRequest[i]...`."""
    problems: list[FhirProblem] = []
    orders: list[PrescriptionOrder | None] = []
    numbered: list[tuple[int, int] | None] = []
    groups: set[str] = set()
    for index, resource in enumerate(resources):
        root = f"MedicationRequest[{index}]"
        try:
            orders.append(order_from_medication_request(resource, rules=rules, _allow_part=True))
        except FhirMappingError as exc:
            orders.append(None)
            problems += [FhirProblem(path=p.path.replace("MedicationRequest", root, 1), message=p.message)
                         for p in exc.problems]
        part = _therapy_part_of(resource, root) if isinstance(resource, dict) else None
        if isinstance(part, FhirProblem):
            problems.append(part)
            part = None
        numbered.append(part)
        group = resource.get("groupIdentifier") if isinstance(resource, dict) else None
        if isinstance(group, dict):
            groups.add(f"{group.get('system')}|{group.get('value')}")
    if problems:
        raise FhirMappingError(problems)
    count = len(resources)
    if any(numbered) and (not all(numbered) or sorted(p for p, _ in numbered) != list(range(1, count + 1))
                          or any(n != count for _, n in numbered)):
        problems.append(FhirProblem(path="MedicationRequest.extension", message=(
            f"the therapy-part extensions must number the {count} requests 1 to {count}, each once, "
            f"each of {count}")))
    if len(groups) > 1:
        problems.append(FhirProblem(path="MedicationRequest.groupIdentifier",
                                    message="the parts of one therapy share one groupIdentifier"))
    if problems:
        raise FhirMappingError(problems)
    ordered = [order for _, order in sorted(zip([p for p, _ in numbered] if all(numbered) else range(count),
                                                orders, strict=True), key=lambda pair: pair[0])]
    problem = therapy_problem(ordered)  # type: ignore[arg-type]
    if problem:
        raise FhirMappingError([FhirProblem(path="MedicationRequest", message=problem)])
    return ordered  # type: ignore[return-value]


def _ingredient(medication: Medication) -> dict[str, Any]:
    ingredient: dict[str, Any] = {"itemCodeableConcept": {"text": medication.name}}
    try:
        ingredient["strength"] = _strength_ratio(medication)
    except FhirMappingError:
        ingredient["extension"] = [{"url": _STRENGTH_TEXT_URL, "valueString": medication.strength}]
    return ingredient


def _strength_ratio(medication: Medication) -> dict[str, Any]:
    """'400 mg' -> 400 mg per 1 <form>; '100 mg/5 mL' -> 100 mg per 5 mL. Units are text, not UCUM codes."""
    strength = medication.strength
    match = _STRENGTH.fullmatch(strength.strip())
    if match is None:
        ambiguous = re.search(r"\d,\d", strength) is not None
        raise FhirMappingError([FhirProblem(
            path="PrescriptionOrder.medication.strength",
            message=f"{strength!r} cannot be written as a FHIR Ratio: "
                    + ("a decimal comma is ambiguous ('1,000 mg'), use a decimal point" if ambiguous else
                       "write '<number> <unit>' or '<number> <unit>/[<number> ]<unit>', e.g. '400 mg', "
                       "'100 mg/5 mL'"))])
    numerator = {"value": Decimal(match["num"]), "unit": match["num_unit"]}
    if match["den_unit"] is None:
        denominator = {"value": 1, "unit": medication.form}
    else:
        denominator = {"value": Decimal(match["den"] or 1), "unit": match["den_unit"]}
    if any(len(value["value"].normalize().as_tuple().digits) > _MAX_SIGNIFICANT_DIGITS
           for value in (numerator, denominator) if isinstance(value["value"], Decimal)):
        raise FhirMappingError([FhirProblem(
            path="PrescriptionOrder.medication.strength",
            message=f"{strength!r} has more than {_MAX_SIGNIFICANT_DIGITS} significant digits, more than a FHIR "
                    f"decimal carries exactly")])
    return {"numerator": numerator, "denominator": denominator}


# -- MedicationDispense ------------------------------------------------------------------------------

def medication_dispense(prescription: RevealedPrescription | dict, *, dispense_id: str,
                        when_handed_over: dt.datetime, pharmacy_name: str, pharmacy_identifier: str | None,
                        token_tx_hash: str | None, remaining_redemptions: int | None,
                        dispensed_medication: Medication | dict | None = None, dispensed_quantity: int | None = None,
                        substitution: str | None = None, substitution_reason: str | None = None) -> dict:
    """The pharmacy's record of a dispense as a FHIR R4 MedicationDispense (JSON dict).

    `prescription` is a RevealedPrescription or its stored JSON form (the pharmacy keeps
    `model_dump(mode="json", exclude={"token"})`). The token's secret key is never written: it is
    dropped on input, and the finished resource is checked not to contain it.

    What was handed over, when it is not exactly the prescription: `substitution` "generic" (with
    `dispensed_medication`) or "pack_size" (with `dispensed_quantity`), and the pharmacist's
    `substitution_reason`; `substitution.wasSubstituted` is false otherwise. The rules of what may be
    substituted are the pharmacy's (erx_roles.dispensing); this only writes it down.
    """
    dispensed, secrets = _dispensed_prescription(prescription)
    problems: list[FhirProblem] = []
    handed_over, quantity = _handed_over(dispensed, dispensed_medication, dispensed_quantity, substitution, problems)
    if token_tx_hash is not None and not _TX_HASH.fullmatch(token_tx_hash):
        problems.append(FhirProblem(path="MedicationDispense.identifier",
                                    message="the token spend transaction hash must be 0x and 64 hex digits"))
    if remaining_redemptions is not None and (isinstance(remaining_redemptions, bool) or remaining_redemptions < 0):
        problems.append(FhirProblem(path="MedicationDispense.extension",
                                    message="remaining redemptions must be a whole number >= 0"))
    if problems:
        raise FhirMappingError(problems)
    medication = handed_over
    pharmacy: dict[str, Any] = {"resourceType": "Organization", "id": "pharmacy", "name": pharmacy_name}
    if pharmacy_identifier is not None:
        pharmacy["identifier"] = [{"system": _PHARMACY_ID_SYSTEM, "value": pharmacy_identifier}]
    resource: dict[str, Any] = {
        "resourceType": "MedicationDispense",
        "id": dispense_id,
        "contained": [_patient(dispensed.patient_name, dispensed.patient_birth_date), pharmacy],
        "extension": None if remaining_redemptions is None else [
            {"url": _REMAINING_REDEMPTIONS_URL, "valueUnsignedInt": remaining_redemptions}],
        "identifier": None if token_tx_hash is None else [
            {"system": _TOKEN_SPEND_TX_SYSTEM, "value": token_tx_hash}],
        "status": "completed",
        "medicationCodeableConcept": _medication_concept(
            medication, text=f"{medication.name} {medication.strength} {medication.form}"),
        "subject": {"reference": "#patient"},
        "performer": [{"actor": {"reference": "#pharmacy", "display": pharmacy_name}}],
        "authorizingPrescription": [{
            "type": "MedicationRequest",
            "identifier": {"system": _PRESCRIPTION_ID_SYSTEM, "value": dispensed.prescription_id},
            "display": f"prescribed by {dispensed.prescriber.name} ({dispensed.prescriber.identifier})"}],
        "quantity": {"value": quantity, "unit": medication.form},
        "whenHandedOver": when_handed_over,
        "dosageInstruction": [{"text": dispensed.dosage_instructions}],
        "substitution": _substitution(dispensed, substitution, quantity, substitution_reason),
    }
    result = _json(_validated(MedicationDispense, _without_none(resource), "MedicationDispense"))
    written = json.dumps(result).casefold()
    if any(secret in written for secret in secrets):
        raise FhirMappingError([FhirProblem(path="MedicationDispense", message=(
            "the redemption token's secret key would appear in the dispense record, which is therefore not produced"))])
    return result


def _handed_over(prescribed: PresentedPrescription, medication: Medication | dict | None, quantity: int | None,
                 substitution: str | None, problems: list[FhirProblem]) -> tuple[Medication, int]:
    """The medication and quantity handed over, checked; problems are appended."""
    handed_over = prescribed.medication
    if substitution is not None and substitution not in _SUBSTITUTION_KINDS:
        problems.append(FhirProblem(path="MedicationDispense.substitution.type",
                                    message=f"a substitution is one of {list(_SUBSTITUTION_KINDS)}"))
    if medication is not None:
        try:
            handed_over = Medication.model_validate(medication)
        except ValidationError as exc:
            problems += [FhirProblem(path=".".join(["MedicationDispense.medicationCodeableConcept",
                                                    *(str(part) for part in error["loc"])]),
                                     message=_clean_message(error["msg"])) for error in exc.errors()]
    if quantity is not None and (isinstance(quantity, bool) or not isinstance(quantity, int)
                                 or not 1 <= quantity <= _MAX_QUANTITY):
        problems.append(FhirProblem(path="MedicationDispense.quantity",
                                    message=f"the quantity handed over is a whole number from 1 to {_MAX_QUANTITY}"))
        quantity = None
    if substitution is None and (handed_over != prescribed.medication
                                 or quantity not in (None, prescribed.quantity)):
        problems.append(FhirProblem(path="MedicationDispense.substitution",
                                    message="another medication or quantity than prescribed is a substitution: "
                                            "say which (generic or pack_size)"))
    return handed_over, prescribed.quantity if quantity is None else quantity


def _substitution(prescribed: PresentedPrescription, kind: str | None, quantity: int,
                  reason: str | None) -> dict[str, Any]:
    if kind is None:
        return {"wasSubstituted": False}
    medication = prescribed.medication
    named = f"{medication.name} {medication.strength} {medication.form} ({medication.code_system} {medication.code})"
    if kind == "generic":
        kind_of = {"coding": [{"system": _SUBSTITUTION_SYSTEM, "code": "EC", "display": "equivalent composition"}],
                   "text": f"generic for the prescribed {named}"}
    else:
        kind_of = {"text": f"other pack size: {quantity} of the {prescribed.quantity} {medication.form} prescribed "
                           f"({named})"}
    written: dict[str, Any] = {"wasSubstituted": True, "type": kind_of}
    if reason:
        written["reason"] = [{"text": reason}]
    return written


def _dispensed_prescription(prescription: RevealedPrescription | dict) -> tuple[PresentedPrescription, list[str]]:
    """The prescription without its token, and the secret key (lower-case hex, no 0x) to keep out."""
    if isinstance(prescription, RevealedPrescription):
        data = prescription.model_dump(exclude={"token"})
        key: Any = prescription.token.secret_key.get_secret_value()
    elif isinstance(prescription, dict):
        data = {name: value for name, value in prescription.items() if name != "token"}
        token = prescription.get("token")
        key = token.get("secret_key") if isinstance(token, dict) else None
        key = key.get_secret_value() if hasattr(key, "get_secret_value") else key
    else:
        raise FhirMappingError([FhirProblem(path="prescription",
                                            message="expected a RevealedPrescription or its JSON dict")])
    secrets = [key.casefold().removeprefix("0x")] if isinstance(key, str) and len(key.strip("*")) >= 16 else []
    try:
        return PresentedPrescription.model_validate(data), secrets
    except ValidationError as exc:
        raise FhirMappingError([
            FhirProblem(path=".".join(["prescription", *(str(part) for part in error["loc"])]),
                        message=_clean_message(error["msg"]))
            for error in exc.errors()]) from None


# -- shared -----------------------------------------------------------------------------------------

def _patient(name: str, birth_date: dt.date) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "patient", "name": [{"text": name}], "birthDate": birth_date}


def _medication_concept(medication: Medication, *, text: str) -> dict[str, Any]:
    return {"coding": [{"system": _CODE_SYSTEM_URIS[medication.code_system], "code": medication.code}], "text": text}


def _validated[R: Resource](model: type[R], resource: Any, root: str) -> R:
    """The resource validated by fhir.resources; every failure becomes FhirProblems, nothing else escapes."""
    if not isinstance(resource, dict):
        raise FhirMappingError([FhirProblem(path=root, message="expected a JSON object")])
    if resource.get("resourceType") != root:
        raise FhirMappingError([FhirProblem(path=f"{root}.resourceType",
                                            message=f"expected {root!r}, not {resource.get('resourceType')!r}")])
    problems = list(_contained_type_problems(resource, root))
    if problems:
        raise FhirMappingError(problems)
    try:
        return model.model_validate(copy.deepcopy(resource))
    except ValidationError as exc:
        raise FhirMappingError([_library_problem(root, error) for error in exc.errors()]) from None
    except Exception as exc:  # the library raises more than ValidationError on some malformed input
        # the exception's text may quote input values, so only its type is told; the chain keeps the rest
        raise FhirMappingError([FhirProblem(path=root, message=f"not a valid FHIR {root} "
                                                               f"({type(exc).__name__})")]) from exc


def _contained_type_problems(resource: dict, root: str) -> Iterator[FhirProblem]:
    """Contained resources of unknown type make the library raise a bare KeyError: catch them first."""
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return
    for i, item in enumerate(contained):
        kind = item.get("resourceType") if isinstance(item, dict) else None
        path = f"{root}.contained[{i}].resourceType"
        if not isinstance(kind, str):
            yield FhirProblem(path=path, message="a contained resource needs a resourceType")
            continue
        try:
            get_fhir_model_class(kind)
        except (ValueError, KeyError):
            yield FhirProblem(path=path, message=f"unknown resource type {kind!r}")


def _library_problem(root: str, error: Any) -> FhirProblem:
    path = root
    for part in error["loc"]:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "resource_type":
            path += ".resourceType"
        elif re.fullmatch(r"_?[A-Za-z][A-Za-z0-9]*(__ext)?", part):
            path += "." + (f"_{part.removesuffix('__ext')}" if part.endswith("__ext") else part)
        # other parts are pydantic's names for union branches and validators, not FHIR elements
    message = f"not an element of FHIR R4 {root} here" if error["type"] == "extra_forbidden" else error["msg"]
    return FhirProblem(path=path, message=_clean_message(message))


def _clean_message(message: str) -> str:
    return " ".join(message.removeprefix("Value error, ").split())


def _json(model: Resource) -> dict:
    return model.model_dump(mode="json")


def _without_none(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if value is not None}


def _number(value: Decimal) -> str:
    """400, not 4E+2 or 400.0; 0.5, not 0.50."""
    return format(value.normalize(), "f")
