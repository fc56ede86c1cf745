"""The pharmacy's decisions, as pure functions: every refusal reason, and every way a holder may
compose a presentation to pass off what it did not get from a trusted prescriber."""

from __future__ import annotations

import datetime as dt

import pytest
from eth_account import Account

from erx_contracts.client import TokenStatus
from erx_roles.dispensing import ChainFacts, Presented, abandoned, decide, encode, examine, shown, token_refusal
from erx_roles.scenario import sample_order
from erx_schemas.prescription import (Prescriber, Prescription, PrescriptionOrder, RefusalReason, TokenRef,
                                      dispensing_proof_request)

SCHEMA = "V4SGRU86Z58d6TV7PBUe6f:2:erx-prescription:1.0"
GENUINE = "Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription"
FORGER = "EbP4aYNeTHL6q385GuVpRV:3:CL:12:forged"
CONTRACT = "0x" + "ab" * 20
KEY = "0x" + "11" * 32
NOW = 1_800_000_000


def attributes(**order) -> dict[str, str]:
    return Prescription(order=PrescriptionOrder.model_validate(sample_order(**order)),
                        prescriber=Prescriber(name="Dr. Test", identifier="123"),
                        token=TokenRef(chain_id=1337, contract=CONTRACT, secret_key=KEY)).to_attributes()


def presentation(*, credentials: list[tuple[str, str]], attrs_from: int, predicates_from: dict[str, int],
                 values: dict[str, str] | None = None) -> dict:
    """A presentation as the holder composed it: `credentials` lists (schema id, cred def id) in the
    holder's order; the attribute group and each predicate name their sub-proof."""
    request = dispensing_proof_request(SCHEMA)
    values = values or attributes()
    names = request["requested_attributes"]["prescription"]["names"]
    return {
        "requested_proof": {
            "revealed_attr_groups": {"prescription": {
                "sub_proof_index": attrs_from,
                "values": {n: {"raw": values[n], "encoded": encode(values[n])} for n in names}}},
            "self_attested_attrs": {}, "unrevealed_attrs": {}, "revealed_attrs": {},
            "predicates": {name: {"sub_proof_index": index} for name, index in predicates_from.items()},
        },
        "identifiers": [{"schema_id": schema, "cred_def_id": cred_def, "rev_reg_id": None, "timestamp": None}
                        for schema, cred_def in credentials],
    }


REQUEST = dispensing_proof_request(SCHEMA)
BOTH = {"valid_until": 0, "valid_from": 0}


def live(**overrides) -> ChainFacts:
    status = dict(token=Account.from_key(KEY).address, exists=True, issuer=Account.create().address, remaining=1,
                  not_before=NOW - 10, not_after=NOW + 10, cancelled=False) | overrides
    return ChainFacts(on_our_chain=True, status=TokenStatus(**status), now=NOW)


def trusted(cred_def_id: str) -> bool:
    return cred_def_id == GENUINE


def verdict(pres: dict, verified: str = "true", chain: ChainFacts | None = None):
    presented = examine(REQUEST, pres, verified, SCHEMA)
    return presented, decide(presented, trusted, chain or live())


def test_one_genuine_trusted_credential_may_be_dispensed():
    presented, refusal = verdict(presentation(credentials=[(SCHEMA, GENUINE)], attrs_from=0, predicates_from=BOTH))
    assert refusal is None and isinstance(presented, Presented)
    assert presented.prescription.medication.name == "Ibuprofen"
    assert presented.identifiers.cred_def_id == GENUINE and shown(presented, refusal)


@pytest.mark.parametrize("genuine_first", [True, False])
def test_attributes_from_a_forged_credential_with_predicates_from_the_genuine_one_are_refused(genuine_first):
    """The attack that was dispensed: forged attributes, genuine predicates, genuine listed first."""
    creds = [(SCHEMA, GENUINE), (SCHEMA, FORGER)] if genuine_first else [(SCHEMA, FORGER), (SCHEMA, GENUINE)]
    forged, genuine = (1, 0) if genuine_first else (0, 1)
    forged_values = attributes(medication={"name": "Oxycodone", "code": "N02AA05", "code_system": "ATC",
                                           "strength": "80 mg", "form": "tablet"}, quantity=100)
    pres = presentation(credentials=creds, attrs_from=forged, values=forged_values,
                        predicates_from={"valid_until": genuine, "valid_from": genuine})
    presented, refusal = verdict(pres)
    assert refusal is not None and refusal.reason == RefusalReason.INVALID_PRESENTATION
    assert "another credential" in refusal.detail
    assert not shown(presented, refusal)


@pytest.mark.parametrize("genuine_first", [True, False])
def test_genuine_attributes_with_predicates_from_another_credential_are_refused(genuine_first):
    creds = [(SCHEMA, GENUINE), (SCHEMA, FORGER)] if genuine_first else [(SCHEMA, FORGER), (SCHEMA, GENUINE)]
    genuine, other = (0, 1) if genuine_first else (1, 0)
    pres = presentation(credentials=creds, attrs_from=genuine, predicates_from={"valid_until": other,
                                                                                "valid_from": genuine})
    assert verdict(pres)[1].reason == RefusalReason.INVALID_PRESENTATION


def test_a_forged_credential_alone_is_refused_as_untrusted_and_not_shown():
    presented, refusal = verdict(presentation(credentials=[(SCHEMA, FORGER)], attrs_from=0, predicates_from=BOTH))
    assert refusal.reason == RefusalReason.UNTRUSTED_ISSUER and FORGER in refusal.detail
    assert not shown(presented, refusal)


