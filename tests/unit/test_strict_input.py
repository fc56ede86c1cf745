"""Strict input over HTTP, through the API plumbing (erx_roles.api, erx_roles.http): a body is a JSON object
of bounded size with the declared JSON types and fields only, answered 422 naming the field (413 when too
large); query parameters once each and declared; lists a page at a time with a cursor."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from erx_schemas.prescription import input_context
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, Field, ValidationError

from erx_core.store import Store
from erx_roles.api import Api, Page, PageQuery, WaitQuery, read_page
from erx_roles.http import MAX_BODY_BYTES, Caller, api_middlewares
from erx_roles.pharmacy import TrustedPrescriber
from erx_schemas.prescription import PrescriptionOrder

AUTH = {"Authorization": "Bearer tok"}
TODAY = dt.date.today()


@pytest.fixture(autouse=True)
def same_day(monkeypatch):
    """The rules' "today" is the day this module computed its dates on: a run may cross midnight."""
    monkeypatch.setattr("erx_roles.http.input_context", lambda rules=None: input_context(TODAY, rules))
ORDER = {"patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
         "medication": {"name": "Ibuprofen", "code": "M01AE01", "code_system": "ATC", "strength": "400 mg",
                        "form": "tablet"},
         "dosage_instructions": "1-0-1", "quantity": 20, "redemptions": 2}


class IssueBody(BaseModel):  # as the doctor's POST /api/prescriptions: no extra="forbid" of its own
    connection_id: str = Field(min_length=1, max_length=36)
    order: PrescriptionOrder


class Thing(BaseModel):
    name: str = Field(max_length=20)
    size: int = 1


class Optional(BaseModel):
    connection_id: str | None = None


def build(tmp_path) -> tuple[web.Application, Api, Store]:
    store = Store(tmp_path / "c.db")
    things = store.table("thing", Thing)
    others = store.table("other", Thing)
    api = Api("strict")

    @api.operation("POST", "/api/orders", summary="An order", body=IssueBody, response=PrescriptionOrder, status=201)
    async def make_order(_: web.Request, body: IssueBody) -> PrescriptionOrder:
        return body.order

    @api.operation("POST", "/api/things", summary="A thing", body=Thing, response=Thing, status=201)
    async def make_thing(_: web.Request, body: Thing) -> Thing:
        return things.put(body.name, body)

    @api.operation("POST", "/api/optional", summary="Everything optional", body=Optional, response=Optional)
    async def optional(_: web.Request, body: Optional) -> Optional:
        return body

    @api.operation("GET", "/api/things", summary="Things, newest first", query=PageQuery, response=Page[Thing])
    async def list_things(_: web.Request, query: PageQuery) -> Page[Thing]:
        return read_page(things, query)

    @api.operation("GET", "/api/others", summary="Other things", query=PageQuery, response=Page[Thing])
    async def list_others(_: web.Request, query: PageQuery) -> Page[Thing]:
        return read_page(others, query)

    @api.operation("GET", "/api/wait", summary="A long poll", query=WaitQuery, response=Optional)
    async def wait(_: web.Request, query: WaitQuery) -> Optional:
        return Optional()

    def authenticate(header: str) -> Caller | None:
        return Caller(name="operator") if header == "Bearer tok" else None

    app = web.Application(middlewares=api_middlewares(authenticate, api.public_paths))
    app.add_routes(api.routes("http://127.0.0.1:1"))
    return app, api, store


async def fields_of(response) -> dict[str, str]:
    body = await response.json()
    assert response.status == 422, body
    return {f["field"]: f["message"] for f in body["fields"]}


async def post(c: TestClient, path: str, data: bytes | str, **kw):
    return await c.post(path, data=data, headers=AUTH | {"Content-Type": "application/json"}, **kw)


# -- the body: one JSON object -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw, says", [
    (b"[]", "not an array"), (b'"x"', "not a string"), (b"1", "not a number"), (b"null", "not null"),
    (b"true", "not a boolean"), (b"{not json", "not JSON"), (b"\xff\xfe{}", "not UTF-8"),
    (b'{"name": "a", "name": "b"}', "'name' appears twice"), (b'{"name": "a", "size": NaN}', "NaN is not JSON"),
    (b'{"name": "a", "size": Infinity}', "Infinity is not JSON"), (b'{"name": "a", "size": 1e400}', "out of range"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"), (b'{"a": ' * 30_000 + b"1" + b"}" * 30_000, "nested"),
    (b'{"name": "a", "size": ' + b"9" * 5000 + b"}", "4300 digits"),
])
async def test_a_body_that_is_no_json_object_is_a_422_not_a_500(tmp_path, raw, says):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await post(c, "/api/things", raw)
        problems = await fields_of(r)
        assert list(problems) == ["(body)"] and says in problems["(body)"], problems


