"""The prescription flow, step by step, through the controllers' APIs only.

Used by `erx demo` and by the end-to-end tests: each step is one thing a doctor, patient or
pharmacist does, with what it returned and how long it took.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any, Protocol

from pydantic import BaseModel

from erx_roles.client import ControllerApiError, ControllerClient

WAIT_S = 30


class Step(BaseModel):
    name: str
    outcome: str  # "ok" or "refused"
    reason: str | None = None
    tx_hash: str | None = None
    seconds: float
    detail: str = ""


def sample_order(redemptions: int = 1, **overrides: Any) -> dict:
    today = dt.date.today()
    order = {
        "patient_name": "Erika Mustermann",
        "patient_birth_date": "1964-08-12",
        "medication": {"name": "Ibuprofen", "code": "M01AE01", "code_system": "ATC", "strength": "400 mg",
                       "form": "tablet"},
        "dosage_instructions": "1 tablet up to 3 times a day with food",
        "quantity": 20,
        "redemptions": redemptions,
        "valid_from": today.isoformat(),
        "valid_until": (today + dt.timedelta(days=28)).isoformat(),
    }
    return order | overrides


class Controllers(Protocol):
    """Where each organisation's controller answers, its operator token, and the staff member the flow
    acts as there (e.g. erx_cli.system)."""

    def controller_url(self, name: str) -> str: ...

    def operator_token(self, name: str) -> Any: ...

    def staff_member(self, name: str) -> str | None: ...


class Scenario:
    """Holds one client per controller and performs the flow's actions: with the organisation's operator
    token, acting for its dev-default person (a prescriber, a pharmacist: `Erx-On-Behalf-Of`), as practice
    and pharmacy software acting for the person at the keyboard would. `as_staff=False`: the bare operator
    token (administration: integrators, staff, trusted prescribers, webhooks)."""

    def __init__(self, network: Controllers, as_staff: bool = True):
        self.network = network
        self.as_staff = as_staff
        self.clients: dict[str, ControllerClient] = {}

    def client(self, agent_name: str) -> ControllerClient:
        if agent_name not in self.clients:
            person = self.network.staff_member(agent_name) if self.as_staff else None
            self.clients[agent_name] = ControllerClient(self.network.controller_url(agent_name),
                                                        self.network.operator_token(agent_name), on_behalf_of=person)
        return self.clients[agent_name]

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()

    # -- actions --------------------------------------------------------------------------------
    async def onboard(self, doctor: str, pharmacies: list[str]) -> str:
        """The practice's credential definition. Pharmacies trust it through the national register of
        prescribers (the health authority onboarded the practice): nothing is set at any pharmacy."""
        return (await self.client(doctor).get("/api/status"))["cred_def_id"]

    async def connect(self, organisation: str, patient: str) -> tuple[str, str]:
        """The patient's wallet opens the organisation's invitation; returns both sides' connection ids."""
        invitation = await self.client(organisation).post("/api/invitations")
        opened = await self.client(patient).post("/api/invitations", {"invitation_url": invitation["invitation_url"]})
        conn = await self.client(organisation).get(f"/api/invitations/{invitation['invitation_id']}/connection",
                                                   wait=WAIT_S)
        return conn["connection_id"], opened["connection_id"]

    async def issue(self, doctor: str, connection_id: str, order: dict) -> dict:
        created = await self.client(doctor).post("/api/prescriptions", {"connection_id": connection_id,
                                                                        "order": order})
        return await self.client(doctor).get(f"/api/prescriptions/{created['prescription_id']}", wait=WAIT_S)

    async def credential_for(self, patient: str, prescription_id: str) -> str:
        for cred in await self.client(patient).get("/api/credentials", prescription_id=prescription_id):
            return cred["credential_id"]
        raise LookupError(f"the patient's wallet holds no credential for prescription {prescription_id}")

    async def present(self, pharmacy: str, patient: str, credential_id: str) -> dict:
        """The pharmacy shows a QR code; the patient's wallet opens it and shares the chosen prescription."""
        check = await self.client(pharmacy).post("/api/checks", {})
        await self.client(patient).post("/api/invitations", {"invitation_url": check["invitation_url"],
                                                             "credential_id": credential_id})
        return await self.client(pharmacy).get(f"/api/checks/{check['check_id']}", wait=WAIT_S)

    async def present_over_connection(self, pharmacy: str, patient: str, connections: tuple[str, str],
                                      credential_id: str) -> dict:
        """The patient, connected to the pharmacy, chooses the prescription; the pharmacy asks for it."""
        pharmacy_side, patient_side = connections
        await self.client(patient).post(f"/api/connections/{patient_side}/share", {"credential_id": credential_id})
        check = await self.client(pharmacy).post("/api/checks", {"connection_id": pharmacy_side})
        return await self.client(pharmacy).get(f"/api/checks/{check['check_id']}", wait=WAIT_S)

    async def redeem(self, pharmacy: str, patient: str, credential_id: str) -> dict:
        check = await self.present(pharmacy, patient, credential_id)
        if check["state"] != "verified":
            return check
        try:
            return await self.client(pharmacy).post(f"/api/checks/{check['check_id']}/dispense")
        except ControllerApiError as exc:
            if exc.status == 409 and isinstance(exc.body, dict) and "check" in exc.body:
                return exc.body["check"]  # refused meanwhile (e.g. another pharmacy was faster)
            raise

    async def revoke(self, doctor: str, prescription_id: str) -> dict:
        return await self.client(doctor).post(f"/api/prescriptions/{prescription_id}/revoke")

    async def issue_therapy(self, doctor: str, connection_id: str, order: dict, parts: int, interval_days: int
                            ) -> dict:
        """A therapy in parts, each part issued (or ended) before this returns."""
        therapy = await self.client(doctor).post("/api/therapies", {
            "connection_id": connection_id, "order": order, "plan": {"parts": parts, "interval_days": interval_days}})
        for part in therapy["parts"]:
            await self.client(doctor).get(f"/api/prescriptions/{part['prescription_id']}", wait=WAIT_S)
        return await self.client(doctor).get(f"/api/therapies/{therapy['therapy_id']}")

    async def print_paper(self, doctor: str, order: dict) -> tuple[list[str], bytes]:
        """A paper prescription: its prescription ids and the PDF to print."""
        client = self.client(doctor)
        async with client._session.post(client.base_url + "/api/prescriptions/paper", json={"order": order}) as resp:
            body = await resp.read()
            if resp.status != 201:
                raise ControllerApiError("POST", "/api/prescriptions/paper", resp.status, body[:500].decode(errors="replace"))
            return resp.headers["Erx-Prescription-Ids"].split(","), body

    async def redeem_pickup_code(self, pharmacy: str, code: str) -> dict:
        """A paper prescription or a representative's pickup code at the counter: checked, then dispensed."""
        check = await self.client(pharmacy).post("/api/pickup-codes", {"code": code})
        if check["state"] != "verified":
            return check
        try:
            return await self.client(pharmacy).post(f"/api/checks/{check['check_id']}/dispense")
        except ControllerApiError as exc:
            if exc.status == 409 and isinstance(exc.body, dict) and "check" in exc.body:
                return exc.body["check"]
            raise


async def timed(name: str, action, outcome_of=lambda r: ("ok", None, None, "")) -> tuple[Step, Any]:
    started = time.monotonic()
    result = await action
    outcome, reason, tx_hash, detail = outcome_of(result)
    return Step(name=name, outcome=outcome, reason=reason, tx_hash=tx_hash,
                seconds=round(time.monotonic() - started, 3), detail=detail), result


def check_outcome(check: dict) -> tuple[str, str | None, str | None, str]:
    if check["state"] == "dispensed":
        return "ok", None, check.get("spend_tx_hash"), f"{check.get('remaining_redemptions')} redemption(s) left"
    if check["state"] == "refused":
        refusal = check.get("refusal") or {}
        return "refused", refusal.get("reason"), None, refusal.get("detail") or ""
    return "unfinished", None, None, f"check ended in state {check['state']}"
