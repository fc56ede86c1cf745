"""People, not organisations: the role table (exhaustively), the REST API's decision (`refusal`), staff
accounts (names, prescribers' identifiers, hashes, tokens), page sessions and what each role may do on
the pages and through the API."""

from __future__ import annotations

import itertools
import secrets
import re
import sqlite3
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr, ValidationError

from erx_core.audit import AuditAction, AuditLog
from erx_core.staff import (NEEDS_PERSON, PERMISSIONS, Action, RoleNotHere, StaffCreate, StaffDirectory, StaffExists,
                            StaffRole, StaffSeed, dev_accounts, dev_person, hash_password, may, needs_person,
                            roles_of, verify_password)
from erx_core.store import Store
from erx_roles.acting import AUDIT_LOG, watch
from erx_roles.api import Api
from erx_roles.doctor.api import doctor_api
from erx_roles.http import ON_BEHALF_OF, Caller, api_middlewares, refusal
from erx_roles.integrators import IntegratorCreate, Integrators, Scope
from erx_roles.pages.web import page_action, required_action
from erx_roles.pharmacy.api import pharmacy_api
from erx_roles.staff_api import Access, StaffApi
from erx_schemas.prescription import Prescriber
from tests.unit.test_pages import (ASSISTANT_PASSWORD, OPERATOR_PASSWORD, PASSWORD, client, csrf_of,  # noqa: F401
                                   good_form, sign_in)

P, A, PH, O = StaffRole.PRESCRIBER, StaffRole.ASSISTANT, StaffRole.PHARMACIST, StaffRole.OPERATOR
# the whole table, written out: what each role may do (docs/staff-and-audit.md)
EXPECTED = {
    Action.VIEW: {P, A, PH},
    Action.CONNECT: {P, A, PH},
    Action.ISSUE: {P},
    Action.REVOKE: {P},
    Action.CHECK: {A, PH},
    Action.DISPENSE: {PH},
    Action.MANAGE_STAFF: {O},
    Action.MANAGE_WEBHOOKS: {O},
    Action.MANAGE_INTEGRATORS: {O},
    Action.MANAGE_TRUST: {O},
    Action.AUDIT: {O},
}


# -- the rule ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("role", "action"), list(itertools.product(StaffRole, Action)))
def test_the_role_table_exhaustively(role: StaffRole, action: Action):
    assert may(role, action) == (role in EXPECTED[action])


def test_the_table_covers_every_action_and_role_and_who_must_be_a_person():
    assert set(EXPECTED) == set(Action) and set(PERMISSIONS) == set(StaffRole)
    assert {a for a in Action if needs_person(a)} == NEEDS_PERSON == {Action.ISSUE, Action.REVOKE, Action.DISPENSE}
    assert roles_of("doctor") == (P, A, O) and roles_of("pharmacy") == (PH, A, O) and roles_of("patient") == ()
    # operators see no patient's data; nobody but an operator administers
    assert not any(may(O, a) for a in (Action.VIEW, Action.ISSUE, Action.DISPENSE, Action.CHECK))


