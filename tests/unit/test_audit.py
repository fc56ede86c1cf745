"""The audit log: an entry's fields cannot hold a secret, the log only grows, exports are complete; and
the one recording mechanism (erx_roles.acting) records each service call an action made, with its
subject and outcome, also when a page turned a refusal into a message."""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
import uuid
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from erx_core.audit import AuditAction, AuditEntry, AuditLog, Outcome, Via, screened
from erx_core.secrets import new_fernet_key, new_key, new_seed
from erx_core.staff import new_personal_token
from erx_core.store import Store
from erx_roles.acting import Who, audited, subject_of, watch
from erx_roles.errors import Conflict

PID, CID = str(uuid.uuid4()), str(uuid.uuid4())


def secrets_of_every_kind() -> dict[str, str]:
    key = "0x" + secrets.token_hex(32)  # a prescription token's one-time key
    return {"token key": key, "token key without 0x": key[2:], "operator token": new_key(),
            "integrator token": "erx_" + secrets.token_urlsafe(32), "staff token": new_personal_token(),
            "session key": new_fernet_key(), "seed": new_seed(),
            "webhook secret": base64.b64encode(secrets.token_bytes(32)).decode()}


def test_no_field_of_an_entry_can_hold_a_secret():
    names = set(AuditEntry.model_fields)
    assert not {n for n in names if any(w in n for w in ("token", "secret", "key", "password", "hash"))}
    entry = dict(entry_id=str(uuid.uuid4()), at="2026-01-01T00:00:00Z", via=Via.PAGE, action=AuditAction.ISSUED,
                 outcome=Outcome.OK, status=200)
    AuditEntry(**entry)
    for name, secret in secrets_of_every_kind().items():
        for field in ("username", "prescription_id", "check_id", "target", "integrator_id"):
            with pytest.raises(ValidationError):
                AuditEntry(**entry, **{field: secret})
        kept = AuditEntry(**entry, reason=f"refused: the agent said {secret}!").reason
        assert secret not in kept and secret[4:-4] not in kept, name
    with pytest.raises(ValidationError):
        AuditEntry(**entry, detail="anything")  # no other field
    with pytest.raises(ValidationError):
        AuditEntry(**entry).model_copy(update={}).__setattr__("reason", "x")  # frozen


def test_the_screen_keeps_what_an_auditor_needs():
    did, cred_def = "Th7MpTaRZVRYnPiabds81Y", "Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription"
    text = f"no connection {PID}; prescriber {did} ({cred_def}) is not trusted; account 0x{'ab' * 20}"
    assert screened(text) == text
    assert len(screened("x " * 500)) <= 200


def test_the_log_only_grows_and_exports_every_entry(tmp_path):
    log = AuditLog(Store(tmp_path / "c.db"))
    assert not [m for m in dir(log) if m.startswith(("update", "delete", "remove", "put", "clear"))]
    for n in range(7):
        log.record(username="anna", role="prescriber", via=Via.PAGE, action=AuditAction.ISSUED,
                   prescription_id=str(uuid.uuid4()), status=201 if n % 2 else 409,
                   outcome=Outcome.OK if n % 2 else Outcome.REFUSED, reason=None if n % 2 else "=cmd|' /C calc'!A0")
    page = log.page(5)
    assert page.total == 7 and len(page.items) == 5 and page.next
    assert len(log.page(5, page.next).items) == 2
    rows = list(csv.DictReader(io.StringIO("".join(log.export("csv")))))
    assert len(rows) == 7 and rows[0]["username"] == "anna" and rows[0]["entry_id"] == page.items[0].entry_id
    assert all(not r["reason"].startswith("=") for r in rows)  # a spreadsheet takes no formula from it
    lines = [json.loads(line) for line in log.export("jsonl")]
    assert [line["entry_id"] for line in lines] == [r["entry_id"] for r in rows]
    assert log.of_prescription(lines[0]["prescription_id"])[0].entry_id == lines[0]["entry_id"]
    with pytest.raises(ValueError):
        list(log.export("xml"))


class FakePharmacy:
    async def dispense(self, check_id: str):
        if check_id == "gone":
            raise Conflict("check is refused; it cannot be dispensed")
        state = "refused" if check_id == "raced" else "dispensed"
        return SimpleNamespace(check_id=CID, state=state, prescription={"prescription_id": PID},
                               refusal=SimpleNamespace(reason="already_redeemed") if state == "refused" else None)

    async def parts(self):
        return [SimpleNamespace(prescription_id=str(uuid.uuid4()), state="offered") for _ in range(3)]

    async def paper(self):  # records with what came with them (a signed code, its text)
        return [(SimpleNamespace(prescription_id=PID, state="offered"), object(), "code")]

    async def nested(self):
        return await self.dispense("ok")


async def test_each_service_call_is_recorded_with_its_subject_and_outcome(tmp_path):
    log = AuditLog(Store(tmp_path / "c.db"))
    service = FakePharmacy()
    watch(service, "dispense", "parts", "nested", "paper")
    who = Who(username="paul", role="pharmacist", via=Via.PAGE)

    async def page_that_swallows_refusals(check_id: str) -> int:
        try:
            await service.dispense(check_id)
        except Conflict:
            return 303  # a flash message and a redirect: the page looks fine
        return 303

    for check_id in ("ok", "gone", "raced"):
        await audited(log, who, AuditAction.DISPENSED, {}, lambda c=check_id: page_that_swallows_refusals(c),
                      lambda status: status)
    ok, gone, raced = reversed(log.page(10).items)
    assert (ok.outcome, ok.check_id, ok.prescription_id, ok.username, ok.via) == ("ok", CID, PID, "paul", "page")
    assert (gone.outcome, gone.status, gone.reason) == ("refused", 409, "check is refused; it cannot be dispensed")
    assert (raced.outcome, raced.reason) == ("refused", "ended refused: already_redeemed")

    await audited(log, who, AuditAction.ISSUED, {}, service.parts, lambda _: 201)  # a therapy: one per part
    assert [e.action for e in log.page(3).items] == ["issued"] * 3
    assert len({e.prescription_id for e in log.page(3).items}) == 3

    await audited(log, who, AuditAction.DISPENSED, {}, service.nested, lambda _: 200)  # counted once
    assert log.page(10).total == 7

    with pytest.raises(Conflict):  # an action that raises is recorded, and the error goes on
        await audited(log, who, AuditAction.DISPENSED, {"check_id": CID}, lambda: service.dispense("gone"),
                      lambda _: 200)
    last = log.page(1).items[0]
    assert (last.check_id, last.outcome, last.status) == (CID, "refused", 409)

    await audited(log, who, AuditAction.ISSUED, {}, service.paper, lambda _: 201)
    assert log.page(1).items[0].prescription_id == PID

    await service.dispense("ok")  # outside an audited action (a background task): nothing
    assert log.page(10).total == 9


def test_subjects_are_found_wherever_the_action_names_them():
    check = SimpleNamespace(check_id=CID, prescription={"prescription_id": PID})
    assert subject_of({"prescription_id": PID}, None, check) == {"prescription_id": PID, "check_id": CID}
    assert subject_of({"username": "anna"}) == {"target": "anna"}
    assert subject_of(SimpleNamespace(integrator_id=PID)) == {"target": PID}
