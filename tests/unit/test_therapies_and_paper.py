"""Therapies in parts, the practice's prescribing defaults, the wallet's validity display, and the
pharmacy's verdict on a pickup code: the pure rules behind issue 15."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import SecretStr, ValidationError

from erx_contracts.client import TokenStatus
from erx_roles.dispensing import ChainFacts, pickup_refusal, revealed_from_pickup
from erx_roles.patient.service import validity
from erx_roles.scenario import sample_order
from erx_schemas import paper
from erx_schemas.prescription import (MAX_THERAPY_SPAN_DAYS, PrescribingRules, PrescriptionOrder, RefusalReason,
                                      TherapyPart, TherapyPlan, ValidityLimit, input_context, therapy_orders,
                                      therapy_problem)

TODAY = dt.date(2030, 3, 1)


def order(**changes) -> PrescriptionOrder:
    data = sample_order() | {"valid_from": TODAY.isoformat(), "valid_until": (TODAY + dt.timedelta(days=28)).isoformat()}
    return PrescriptionOrder.model_validate(data | changes, context=input_context(TODAY))


def test_a_plan_makes_parts_of_the_same_length_each_interval_later():
    parts = therapy_orders(order(), TherapyPlan(parts=3, interval_days=30))
    assert [(p.valid_from, p.valid_until) for p in parts] == [
        (TODAY + dt.timedelta(days=30 * k), TODAY + dt.timedelta(days=30 * k + 28)) for k in range(3)]
    assert all(p.medication == order().medication for p in parts) and therapy_problem(parts) is None


def test_a_plan_reaching_beyond_a_year_is_refused_at_the_interval():
    with pytest.raises(ValidationError) as err:
        therapy_orders(order(), TherapyPlan(parts=4, interval_days=120))
    assert [e["loc"] for e in err.value.errors()] == [("interval_days",)]
    assert str(MAX_THERAPY_SPAN_DAYS) in str(err.value)


@pytest.mark.parametrize("plan", [{"parts": 1, "interval_days": 28}, {"parts": 13, "interval_days": 28},
                                  {"parts": 2, "interval_days": 0}, {"parts": 2, "interval_days": "28"}])
def test_a_plan_is_2_to_12_parts_at_a_positive_interval(plan):
    with pytest.raises(ValidationError):
        TherapyPlan.model_validate_json(str(plan).replace("'", '"'), strict=True)


def test_parts_given_one_by_one_must_be_one_prescription():
    first = order()
    assert therapy_problem([first]) == "a therapy has 2 to 12 parts, not 1"
    other_patient = order(patient_name="Somebody Else")
    assert "patient_name" in therapy_problem([first, other_patient])
    far = order(valid_from=(TODAY + dt.timedelta(days=360)).isoformat(),
                valid_until=(TODAY + dt.timedelta(days=380)).isoformat())
    assert "at most 365 days" in therapy_problem([first, far])
    assert therapy_problem([first, order(redemptions=2)]) is None, "parts may differ in repeats and window"


def test_a_part_is_never_beyond_its_parts():
    with pytest.raises(ValidationError):
        TherapyPart(therapy_id="5f0c7a3e-1d2b-4c6a-9e8f-0a1b2c3d4e5f", part=3, parts=2)


# -- the practice's defaults -------------------------------------------------------------------------

OPIOID = {"name": "Oxycodone", "code": "N02AA05", "code_system": "ATC", "strength": "10 mg", "form": "tablet"}


def test_the_default_window_is_the_practices_and_a_kinds_limit_shortens_it():
    rules = PrescribingRules(default_validity_days=14)
    base = sample_order() | {"valid_from": TODAY.isoformat()}
    del base["valid_until"]
    plain = PrescriptionOrder.model_validate(base, context=input_context(TODAY, rules))
    assert plain.valid_until == TODAY + dt.timedelta(days=14)
    opioid = PrescriptionOrder.model_validate(base | {"medication": OPIOID}, context=input_context(TODAY, rules))
    assert opioid.valid_until == TODAY + dt.timedelta(days=7), "the narcotics limit wins over the default"
    national = PrescriptionOrder.model_validate(base, context=input_context(TODAY))
    assert national.valid_until == TODAY + dt.timedelta(days=28)


def test_a_window_longer_than_its_kind_allows_is_refused_at_valid_until():
    with pytest.raises(ValidationError) as err:
        order(medication=OPIOID)  # 28 days
    assert [e["loc"] for e in err.value.errors()] == [("valid_until",)]
    assert "at most 7 days" in str(err.value)
    # a stored prescription (read without the input context) is not judged again by today's rules
    stored = order().model_dump(mode="json") | {"medication": OPIOID}
    assert PrescriptionOrder.model_validate(stored).medication.code == "N02AA05"


def test_limits_follow_atc_prefixes_only():
    rules = PrescribingRules(max_validity_days=90, limits=[ValidityLimit(kind="isotretinoin", atc_prefixes=["D10BA"],
                                                                           max_days=30)])
    medication = order().medication
    assert rules.limit(medication).max_days == 90
    assert rules.limit(medication.model_copy(update={"code": "D10BA01"})).max_days == 30
    assert rules.limit(medication.model_copy(update={"code": "01234567", "code_system": "PZN"})).max_days == 90


# -- the wallet tells its user how long a prescription is good for -----------------------------------

@pytest.mark.parametrize("today, state, text", [
    (dt.date(2030, 2, 28), "not_yet_valid", "valid from 2030-03-01 to 2030-03-29"),
    (dt.date(2030, 3, 1), "valid", "valid until 2030-03-29 (28 days left)"),
    (dt.date(2030, 3, 27), "expiring", "valid until 2030-03-29 (2 days left)"),
    (dt.date(2030, 3, 28), "expiring", "valid until 2030-03-29 (1 day left)"),
    (dt.date(2030, 3, 29), "expiring", "valid until today (2030-03-29)"),
    (dt.date(2030, 3, 30), "expired", "expired on 2030-03-29"),
])
def test_the_wallet_shows_the_window_and_the_days_left(today, state, text):
    assert validity({"valid_from": "20300301", "valid_until": "20300329"}, today) == {"state": state, "text": text}


def test_an_unreadable_window_is_said_to_be_unknown():
    assert validity({"valid_from": "2030-03-01"}, TODAY)["state"] == "unknown"


# -- the pharmacy's verdict on a verified pickup code ---------------------------------------------------

def code(**changes) -> paper.PickupCode:
    fields = dict(
        channel="paper", iss="Th7MpTaRZVRYnPiabds81Y", prescription_id="0b6f3a52-7d1e-4c55-9a1f-3f8e2d9c4b10",
        issue_date=TODAY, patient_name="Erika Mustermann", patient_birth_date=dt.date(1964, 8, 12),
        medication=paper.CodeMedication(name="Ibuprofen", code="M01AE01", code_system="ATC", strength="400 mg",
                                        form="tablet"),
        dosage_instructions="1-0-1", quantity=20, substitution_allowed=False, redemptions=2, valid_from=TODAY,
        valid_until=TODAY + dt.timedelta(days=28),
        prescriber=paper.CodePrescriber(name="Dr. Anna Schmidt", identifier="123456789"),
        token=paper.CodeToken(chain_id=1337, contract="0x" + "5e" * 20, secret_key=SecretStr("0x" + "a7" * 32)))
    return paper.PickupCode(**(fields | changes))


def live(**changes) -> ChainFacts:
    status = TokenStatus(**({"token": "0x" + "11" * 20, "issuer": None, "exists": True, "remaining": 2, "not_before": 0, "not_after": 2**32 - 1,
                             "cancelled": False} | changes))
    return ChainFacts(on_our_chain=True, status=status, now=1_900_000_000)


def test_a_pickup_code_reads_as_the_prescription_a_presentation_reveals():
    revealed = revealed_from_pickup(code())
    assert revealed.therapy == TherapyPart(therapy_id=revealed.prescription_id, part=1, parts=1)
    assert revealed.substitution_allowed is False and revealed.token.secret_key.get_secret_value() == "0x" + "a7" * 32
    part = revealed_from_pickup(code(therapy=paper.CodeTherapy(therapy_id="7c1d2e3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
                                                               part=2, parts=3)))
    assert (part.therapy.part, part.therapy.parts) == (2, 3)


@pytest.mark.parametrize("trusted, chain, reason", [
    (False, live(), RefusalReason.UNTRUSTED_ISSUER),
    (True, live(exists=False), RefusalReason.UNKNOWN_TOKEN),
    (True, live(cancelled=True), RefusalReason.CANCELLED),
    (True, live(remaining=0), RefusalReason.ALREADY_REDEEMED),
    (True, live(not_before=1_900_000_001), RefusalReason.NOT_YET_VALID),
    (True, live(not_after=1_899_999_999), RefusalReason.EXPIRED),
    (True, live(), None),
])
def test_a_pickup_codes_verdict_is_trust_then_the_token(trusted, chain, reason):
    refusal = pickup_refusal(code(), trusted, chain)
    assert (refusal.reason if refusal else None) == reason


def test_the_wallet_never_shows_the_pickup_code_or_the_key_in_what_it_lists():
    from erx_roles.patient.service import disclosed

    attrs = {"pickup_code": "ERX1:aGVhZGVy.cGF5bG9hZA.c2ln", "token_secret_key": "0x" + "a7" * 32, "quantity": "20"}
    shown = disclosed(attrs, list(attrs))
    assert [a.masked for a in shown] == [True, True, False]
    assert "ERX1" not in repr(shown) and "a7a7" not in repr(shown)