def member(role: StaffRole, username: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(username=username or role.value, role=role)


def callers() -> dict[str, Caller]:
    """Every kind of caller: the three tokens, alone and acting for each role."""
    found = {"operator token": Caller(name="operator"),
             "integrator": Caller(name="i", integrator_id="9d9d9d9d-0000-4000-8000-000000000000"),
             "integrator+trust": Caller(name="i", integrator_id="9d9d9d9d-0000-4000-8000-000000000001",
                                        scopes={Scope.TRUST_LIST})}
    for role in StaffRole:
        person = member(role)
        found[f"own token of a {role}"] = Caller.model_construct(name=role, person=person, personal=True,
                                                                 integrator_id=None, scopes=set())
        for token in ("operator token", "integrator", "integrator+trust"):
            found[f"{token} for a {role}"] = found[token].model_copy(update={"person": person})
    return found


@pytest.mark.parametrize("name", sorted(callers()))
@pytest.mark.parametrize("action", [None, *Action])
@pytest.mark.parametrize(("operator_only", "scope"), [(False, None), (True, None), (False, Scope.TRUST_LIST)])
def test_the_rest_apis_decision_for_every_caller_and_operation(name, action, operator_only, scope):
    caller = callers()[name]
    integrator = caller.integrator_id is not None
    expected_ok = not (operator_only and integrator) \
        and not (scope and integrator and scope not in caller.scopes) \
        and (action is None or (may(caller.person.role, action) if caller.person else not needs_person(action)))
    reason = refusal(caller, action, operator_only=operator_only, scope=scope)
    assert (reason is None) == expected_ok, (name, action, operator_only, scope, reason)
    if reason and action in NEEDS_PERSON and caller.person is None and not (operator_only and integrator) \
            and not (scope and integrator and scope not in caller.scopes):
        assert ON_BEHALF_OF in reason


# -- accounts ---------------------------------------------------------------------------------------------------
def test_staff_names_and_prescribers_identifiers_are_strict():
    ok = StaffCreate(username="anna.schmidt", display_name="Dr. Anna Schmidt", role="prescriber",
                     professional_id="LANR-123456789")
    assert ok.username == "anna.schmidt"
    for username in ("A", "Anna", "1anna", "anna schmidt", "anna/../x", "ä", "a" * 31, "anna\n"):
        with pytest.raises(ValidationError):
            StaffCreate(username=username, display_name="X", role="assistant")
    with pytest.raises(ValidationError, match="professional_id"):
        StaffCreate(username="anna", display_name="Dr. A", role="prescriber")
    for identifier in ("123 456", "ä123", "", "x" * 61):
        with pytest.raises(ValidationError):
            StaffCreate(username="anna", display_name="Dr. A", role="prescriber", professional_id=identifier)
    with pytest.raises(ValidationError):
        StaffCreate(username="anna", display_name="", role="assistant")
    with pytest.raises(ValidationError):
        StaffCreate(username="anna", display_name="X", role="chief")


def test_passwords_are_kept_as_argon2id_hashes_and_tokens_as_digests(tmp_path):
    hashed = hash_password("s3cret pass")
    assert hashed.startswith("$argon2id$") and "s3cret" not in hashed
    assert verify_password(hashed, "s3cret pass") and not verify_password(hashed, "s3cret pasS")
    assert not verify_password(None, "s3cret pass") and not verify_password("not a hash", "x")

    store = Store(tmp_path / "c.db")
    staff = StaffDirectory(store, "doctor")
    staff.add(StaffCreate(username="anna", display_name="Dr. A", role="prescriber", professional_id="1"),
              "s3cret pass")
    _, token = staff.new_token("anna")
    assert token.startswith("erxs_") and staff.by_token(token).username == "anna"
    store.close()
    dump = "\n".join(str(row) for row in sqlite3.connect(tmp_path / "c.db").execute("SELECT * FROM records"))
    assert "s3cret pass" not in dump and token not in dump and token[5:] not in dump
    again = StaffDirectory(Store(tmp_path / "c.db"), "doctor")
    assert again.by_token(token).username == "anna" and again.by_token("erxs_guess") is None


def test_the_directory_keeps_roles_to_the_organisation_and_ends_sessions_on_changes(tmp_path):
    staff = StaffDirectory(Store(tmp_path / "c.db"), "pharmacy")
    with pytest.raises(RoleNotHere, match="prescriber"):
        staff.add(StaffCreate(username="anna", display_name="Dr. A", role="prescriber", professional_id="1"), "pw")
    staff.add(StaffCreate(username="paul", display_name="Paul", role="pharmacist"), "pw")
    with pytest.raises(StaffExists):
        staff.add(StaffCreate(username="paul", display_name="Paul again", role="assistant"), "pw")
    epoch = staff.get("paul").epoch
    staff.set_password("paul", "new")
    assert staff.get("paul").epoch == epoch + 1 and verify_password(staff.get("paul").password_hash, "new")
    assert staff.set_disabled("paul", True).disabled and staff.get("paul").epoch == epoch + 2
    assert staff.active("paul") is None and staff.member("paul").disabled
    assert staff.set_disabled("paul", False).disabled is False and staff.active("paul").username == "paul"
    _, first = staff.new_token("paul")
    _, second = staff.new_token("paul")
    assert staff.by_token(first) is None and staff.by_token(second).username == "paul"
    assert staff.drop_token("paul").token_hint is None and staff.by_token(second) is None
    # the API's view never holds the hash or the digest
    assert {"password_hash", "token_sha256"}.isdisjoint(staff.member("paul").model_dump())
    assert staff.get("../x") is None and staff.active("Paul") is None


def test_dev_accounts_are_seeded_once_and_name_a_valid_prescriber(tmp_path):
    accounts = dev_accounts("doctor", "doctor")
    assert [(a.username, a.role) for a in accounts] == [("prescriber", P), ("operator", O)]
    assert [(a.username, a.role) for a in dev_accounts("pharmacy", "pharmacy-b")] == [("pharmacist", PH),
                                                                                   ("operator", O)]
    assert dev_accounts("patient", "patient") == [] and dev_person("doctor") == "prescriber"
    staff = StaffDirectory(Store(tmp_path / "c.db"), "doctor")
    seeds = [StaffSeed(**a.model_dump(), password=SecretStr("first")) for a in accounts]
    assert staff.ensure(seeds) == ["prescriber", "operator"]
    staff.set_password("prescriber", "changed")
    assert staff.ensure(seeds) == []  # never overwritten
    assert verify_password(staff.get("prescriber").password_hash, "changed")
    assert staff.member("prescriber").prescriber() == Prescriber(name="Dr. Dev Prescriber", identifier="DEV-DOCTOR")
    with pytest.raises(ValueError):
        staff.member("operator").prescriber()


# -- the pages --------------------------------------------------------------------------------------------------
async def test_the_header_names_who_is_signed_in_and_issuing_names_the_prescriber(client: TestClient):  # noqa: F811
    csrf = await sign_in(client)
    html = await (await client.get("/")).text()
    assert re.search(r'id="signed-in-as" data-username="anna" data-role="prescriber"', html)
    assert "Dr. Anna Schmidt · prescriber" in html
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf), allow_redirects=False)
    assert r.status == 303
    assert client.service.prescribers == [Prescriber(name="Dr. Anna Schmidt", identifier="123456789")]
    entries = client.audit.page(10).items
    assert [(e.action, e.username, e.via, e.outcome) for e in entries[:2]] == [
        ("issued", "anna", "page", "ok"), ("signed-in", "anna", "page", "ok")]
    assert entries[0].prescription_id == "00000000-0000-4000-8000-000000000001"


