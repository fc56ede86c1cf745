"""The declarative REST API: one declaration gives the route and the OpenAPI document; integrator
tokens are checked, hashed at rest, revocable; operator-only operations refuse integrators."""

from __future__ import annotations

import sqlite3

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, Field, SecretStr

from erx_core.store import Store
from erx_roles.api import Api, WaitQuery
from erx_roles.http import ApiError, api_middlewares
from erx_roles.integrators import IntegratorCreate, Integrators, Scope

OPERATOR = "operator-token"


class Thing(BaseModel):
    thing_id: str
    size: int = Field(ge=1, le=10)


class SecretThing(Thing):
    """What the store keeps; the API shows a Thing only."""

    secret: str = "hidden"


def build(tmp_path) -> tuple[web.Application, Integrators, Api]:
    store = Store(tmp_path / "c.db")
    integrators = Integrators(store, SecretStr(OPERATOR))
    api = Api("things")
    things: dict[str, SecretThing] = {}

    @api.operation("POST", "/api/things", summary="Make a thing", body=Thing, response=Thing, status=201)
    async def make_thing(_: web.Request, body: Thing) -> Thing:
        things[body.thing_id] = SecretThing(**body.model_dump())
        return things[body.thing_id]

    @api.operation("GET", "/api/things/{thing_id}", summary="One thing", query=WaitQuery, response=Thing,
                   errors=(404,))
    async def get_thing(_: web.Request, thing_id: str, query: WaitQuery) -> Thing:
        if thing_id not in things:
            raise ApiError(404, f"thing {thing_id} not found")
        return things[thing_id]

    @api.operation("DELETE", "/api/things/{thing_id}", summary="Drop a thing", operator_only=True)
    async def drop_thing(_: web.Request, thing_id: str) -> None:
        things.pop(thing_id, None)

    @api.operation("PUT", "/api/things/{thing_id}/trust", summary="Needs a scope", scope=Scope.TRUST_LIST)
    async def trust_thing(_: web.Request, thing_id: str) -> None:
        things[thing_id].secret = "trusted"

    api.include(integrators.api())
    app = web.Application(middlewares=api_middlewares(integrators.authenticate, api.public_paths))
    app.add_routes(api.routes("http://127.0.0.1:1"))
    return app, integrators, api


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_routes_parse_validate_and_serialise_through_the_declared_models(tmp_path):
    app, _, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/things", json={"thing_id": "a", "size": 3}, headers=bearer(OPERATOR))
        assert r.status == 201 and await r.json() == {"thing_id": "a", "size": 3}  # no `secret`
        r = await c.post("/api/things", json={"thing_id": "b", "size": 11}, headers=bearer(OPERATOR))
        assert r.status == 422 and (await r.json())["fields"][0]["field"] == "size"
        r = await c.get("/api/things/a", params={"wait": "600"}, headers=bearer(OPERATOR))
        assert r.status == 422 and (await r.json())["fields"][0]["field"] == "wait"
        r = await c.get("/api/things/a", params={"wait": "abc"}, headers=bearer(OPERATOR))
        assert r.status == 422
        assert (await c.get("/api/things/zzz", headers=bearer(OPERATOR))).status == 404
        r = await c.delete("/api/things/a", headers=bearer(OPERATOR))
        assert r.status == 204


async def test_integrator_tokens_work_until_revoked_and_cannot_manage_integrators(tmp_path):
    app, integrators, _ = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.post("/api/integrators", json={"name": "Practice software"}, headers=bearer(OPERATOR))
        created = await r.json()
        assert r.status == 201 and created["token"].startswith("erx_") and created["token_hint"] == \
            created["token"][-4:]
        token = created["token"]
        assert (await c.post("/api/things", json={"thing_id": "x", "size": 1}, headers=bearer(token))).status == 201
        # operator-only operations refuse an integrator with 403
        assert (await c.delete("/api/things/x", headers=bearer(token))).status == 403
        assert (await c.get("/api/integrators", headers=bearer(token))).status == 403
        listed = await (await c.get("/api/integrators", headers=bearer(OPERATOR))).json()
        assert [i["name"] for i in listed] == ["Practice software"] and "token" not in listed[0]
        for headers in ({}, bearer("erx_wrong"), {"Authorization": token}, {"Authorization": f"Basic {token}"}):
            assert (await c.get("/api/things/x", headers=headers)).status == 401
        r = await c.delete(f"/api/integrators/{created['integrator_id']}", headers=bearer(OPERATOR))
        assert r.status == 204
        assert (await c.get("/api/things/x", headers=bearer(token))).status == 401
        unknown = "9d9d9d9d-0000-4000-8000-000000000000"
        assert (await c.delete(f"/api/integrators/{unknown}", headers=bearer(OPERATOR))).status == 404
        # a malformed id is refused at the boundary, naming the parameter
        r = await c.delete("/api/integrators/..%2F..%2Fshutdown", headers=bearer(OPERATOR))
        assert r.status == 422 and (await r.json())["fields"][0]["field"] == "integrator_id"