async def test_an_empty_body_is_an_empty_object(tmp_path):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/optional", headers=AUTH)
        assert r.status == 200 and await r.json() == {"connection_id": None}
        assert "name" in await fields_of(await c.post("/api/things", headers=AUTH))


async def test_a_body_larger_than_the_cap_is_a_413(tmp_path):
    app, _, _ = build(tmp_path)
    padding = " " * (MAX_BODY_BYTES - 40)
    async with TestClient(TestServer(app)) as c:
        r = await post(c, "/api/things", '{"name": "a"' + padding + "}")
        assert r.status == 201, await r.text()
        r = await post(c, "/api/things", '{"name": "a"' + " " * MAX_BODY_BYTES + "}")
        assert r.status == 413 and "KiB" in (await r.json())["error"]

        async def chunks():  # no Content-Length: the cap holds while reading
            yield b'{"name": "a"'
            for _ in range(MAX_BODY_BYTES // 65536 + 2):
                yield b" " * 65536
            yield b"}"

        r = await post(c, "/api/things", chunks())
        assert r.status == 413


# -- strict JSON types, no undeclared fields ---------------------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"quantity": True}, "order.quantity"),
    ({"quantity": "2"}, "order.quantity"),
    ({"quantity": 20.0}, "order.quantity"),
    ({"redemptions": False}, "order.redemptions"),
    ({"patient_birth_date": 19640812}, "order.patient_birth_date"),
    ({"valid_from": 1893456000}, "order.valid_from"),
    ({"extra": "ignored before"}, "order.extra"),
    ({"medication": ORDER["medication"] | {"atc": "M01AE01"}}, "order.medication.atc"),
])
async def test_json_types_are_strict_and_unknown_fields_refused(tmp_path, change, field):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/orders", json={"connection_id": "c1", "order": ORDER | change}, headers=AUTH)
        assert field in await fields_of(r)
        r = await c.post("/api/orders", json={"connection_id": "c1", "order": ORDER, "note": "x"}, headers=AUTH)
        assert "note" in await fields_of(r)


async def test_the_same_order_in_correct_types_is_accepted(tmp_path):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/orders", json={"connection_id": "c1", "order": ORDER}, headers=AUTH)
        assert r.status == 201, await r.text()
        body = await r.json()
        assert body["valid_from"] == TODAY.isoformat() and body["quantity"] == 20


# -- the attacker's findings, now 422 with the field named ---------------------------------------------------

@pytest.mark.parametrize("change, field", [
    ({"medication": ORDER["medication"] | {"code": "M01  AE01"}}, "order.medication.code"),
    ({"medication": ORDER["medication"] | {"code": "m01ae01"}}, "order.medication.code"),
    ({"valid_until": "2200-01-01"}, "order.valid_until"),
    ({"valid_until": "9999-12-31"}, "order.valid_until"),
    ({"valid_from": "0001-01-01"}, "order.valid_from"),
    ({"valid_from": (TODAY - dt.timedelta(days=2)).isoformat()}, "order.valid_from"),
    ({"valid_from": TODAY.isoformat(), "valid_until": (TODAY + dt.timedelta(days=366)).isoformat()},
     "order.valid_until"),
    ({"patient_birth_date": "1899-12-31"}, "order.patient_birth_date"),
    ({"patient_birth_date": (TODAY + dt.timedelta(days=1)).isoformat()}, "order.patient_birth_date"),
    ({"patient_name": "Erika\u0000Mustermann"}, "order.patient_name"),
    ({"dosage_instructions": "1-0-1\nwith meals"}, "order.dosage_instructions"),
    ({"patient_name": "x" * 201}, "order.patient_name"),
])
async def test_order_rules_over_http(tmp_path, change, field):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/orders", json={"connection_id": "c1", "order": ORDER | change}, headers=AUTH)
        assert list(await fields_of(r)) == [field]


async def test_yesterday_is_still_a_valid_start(tmp_path):
    app, _, _ = build(tmp_path)
    yesterday = (TODAY - dt.timedelta(days=1)).isoformat()
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/orders", json={"connection_id": "c1", "order": ORDER | {"valid_from": yesterday}},
                         headers=AUTH)
        assert r.status == 201, await r.text()