async def test_an_assistant_may_not_issue_and_the_attempt_is_on_record(client: TestClient):  # noqa: F811
    csrf = await sign_in(client, "ben", ASSISTANT_PASSWORD)
    assert (await client.get("/")).status == 200  # an assistant sees the practice's page
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf), allow_redirects=False)
    assert r.status == 403 and "An assistant may not issue prescriptions" in await r.text()
    assert client.service.issued == []
    denied = client.audit.page(1).items[0]
    assert (denied.action, denied.username, denied.role, denied.outcome, denied.status) == \
        ("issued", "ben", "assistant", "refused", 403)
    for path in ("/staff", "/audit", "/audit/export"):
        assert (await client.get(path)).status == 403


async def test_an_operator_administers_but_sees_no_patients_data(client: TestClient):  # noqa: F811
    csrf = await sign_in(client, "olga", OPERATOR_PASSWORD, landing="/staff")
    r = await client.get("/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/staff"
    assert (await client.get("/fragments/prescriptions")).status == 403
    r = await client.post("/prescriptions", data=good_form(_csrf=csrf), allow_redirects=False)
    assert r.status == 403
    # a new member: the password shown once, then they sign in with it
    r = await client.post("/staff", data={"_csrf": csrf, "username": "carl", "display_name": "Dr. Carl",
                                          "role": "prescriber", "professional_id": "987"})
    html = await r.text()
    assert r.status == 201
    password = re.search(r'<code class="secret" id="secret">([^<]+)</code>', html).group(1)
    assert (await client.get("/staff")).status == 200 and password not in await (await client.get("/staff")).text()
    r = await client.post("/staff", data={"_csrf": csrf, "username": "carl", "display_name": "X", "role": "assistant"})
    assert r.status == 409
    r = await client.post("/staff", data={"_csrf": csrf, "username": "dan", "display_name": "D", "role": "pharmacist"})
    assert r.status == 409 and "no pharmacists" in await r.text()
    r = await client.post("/staff", data={"_csrf": csrf, "username": "Dan!", "display_name": "D", "role": "assistant"})
    assert r.status == 422 and 'data-error-for="username"' in await r.text()
    assert (await client.post("/staff/olga/disable", data={"_csrf": csrf})).status == 409  # not oneself
    audit = await (await client.get("/audit")).text()
    assert "staff-added" in audit and "carl" in audit
    export = await (await client.get("/audit/export", params={"format": "csv"})).text()
    assert export.splitlines()[0].startswith("entry_id,at,username") and "staff-added" in export
    assert password not in export and password not in audit

    await client.post("/logout", data={"_csrf": csrf})
    await sign_in(client, "carl", password)


async def test_a_disabled_account_or_a_new_password_ends_the_session_at_once(client: TestClient):  # noqa: F811
    await sign_in(client)
    client.staff.set_disabled("anna", True)
    r = await client.get("/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/login")
    page = await (await client.get("/login")).text()
    r = await client.post("/login", data={"username": "anna", "password": PASSWORD, "_csrf": csrf_of(page)})
    assert r.status == 403 and "disabled" in await r.text()

    client.staff.set_disabled("anna", False)
    await sign_in(client)
    client.staff.set_password("anna", "another password")
    r = await client.get("/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"].startswith("/login")


async def test_failed_sign_ins_say_not_which_part_was_wrong_and_keep_no_typed_secret(client: TestClient):  # noqa: F811
    page = await (await client.get("/login")).text()
    typed = "my-password-typed-as-a-name"
    r = await client.post("/login", data={"username": typed, "password": "x", "_csrf": csrf_of(page)})
    assert r.status == 401 and "wrong username or password" in await r.text() and typed not in await r.text()
    r = await client.post("/login", data={"username": "anna", "password": "x", "_csrf": csrf_of(page)})
    assert r.status == 401 and "wrong username or password" in await r.text()
    entries = client.audit.page(10).items
    assert [(e.action, e.username) for e in entries] == [("sign-in-failed", "anna")]  # the unknown name: not kept


def test_an_undeclared_page_action_is_refused_and_a_get_needs_view():
    async def sneaky(_: web.Request) -> web.Response:
        return web.Response(text="done")

    def request(method: str, handler) -> SimpleNamespace:
        return SimpleNamespace(method=method, match_info=SimpleNamespace(handler=handler))

    assert required_action(request("POST", sneaky)) is None  # the middleware refuses it: 403
    assert required_action(request("GET", sneaky)) == Action.VIEW
    declared = page_action(Action.DISPENSE, audit=AuditAction.DISPENSED)(sneaky)
    assert required_action(request("POST", declared)) == Action.DISPENSE and declared.erx_audit == "dispensed"


# -- the REST API -------------------------------------------------------------------------------------------------
OPERATOR = "op-" + secrets.token_urlsafe(32)  # not a word that appears in an entry
PID = "0b7e6a2c-5a1d-4c4e-9f00-2a6f3f1c9d10"


class FakeDoctor:
    def __init__(self):
        self.issued: list = []

    async def issue(self, connection_id, order, prescriber=None):
        self.issued.append(prescriber)
        return SimpleNamespace(prescription_id=PID, state="offered")


def build(tmp_path):
    store = Store(tmp_path / "c.db")
    staff, audit = StaffDirectory(store, "doctor"), AuditLog(store)
    staff.add(StaffCreate(username="anna", display_name="Dr. Anna", role="prescriber", professional_id="123"), "pw")
    staff.add(StaffCreate(username="ben", display_name="Ben", role="assistant"), "pw")
    integrators = Integrators(store, SecretStr(OPERATOR))
    access = Access(integrators, staff)
    service = FakeDoctor()
    watch(service, "issue")
    api = Api("test")

    @api.operation("POST", "/api/issue", summary="Issue", response=dict, action=Action.ISSUE,
                   audit=AuditAction.ISSUED)
    async def issue(request: web.Request) -> dict:
        from erx_roles.doctor.api import prescriber
        record = await service.issue("c", "order", prescriber=prescriber(request))
        return {"prescription_id": record.prescription_id}

    @api.operation("GET", "/api/list", summary="List", response=dict, action=Action.VIEW)
    async def listing(request: web.Request) -> dict:
        return {"ok": True}

    api.include(integrators.api())
    api.include(StaffApi(staff, audit).api())
    app = web.Application(middlewares=api_middlewares(access.authenticate, api.public_paths, access.act_for))
    app[AUDIT_LOG] = audit
    app.add_routes(api.routes())
    return app, SimpleNamespace(staff=staff, audit=audit, integrators=integrators, service=service)


def bearer(token: str, person: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **({ON_BEHALF_OF: person} if person else {})}


async def test_issuing_through_the_api_needs_a_prescriber_named_or_signed_by_their_own_token(tmp_path):
    app, it = build(tmp_path)
    integrator = it.integrators.create(IntegratorCreate(name="Practice software")).token
    async with TestClient(TestServer(app)) as c:
        for headers in (bearer(OPERATOR), bearer(integrator)):  # a token acting for nobody
            r = await c.post("/api/issue", headers=headers)
            assert r.status == 403 and ON_BEHALF_OF in (await r.json())["error"]
        assert (await c.get("/api/list", headers=bearer(integrator))).status == 200  # reading needs no person
        r = await c.post("/api/issue", headers=bearer(integrator, "ben"))
        assert r.status == 403 and "an assistant may not issue" in (await r.json())["error"]
        for name in ("nobody", "Anna", "anna\u00e9", "../x"):
            r = await c.post("/api/issue", headers=bearer(integrator, name))
            assert r.status == 403 and "names no enabled staff member" in (await r.json())["error"]
        r = await c.post("/api/issue", headers={**bearer(integrator), ON_BEHALF_OF: "anna"})
        assert r.status == 200 and it.service.issued[-1] == Prescriber(name="Dr. Anna", identifier="123")
        r = await c.post("/api/issue", headers=bearer(OPERATOR, "anna"))
        assert r.status == 200

        created = await (await c.post("/api/staff/anna/token", headers=bearer(OPERATOR))).json()
        own = created["token"]
        assert (await c.post("/api/issue", headers=bearer(own))).status == 200
        r = await c.post("/api/issue", headers=bearer(own, "ben"))  # an own token acts for its owner only
        assert r.status == 403
        assert (await c.get("/api/staff", headers=bearer(own))).status == 403  # a prescriber administers nothing
        assert (await c.post("/api/staff/anna/disable", headers=bearer(OPERATOR))).status == 200
        r = await c.post("/api/issue", headers=bearer(own))
        assert r.status == 401 and "disabled" in (await r.json())["error"]
        r = await c.post("/api/issue", headers=bearer(integrator, "anna"))
        assert r.status == 403  # disabled: no one may act for her

    entries = it.audit.page(50).items
    issued = [e for e in entries if e.action == "issued"]
    assert {(e.username, e.via, e.outcome) for e in issued} >= {
        (None, "operator-token", "refused"), (None, "integrator", "refused"), ("ben", "integrator", "refused"),
        ("anna", "integrator", "ok"), ("anna", "operator-token", "ok"), ("anna", "staff-token", "ok")}
    assert all(e.prescription_id == PID for e in issued if e.outcome == "ok")
    assert [e.target for e in entries if e.action in ("staff-token-issued", "staff-disabled")] == ["anna", "anna"]


async def test_staff_administration_through_the_api_is_the_operators(tmp_path):
    app, it = build(tmp_path)
    integrator = it.integrators.create(IntegratorCreate(name="Practice software")).token
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/staff", json={"username": "carl", "display_name": "Dr. Carl", "role": "prescriber",
                                             "professional_id": "987"}, headers=bearer(OPERATOR))
        created = await r.json()
        assert r.status == 201 and len(created["password"]) >= 16 and "password_hash" not in created
        assert (await c.post("/api/staff", json={"username": "carl", "display_name": "X", "role": "assistant"},
                             headers=bearer(OPERATOR))).status == 409
        r = await c.post("/api/staff", json={"username": "dora", "display_name": "X", "role": "pharmacist"},
                         headers=bearer(OPERATOR))
        assert r.status == 422 and "pharmacist" in (await r.json())["error"]
        r = await c.post("/api/staff", json={"username": "eve", "display_name": "Dr. Eve", "role": "prescriber"},
                         headers=bearer(OPERATOR))
        assert r.status == 422 and any(f["message"].startswith("Value error, a prescriber needs")
                                       for f in (await r.json())["fields"])
        page = await (await c.get("/api/staff", params={"limit": "2"}, headers=bearer(OPERATOR))).json()
        assert page["total"] == 3 and [m["username"] for m in page["items"]] == ["carl", "ben"] and page["next"]
        rest = await (await c.get("/api/staff", params={"after": page["next"]}, headers=bearer(OPERATOR))).json()
        assert [m["username"] for m in rest["items"]] == ["anna"]
        assert (await c.get("/api/staff/nobody", headers=bearer(OPERATOR))).status == 404
        assert (await c.get("/api/staff/..%2Fx", headers=bearer(OPERATOR))).status == 422
        for headers in (bearer(integrator), bearer(integrator, "anna")):  # integrators never administer
            assert (await c.get("/api/staff", headers=headers)).status == 403
            assert (await c.get("/api/audit", headers=headers)).status == 403
        new = await (await c.post("/api/staff/carl/password", headers=bearer(OPERATOR))).json()
        assert new["password"] != created["password"]
        assert verify_password(it.staff.get("carl").password_hash, new["password"])

        audit = await (await c.get("/api/audit", params={"limit": "3"}, headers=bearer(OPERATOR))).json()
        assert audit["items"][0]["action"] == "staff-password-set" and audit["items"][0]["target"] == "carl"
        r = await c.get("/api/audit/export", params={"format": "jsonl"}, headers=bearer(OPERATOR))
        assert r.status == 200 and r.content_type == "application/x-ndjson"
        lines = (await r.text()).splitlines()
        assert len(lines) == audit["total"] and '"staff-added"' in lines[-1]
        r = await c.get("/api/audit/export", headers=bearer(OPERATOR))
        assert r.content_type == "text/csv" and (await r.text()).startswith("entry_id,")
        assert (await c.get("/api/audit/export", params={"format": "xml"}, headers=bearer(OPERATOR))).status == 422
        everything = json_dump = (await r.text()) + "\n".join(lines)
        for secret in (created["password"], new["password"], OPERATOR, integrator):
            assert secret not in everything, json_dump