def test_tokens_are_kept_only_as_hashes(tmp_path):
    store = Store(tmp_path / "c.db")
    created = Integrators(store, SecretStr(OPERATOR)).create(IntegratorCreate(name="Insurer"))
    store.close()
    dump = "\n".join(str(row) for row in sqlite3.connect(tmp_path / "c.db").execute("SELECT * FROM records"))
    assert created.token not in dump and created.token[4:] not in dump
    # and a controller restarted on the same file still knows the token
    again = Integrators(Store(tmp_path / "c.db"), SecretStr(OPERATOR))
    assert again.authenticate(f"Bearer {created.token}").integrator_id == created.integrator_id


async def test_the_openapi_document_describes_every_operation_from_its_models(tmp_path):
    app, _, api = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/api/openapi.json")  # public: no token
        doc = await r.json()
    assert r.status == 200 and doc == api.openapi("http://127.0.0.1:1")
    assert doc["openapi"] == "3.1.0" and doc["servers"] == [{"url": "http://127.0.0.1:1"}]
    post = doc["paths"]["/api/things"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Thing")
    assert set(post["responses"]) == {"201", "401", "422"}
    thing = doc["components"]["schemas"]["Thing"]
    assert thing["properties"]["size"] == {"maximum": 10, "minimum": 1, "title": "Size", "type": "integer"}
    get = doc["paths"]["/api/things/{thing_id}"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in get["parameters"]] == \
        [("thing_id", "path", True), ("wait", "query", False)]
    assert get["parameters"][1]["schema"]["maximum"] == 60
    assert set(doc["paths"]["/api/things/{thing_id}"]["delete"]["responses"]) == {"204", "401", "403", "422"}  # 422: a malformed id
    created = doc["paths"]["/api/integrators"]["post"]["responses"]["201"]["content"]["application/json"]
    assert "token" in doc["components"]["schemas"][created["schema"]["$ref"].split("/")[-1]]["properties"]
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]


async def test_scoped_operations_need_the_scope_or_the_operator(tmp_path):
    """Trust-list changes: the operator may; an integrator only with the `trust-list` scope."""
    app, _, api = build(tmp_path)
    async with TestClient(TestServer(app)) as c:
        plain = await (await c.post("/api/integrators", json={"name": "Pharmacy system"},
                                    headers=bearer(OPERATOR))).json()
        scoped = await (await c.post("/api/integrators", json={"name": "Chain HQ", "scopes": ["trust-list"]},
                                     headers=bearer(OPERATOR))).json()
        assert scoped["scopes"] == ["trust-list"] and plain["scopes"] == []
        await c.post("/api/things", json={"thing_id": "x", "size": 1}, headers=bearer(OPERATOR))
        r = await c.put("/api/things/x/trust", headers=bearer(plain["token"]))
        assert r.status == 403 and "trust-list" in (await r.json())["error"]
        assert (await c.put("/api/things/x/trust", headers=bearer(scoped["token"]))).status == 204
        assert (await c.put("/api/things/x/trust", headers=bearer(OPERATOR))).status == 204
        bad = await c.post("/api/integrators", json={"name": "x", "scopes": ["everything"]}, headers=bearer(OPERATOR))
        assert bad.status == 422
    document = api.openapi()
    assert "403" in document["paths"]["/api/things/{thing_id}/trust"]["put"]["responses"]
