"""The web pages without a network: sign-in, session cookie flags, CSRF refusal, field-level form
errors (never a 500), security headers, no secret in a page, short links and their QR codes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from erx_core.acapy_admin import ConnectionRecord
from erx_core.audit import AuditLog
from erx_core.staff import StaffCreate, StaffDirectory
from erx_core.events import EventBus
from erx_core.secrets import new_fernet_key
from erx_core.store import Store
from erx_roles.doctor import IssuedPrescription, PrescriptionState, PrescriptionView
from erx_roles.errors import NotFound
from erx_roles.http import api_middlewares
from erx_roles.integrators import Integrators
from erx_roles.invitations import ShortLinks, decode_invitation, qr_svg
from erx_roles.pages.doctor import DoctorPages, issue_request_from_form
from erx_roles.pages.staff import StaffPages
from erx_roles.acting import watch
from erx_roles.pages.web import PageConfig, setup_pages
from erx_roles.patient import disclosed, predicate_statement
from erx_schemas.prescription import PrescribingRules

PASSWORD = "correct horse battery"
ASSISTANT_PASSWORD, OPERATOR_PASSWORD = "assistant secret 1", "operator secret 1"
API_KEY = "api-key-never-in-a-page"
SESSION_KEY = new_fernet_key()
CONNECTION = "0b7e6a2c-5a1d-4c4e-9f00-2a6f3f1c9d10"
GONE = "9d9d9d9d-0000-4000-8000-000000000000"
ISSUED = "00000000-0000-4000-8000-000000000001"  # the prescription the fake practice issues  # a well-formed connection the agent does not know
INVITATION = {"@type": "https://didcomm.org/out-of-band/1.1/invitation", "@id": "inv-1", "label": "Test Doctor"}
INVITATION_URL = "http://127.0.0.1:9/?oob=" + base64.urlsafe_b64encode(json.dumps(INVITATION).encode()).decode().rstrip("=")


def good_form(**overrides) -> dict[str, str]:
    today = dt.date.today()
    form = {"connection_id": CONNECTION, "patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
            "medication_name": "Ibuprofen", "medication_code": "M01AE01", "medication_code_system": "ATC",
            "medication_strength": "400 mg", "medication_form": "tablet",
            "dosage_instructions": "1 tablet up to 3 times a day", "quantity": "20", "redemptions": "2",
            "valid_from": today.isoformat(), "valid_until": (today + dt.timedelta(days=28)).isoformat()}
    return form | overrides


def test_prescription_form_errors_are_per_field():
    body, errors = issue_request_from_form(good_form())
    assert errors == {} and body.order.quantity == 20 and body.order.medication.name == "Ibuprofen"

    _, errors = issue_request_from_form(good_form(quantity="0", medication_name="  ", patient_birth_date="soon",
                                                  medication_code_system="XYZ"))
    assert set(errors) == {"quantity", "medication_name", "patient_birth_date", "medication_code_system"}
    assert "greater than or equal to 1" in errors["quantity"]
    assert errors["medication_name"] == "Field required"

    today = dt.date.today()
    _, errors = issue_request_from_form(good_form(valid_until=(today - dt.timedelta(days=1)).isoformat()))
    assert errors == {"valid_until": "valid_until must not be before valid_from"}
    _, errors = issue_request_from_form({})
    assert {"connection_id", "patient_name", "quantity", "medication_name"} <= set(errors)


def test_wallet_shows_disclosures_with_the_token_key_masked_and_predicates_as_statements():
    attrs = {"medication_name": "Ibuprofen", "valid_until": "20261231", "token_secret_key": "0x" + "ab" * 32}
    shown = {a.name: a for a in disclosed(attrs, ["medication_name", "token_secret_key"])}
    assert shown["medication_name"].value == "Ibuprofen" and not shown["medication_name"].masked
    assert shown["token_secret_key"].masked and "ab" * 4 not in shown["token_secret_key"].value
    assert predicate_statement({"name": "valid_until", "p_type": ">=", "p_value": 20261121}) == \
        "valid until ≥ 2026-11-21"
    assert predicate_statement({"name": "valid_from", "p_type": "<=", "p_value": 20261121}) == \
        "valid from ≤ 2026-11-21"


class FakeAdmin:
    async def connections(self, **_):
        return [ConnectionRecord(connection_id=CONNECTION, their_label="Test Patient", state="active",
                                 created_at="2026-11-01T10:00:00Z")]

    async def create_invitation(self, alias=None, **_):
        return SimpleNamespace(invi_msg_id="inv-1", invitation_url=INVITATION_URL)


class FakeDoctor:
    """What the doctor's page uses of DoctorService."""

    def __init__(self, store: Store):
        self.ctx = SimpleNamespace(admin=FakeAdmin(), config=SimpleNamespace(name="doctor", label="Dr. Test", prescribing=PrescribingRules()),
                                   store=store)
        self.records = store.table("prescription", IssuedPrescription)
        self.cred_def_id = "Th7MpTaRZVRYnPiabds81Y:3:CL:12:prescription"
        self.issued: list = []
        self.prescribers: list = []

    async def issue(self, connection_id, order, prescriber=None):
        if connection_id == GONE:
            raise NotFound(f"no connection {connection_id}")
        self.issued.append(order)
        self.prescribers.append(prescriber)
        return self.records.put(ISSUED, IssuedPrescription(prescription_id=ISSUED, connection_id=connection_id,
                                                         state=PrescriptionState.OFFERED, order=order,
                                                         token_address="0x" + "00" * 20))

    async def view(self, record):
        return PrescriptionView(**record.model_dump(), status=record.state.value)