def test_every_operation_of_the_organisations_apis_declares_what_it_does(tmp_path):
    """A new operation must say who may use it (`action=`); reading the status or the OpenAPI document
    needs no more than a token."""
    service = SimpleNamespace(ctx=SimpleNamespace(config=SimpleNamespace(), store=Store(tmp_path / "c.db")))
    for api in (doctor_api(service), pharmacy_api(service)):
        for op in api.operations:
            # the status, and the pharmacy's trust overrides (no patient's data): read by every member and the
            # operator alike, who hold no common action
            if op.path in ("/api/status",) or (op.path == "/api/trusted-prescribers" and op.method == "GET"):
                assert op.action is None, op.path
                continue
            if op.public:  # needs no token at all (e.g. verifying a receipt): nobody acts
                assert op.action is None and op.audit is None, op.path
                continue
            assert op.action is not None, f"{op.method} {op.path} declares no action"
            if op.method != "GET":
                assert op.action in NEEDS_PERSON or op.action in (Action.CONNECT, Action.CHECK) or \
                    not may(StaffRole.PRESCRIBER, op.action), op.path
            if op.action in NEEDS_PERSON:
                assert op.audit is not None, f"{op.method} {op.path} is not audited"
    document = doctor_api(service).openapi()
    issue = document["paths"]["/api/prescriptions"]["post"]
    assert ON_BEHALF_OF in [p["name"] for p in issue["parameters"]] and "403" in issue["responses"]