def test_a_credential_over_another_schema_is_refused():
    other = "V4SGRU86Z58d6TV7PBUe6f:2:erx-prescription:9.9"
    pres = presentation(credentials=[(other, GENUINE)], attrs_from=0, predicates_from=BOTH)
    assert verdict(pres)[1].reason == RefusalReason.INVALID_PRESENTATION


def test_the_issuer_is_that_of_the_proving_sub_proof_not_the_first_identifier():
    """A trusted credential listed first but proving nothing does not lend its issuer."""
    pres = presentation(credentials=[(SCHEMA, GENUINE), (SCHEMA, FORGER)], attrs_from=1,
                        predicates_from={"valid_until": 1, "valid_from": 1})
    assert verdict(pres)[1].reason == RefusalReason.UNTRUSTED_ISSUER


@pytest.mark.parametrize("damage", ["missing_predicate", "extra_predicate", "self_attested", "bad_index",
                                    "missing_attribute", "wrong_encoding", "no_group"])
def test_malformed_presentations_are_invalid(damage):
    pres = presentation(credentials=[(SCHEMA, GENUINE)], attrs_from=0, predicates_from=BOTH)
    proof = pres["requested_proof"]
    if damage == "missing_predicate":
        del proof["predicates"]["valid_from"]
    elif damage == "extra_predicate":
        proof["predicates"]["age"] = {"sub_proof_index": 0}
    elif damage == "self_attested":
        proof["self_attested_attrs"] = {"medication_name": "Oxycodone"}
    elif damage == "bad_index":
        proof["revealed_attr_groups"]["prescription"]["sub_proof_index"] = 3
    elif damage == "missing_attribute":
        del proof["revealed_attr_groups"]["prescription"]["values"]["medication_name"]
    elif damage == "wrong_encoding":
        proof["revealed_attr_groups"]["prescription"]["values"]["medication_name"]["raw"] = "Oxycodone"
    elif damage == "no_group":
        proof["revealed_attr_groups"] = {}
    presented, refusal = verdict(pres)
    assert refusal.reason == RefusalReason.INVALID_PRESENTATION and not shown(presented, refusal)


def test_a_proof_that_does_not_verify_is_revoked_only_if_the_chain_says_cancelled():
    pres = presentation(credentials=[(SCHEMA, GENUINE)], attrs_from=0, predicates_from=BOTH)
    assert verdict(pres, "false", live(cancelled=True))[1].reason == RefusalReason.REVOKED
    presented, refusal = verdict(pres, "false", live())
    assert refusal.reason == RefusalReason.INVALID_PRESENTATION and not shown(presented, refusal)


@pytest.mark.parametrize("chain, reason", [
    (ChainFacts(on_our_chain=False, status=None, now=None), RefusalReason.UNKNOWN_TOKEN),
    (live(exists=False), RefusalReason.UNKNOWN_TOKEN),
    (live(cancelled=True), RefusalReason.CANCELLED),
    (live(remaining=0), RefusalReason.ALREADY_REDEEMED),
    (live(not_before=NOW + 1), RefusalReason.NOT_YET_VALID),
    (live(not_after=NOW - 1), RefusalReason.EXPIRED),
])
def test_token_reasons(chain, reason):
    assert token_refusal(chain).reason == reason
    presented, refusal = verdict(presentation(credentials=[(SCHEMA, GENUINE)], attrs_from=0, predicates_from=BOTH),
                                 chain=chain)
    assert refusal.reason == reason and shown(presented, refusal), "a genuine prescription may be shown"


def test_the_validity_window_edges_are_inclusive():
    assert token_refusal(live(not_before=NOW, not_after=NOW)) is None


@pytest.mark.parametrize("text, reason", [
    ("abandoned: Unable to automatically select requested attributes.", RefusalReason.NO_MATCHING_CREDENTIAL),
    ("abandoned: no prescription in this wallet matches the request", RefusalReason.NO_MATCHING_CREDENTIAL),
    ("abandoned: declined by the wallet's user", RefusalReason.DECLINED),
    ("abandoned: Request declined", RefusalReason.DECLINED),
    ("abandoned: predicate not satisfied: valid_until >= 20261201", RefusalReason.EXPIRED),
    ("predicate not satisfied: valid_from <= 20261201", RefusalReason.NOT_YET_VALID),
    ("abandoned: the wallet could not create the presentation: boom", RefusalReason.INVALID_PRESENTATION),
    (None, RefusalReason.INVALID_PRESENTATION),
])
def test_a_wallets_problem_report_says_what_happened(text, reason):
    refusal = abandoned(text)
    assert refusal.reason == reason
    assert (text or "").split(": ", 1)[-1] in refusal.detail


@pytest.mark.parametrize("raw", ["20", "-5", "2147483647", "2147483648", "-2147483649", "Ibuprofen", "007",
                                 "00123456", " 7", "", "400 mg", "0x" + "11" * 32, "20261201", "µg"])
def test_encoding_is_the_one_the_agent_verifies_against(raw):
    from acapy_agent.messaging.util import encode as acapy_encode
    assert encode(raw) == acapy_encode(raw)


def test_dates_in_sample_are_today():
    assert attributes()["valid_from"] == dt.date.today().strftime("%Y%m%d")