@pytest.fixture
async def client(tmp_path: Path):
    store = Store(tmp_path / "doctor.db")
    service = FakeDoctor(store)
    watch(service, "issue")  # as serve.build_app does: page actions are recorded with what they concerned
    bus = EventBus()
    app = web.Application(middlewares=api_middlewares(Integrators(store, SecretStr(API_KEY)).authenticate))
    config = PageConfig(agent="doctor", role="doctor", title="Dr. Test")
    staff = StaffDirectory(store, "doctor")
    staff.add(StaffCreate(username="anna", display_name="Dr. Anna Schmidt", role="prescriber",
                          professional_id="123456789"), PASSWORD)
    staff.add(StaffCreate(username="ben", display_name="Ben Assistant", role="assistant"), ASSISTANT_PASSWORD)
    staff.add(StaffCreate(username="olga", display_name="Olga Operator", role="operator"), OPERATOR_PASSWORD)
    audit = AuditLog(store)
    live = setup_pages(app, config, SecretStr(SESSION_KEY), bus, staff=staff, audit=audit)
    app.add_routes(StaffPages(staff, audit).routes())
    links = ShortLinks(store, "http://127.0.0.1:1")
    service.ctx.links = links
    app.add_routes(links.routes())
    app.add_routes(DoctorPages(service, links, live).routes())
    async with TestClient(TestServer(app)) as c:
        c.service, c.links, c.staff, c.audit = service, links, staff, audit
        yield c
    store.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="_csrf" value="([^"]+)"', html).group(1)


async def sign_in(c: TestClient, username: str = "anna", password: str = PASSWORD, landing: str = "/") -> str:
    page = await (await c.get("/login")).text()
    r = await c.post("/login", data={"username": username, "password": password, "_csrf": csrf_of(page),
                                     "next": "/"}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == landing
    return csrf_of(await (await c.get(landing)).text())


async def test_pages_need_sign_in_and_the_session_cookie_is_strict(client: TestClient):
    r = await client.get("/login")
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and cookie.startswith("erx_session_doctor=")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"] and r.headers["X-Frame-Options"] == "DENY"

    r2 = await client.get("/", allow_redirects=False)
    assert r2.status == 303 and r2.headers["Location"] in ("/login?next=%2F", "/login?next=/")
    assert (await client.get("/fragments/prescriptions")).status == 401
    assert (await client.get("/events")).status == 401

    r = await client.post("/login", data={"username": "anna", "password": "guess", "_csrf": csrf_of(await r.text())})
    assert r.status == 401 and "wrong username or password" in await r.text()
    await sign_in(client)
    assert (await client.get("/", allow_redirects=False)).status == 200


async def test_every_post_needs_the_sessions_csrf_token(client: TestClient):
    r = await client.post("/login", data={"username": "anna", "password": PASSWORD})  # login CSRF too
    assert r.status == 403
    csrf = await sign_in(client)
    for data in (good_form(), good_form(_csrf="forged")):
        r = await client.post("/prescriptions", data=data, allow_redirects=False)
        assert r.status == 403 and "expired" in await r.text()
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf), headers={"Origin": "http://evil.example"},
                          allow_redirects=False)
    assert r.status == 403
    assert client.service.issued == []
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf), allow_redirects=False)
    assert r.status == 303 and len(client.service.issued) == 1


async def test_bad_form_input_gets_field_level_messages_never_a_500(client: TestClient):
    csrf = await sign_in(client)
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf, quantity="-3", patient_name=""))
    html = await r.text()
    assert r.status == 422
    assert re.search(r'data-error-for="quantity">[^<]*greater than or equal to 1', html)
    assert re.search(r'data-error-for="patient_name">Field required', html)
    assert 'value="400 mg"' in html, "the doctor's other input is kept"
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf, connection_id=GONE))
    assert r.status == 404 and re.search(r'data-error-for="connection_id">no connection ' + GONE, await r.text())
    assert client.service.issued == []


async def test_no_secret_is_rendered_into_a_page(client: TestClient):
    await sign_in(client)
    html = "".join([await (await client.get(p)).text() for p in ("/", "/login", "/fragments/prescriptions")])
    for secret in (PASSWORD, ASSISTANT_PASSWORD, OPERATOR_PASSWORD, API_KEY, SESSION_KEY):
        assert secret not in html
    assert client.staff.get("anna").password_hash not in html


async def test_short_links_resolve_to_the_invitation_and_serve_its_qr_code(client: TestClient):
    csrf = await sign_in(client)
    r = await client.post("/invitations", data={"_csrf": csrf}, allow_redirects=False)
    assert r.status == 303
    link = client.links.for_ref("inv-1")
    html = await (await client.get("/")).text()
    assert client.links.url(link) in html and f"/i/{link.short_id}/qr.svg" in html

    r = await client.get(f"/i/{link.short_id}", headers={"Accept": "application/json"})
    assert (await r.json()) == INVITATION == decode_invitation(INVITATION_URL)
    r = await client.get(f"/i/{link.short_id}", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == INVITATION_URL
    assert (await client.get("/i/nope")).status == 404
    svg = await (await client.get(f"/i/{link.short_id}/qr.svg")).read()
    assert svg == qr_svg(client.links.url(link))
    png = await client.get(f"/i/{link.short_id}/qr.png")
    assert png.content_type == "image/png" and (await png.read()).startswith(b"\x89PNG")
    assert client.links.qr_links(link).qr_png_url == client.links.url(link) + "/qr.png"



async def test_a_session_ends_a_working_day_after_sign_in_however_busy(client: TestClient, monkeypatch):
    from erx_roles.pages import web as pages_web
    await sign_in(client)
    monkeypatch.setattr(pages_web, "SESSION_MAX_AGE_S", 0)
    r = await client.get("/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/login")
