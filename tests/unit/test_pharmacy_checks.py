"""Pharmacy checks nobody finishes time out: the agent's presentation (holding the token key) is
deleted, integrators get a `prescription.refused` event with reason `timed_out`, nothing is spent."""

from __future__ import annotations

from types import SimpleNamespace

from erx_core.events import EventBus
from erx_core.settings import CheckSettings
from erx_core.store import Store
from erx_core.webhooks import Outbox, WebhookSettings
from erx_roles.context import wire
from erx_roles.pharmacy import PROOF_TOPIC, CheckState, PharmacyService, StoredCheck


class FakeAdmin:
    def __init__(self):
        self.deleted: list[str] = []

    async def delete_presentation_exchange(self, pres_ex_id: str):
        self.deleted.append(pres_ex_id)


def pharmacy(tmp_path) -> tuple[PharmacyService, FakeAdmin, Outbox]:
    store = Store(tmp_path / "pharmacy.db")
    admin, outbox = FakeAdmin(), Outbox(store, "pharmacy", WebhookSettings())
    limits = CheckSettings(unanswered_after_s=600, undispensed_after_s=3600)
    ctx = SimpleNamespace(store=store, bus=EventBus(), admin=admin, outbox=outbox, chain=None,
                          config=SimpleNamespace(checks=limits))
    return PharmacyService(ctx), admin, outbox


async def test_unanswered_and_undispensed_checks_time_out_and_forget_the_presentation(tmp_path):
    service, admin, outbox = pharmacy(tmp_path)
    t0 = 1_000_000.0
    checks = {
        "fresh-request": StoredCheck(check_id="fresh-request", pres_ex_id="p1", created_at=t0 - 60, updated_at=t0 - 60),
        "old-request": StoredCheck(check_id="old-request", pres_ex_id="p2", created_at=t0 - 601, updated_at=t0 - 601),
        "verified-recently": StoredCheck(check_id="verified-recently", pres_ex_id="p3", state=CheckState.VERIFIED,
                                         created_at=t0 - 7200, updated_at=t0 - 100),
        "verified-long-ago": StoredCheck(check_id="verified-long-ago", pres_ex_id="p4", state=CheckState.VERIFIED,
                                         created_at=t0 - 7200, updated_at=t0 - 3601),
        "dispensed": StoredCheck(check_id="dispensed", pres_ex_id="p5", state=CheckState.DISPENSED,
                                 created_at=t0 - 9999, updated_at=t0 - 9999),
    }
    for check in checks.values():
        service.checks.put(check.check_id, check)

    assert sorted(await service.expire_stale(now=t0)) == ["old-request", "verified-long-ago"]
    states = {c.check_id: (c.state, c.refusal.reason if c.refusal else None) for c in service.checks.all()}
    assert states == {"fresh-request": ("requested", None), "old-request": ("refused", "timed_out"),
                      "verified-recently": ("verified", None), "verified-long-ago": ("refused", "timed_out"),
                      "dispensed": ("dispensed", None)}
    assert sorted(admin.deleted) == ["p2", "p4"]
    events = outbox.events()
    assert [(e.type, e.data["check"]["check_id"], e.data["reason"]) for e in events] == \
        [("prescription.refused", "old-request", "timed_out"), ("prescription.refused", "verified-long-ago", "timed_out")]
    assert await service.expire_stale(now=t0) == []  # once ended, a check stays ended


async def test_a_wallet_s_problem_report_refuses_the_check_once_wired_as_at_start_up(tmp_path):
    service, admin, outbox = pharmacy(tmp_path)
    service.checks.put("c1", StoredCheck(check_id="c1", pres_ex_id="p1"))
    wire(service, service.ctx.bus)  # what serve.build_app does
    await service.ctx.bus.publish(PROOF_TOPIC, {"pres_ex_id": "p1", "state": "abandoned",
                                                "error_msg": "declined by the wallet's user"})
    check = service.checks.get("c1")
    assert (check.state, check.refusal.reason) == (CheckState.REFUSED, "declined") and admin.deleted == ["p1"]
    assert [e.type for e in outbox.events()] == ["prescription.refused"]