# -- query parameters and pages ------------------------------------------------------------------------------

@pytest.mark.parametrize("params, field", [
    ({"limit": "0"}, "limit"), ({"limit": "201"}, "limit"), ({"limit": "ten"}, "limit"), ({"limit": "1.5"}, "limit"),
    ({"after": "not a cursor!"}, "after"), ({"after": "x" * 101}, "after"), ({"after": "bm9wZQ"}, "after"),
    ({"limt": "10"}, "limt"), ([("limit", "1"), ("limit", "200")], "limit"),
])
async def test_page_queries_are_checked(tmp_path, params, field):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        assert field in await fields_of(await c.get("/api/things", params=params, headers=AUTH))


@pytest.mark.parametrize("wait", ["nan", "inf", "-1", "61"])
async def test_wait_must_be_a_finite_number_of_seconds(tmp_path, wait):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        assert "wait" in await fields_of(await c.get("/api/wait", params={"wait": wait}, headers=AUTH))


async def test_paging_through_a_list_while_records_arrive(tmp_path):
    app, _, store = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        for i in range(5):
            assert (await c.post("/api/things", json={"name": f"t{i}"}, headers=AUTH)).status == 201
        first = await (await c.get("/api/things", params={"limit": "2"}, headers=AUTH)).json()
        assert [t["name"] for t in first["items"]] == ["t4", "t3"] and first["total"] == 5 and first["next"]
        await c.post("/api/things", json={"name": "t5"}, headers=AUTH)  # arrives while paging
        await c.post("/api/things", json={"name": "t1", "size": 7}, headers=AUTH)  # an update keeps its place
        second = await (await c.get("/api/things", params={"limit": "2", "after": first["next"]},
                                    headers=AUTH)).json()
        assert [(t["name"], t["size"]) for t in second["items"]] == [("t2", 1), ("t1", 7)] and second["total"] == 6
        last = await (await c.get("/api/things", params={"limit": "2", "after": second["next"]}, headers=AUTH)).json()
        assert [t["name"] for t in last["items"]] == ["t0"] and last["next"] is None
        default = await (await c.get("/api/things", headers=AUTH)).json()
        assert [t["name"] for t in default["items"]] == ["t5", "t4", "t3", "t2", "t1", "t0"]
        r = await c.get("/api/others", params={"after": first["next"]}, headers=AUTH)  # another list's cursor
        assert "after" in await fields_of(r)


async def test_the_document_says_what_the_server_does(tmp_path):
    _, api, _ = build(tmp_path)
    doc = api.openapi()
    schemas = doc["components"]["schemas"]
    for name in ("IssueBody", "PrescriptionOrder", "Medication", "Thing", "Optional"):
        assert schemas[name]["additionalProperties"] is False, name
    assert schemas["ErrorBody"]["additionalProperties"] is True  # error bodies may carry more
    parameters = {p["name"]: p for p in doc["paths"]["/api/things"]["get"]["parameters"]}
    assert parameters["limit"]["schema"]["maximum"] == 200 and parameters["limit"]["schema"]["default"] == 50
    assert parameters["after"]["schema"]["anyOf"][0]["pattern"] == "^[A-Za-z0-9_-]{1,100}$"
    page = schemas[doc["paths"]["/api/things"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                   ["$ref"].split("/")[-1]]
    assert set(page["properties"]) == {"items", "next", "total"}
    assert "422" in doc["paths"]["/api/things"]["get"]["responses"]


# -- trusted prescribers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("cred_def_id", [
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:" + "1" * 100_000 + ":prescription",  # the stored 100,000-character entry
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:12:" + "t" * 65,
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:12:pre scription",
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:12:prescription\n",
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:١٢:prescription",
    "NcYxiDXkpYi6ov5FcYDi1e:3:CL:12:",
    "0cYxiDXkpYi6ov5FcYDi1e:3:CL:12:prescription",
])
def test_trusted_prescriber_ids_are_capped_and_exact(cred_def_id):
    with pytest.raises(ValidationError) as err:
        TrustedPrescriber.model_validate_json(json.dumps({"cred_def_id": cred_def_id}), strict=True)
    assert [e["loc"] for e in err.value.errors()] == [("cred_def_id",)]


def test_a_real_credential_definition_id_is_trusted():
    assert TrustedPrescriber(cred_def_id="NcYxiDXkpYi6ov5FcYDi1e:3:CL:12:prescription").label == ""
