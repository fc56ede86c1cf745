"""Controllers' API plumbing: bearer auth, field-level 422s, 4xx reasons, never a stack trace."""

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel, Field

from erx_roles.errors import Conflict, InvalidRequest, NotFound, Unavailable, UpstreamRefused, unavailable
from erx_roles.http import ApiError, Caller, api_middlewares, http_error, json_response, parse_body
from erx_roles.invitations import decode_invitation
from erx_roles.patient import _satisfies


class Body(BaseModel):
    quantity: int = Field(ge=1)


def app() -> web.Application:
    async def create(request):
        return json_response(await parse_body(request, Body), status=201)

    async def conflict(_):
        raise ApiError(409, "already done")

    async def crash(_):
        raise RuntimeError("secret internals")

    async def already_refused(_):
        raise Conflict("check is refused", check={"check_id": "c1", "state": "refused"})

    async def chain_down(_):
        raise unavailable("the chain did not answer")

    async def health(_):
        return json_response({"ok": True})

    def authenticate(header: str) -> Caller | None:
        return Caller(name="operator") if header == "Bearer tok" else None

    a = web.Application(middlewares=api_middlewares(authenticate))
    a.add_routes([web.post("/api/x", create), web.get("/api/conflict", conflict), web.get("/api/crash", crash),
                  web.get("/api/refused", already_refused), web.get("/api/chain-down", chain_down),
                  web.get("/health", health)])
    return a


AUTH = {"Authorization": "Bearer tok"}


async def test_api_needs_the_token_but_health_does_not():
    async with TestClient(TestServer(app())) as c:
        assert (await c.get("/health")).status == 200
        r = await c.post("/api/x", json={"quantity": 1})
        assert r.status == 401 and "token" in (await r.json())["error"]
        assert (await c.post("/api/x", json={"quantity": 1}, headers={"Authorization": "Bearer nope"})).status == 401
        assert (await c.post("/api/x", json={"quantity": 1}, headers=AUTH)).status == 201


async def test_bad_input_gets_field_level_422():
    async with TestClient(TestServer(app())) as c:
        r = await c.post("/api/x", json={"quantity": 0}, headers=AUTH)
        body = await r.json()
        assert r.status == 422
        assert body["fields"][0]["field"] == "quantity"
        r = await c.post("/api/x", data=b"{not json", headers=AUTH)
        assert r.status == 422


async def test_refusals_and_crashes_are_json_without_internals():
    async with TestClient(TestServer(app())) as c:
        r = await c.get("/api/conflict", headers=AUTH)
        assert r.status == 409 and (await r.json()) == {"error": "already done"}
        r = await c.get("/api/crash", headers=AUTH)
        text = await r.text()
        assert r.status == 500 and "secret internals" not in text and "Traceback" not in text
        assert (await c.get("/api/nothing-here", headers=AUTH)).status == 404


def test_domain_errors_map_to_one_http_answer_each():
    for exc, status in [(NotFound("check c1 not found"), 404), (Conflict("already done"), 409),
                        (InvalidRequest("no invitation in this link"), 422), (UpstreamRefused("the chain refused"), 502),
                        (Unavailable("the chain has not confirmed yet"), 503)]:
        answer = http_error(exc)
        assert (answer.status, answer.reason, answer.extra, answer.headers) == (status, exc.reason, {}, {})
    answer = http_error(unavailable("the chain did not answer"))
    assert answer.status == 503 and answer.headers == {"Retry-After": "5"}
    assert answer.reason == "the chain did not answer; nothing was decided, retry in a few seconds"


async def test_domain_errors_answer_through_the_middleware_with_their_details_and_retry_after():
    async with TestClient(TestServer(app())) as c:
        r = await c.get("/api/refused", headers=AUTH)
        assert r.status == 409
        assert await r.json() == {"error": "check is refused", "check": {"check_id": "c1", "state": "refused"}}
        r = await c.get("/api/chain-down", headers=AUTH)
        assert r.status == 503 and r.headers["Retry-After"] == "5"
        assert await r.json() == {"error": "the chain did not answer; nothing was decided, retry in a few seconds"}


def test_invitation_links_decode_and_garbage_is_refused():
    import base64
    import json
    inv = {"@id": "abc", "@type": "https://didcomm.org/out-of-band/1.1/invitation"}
    url = "http://x/?oob=" + base64.urlsafe_b64encode(json.dumps(inv).encode()).decode().rstrip("=")
    assert decode_invitation(url) == inv
    for bad in ("http://x/", "http://x/?oob=%%%"):
        try:
            decode_invitation(bad)
        except InvalidRequest as exc:
            assert http_error(exc).status == 422
        else:
            raise AssertionError(f"{bad} accepted")


def test_predicate_check_of_the_wallet():
    attrs = {"valid_until": "20261231", "valid_from": "20261101"}
    assert _satisfies(attrs, {"name": "valid_until", "p_type": ">=", "p_value": 20261121})
    assert not _satisfies(attrs, {"name": "valid_from", "p_type": "<=", "p_value": 20261031})
    assert not _satisfies(attrs, {"name": "missing", "p_type": ">=", "p_value": 1})
