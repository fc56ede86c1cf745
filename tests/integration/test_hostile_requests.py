"""Hostile request values on the real network: ids that try to become paths of the agents' admin APIs.

A controller builds admin API paths from ids it receives (a connection id in a body, a record id in
its own path). A value such as `../shutdown` must never reach another admin route: ACA-Py's admin
API answers `GET /shutdown` by stopping the agent, and URL normalisation turns
`/connections/../shutdown` into exactly that. Every hostile value must be answered with a 4xx and a
JSON `error` (422 or 404 for a body's connection id), never a 5xx, and every organisation's agent
must still answer afterwards.

If an agent did stop, it is started again after the test (the test still fails), so that later test
modules sharing this network are not broken by a bug found here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from erx_cli.system import LocalSystem as Network
from erx_roles.scenario import Scenario, sample_order

pytestmark = pytest.mark.integration

DOCTOR, PHARMACY, PHARMACY_B, PATIENT = "doctor", "pharmacy", "pharmacy-b", "patient"
AGENTS = (DOCTOR, PHARMACY, PHARMACY_B, PATIENT)
FIXTURES = Path(__file__).parent.parent / "fixtures"

HOSTILE = {
    "dot-dot shutdown": "../shutdown",
    "climbing to status": "abc/../../status",
    "encoded dot-dot": "%2e%2e%2fshutdown",
    "100,000 characters": "a" * 100_000,
    "NUL": "\u0000",
}
# as path parameters: also two levels up (a path parameter sits one segment deeper than a body id)
HOSTILE_SEGMENTS = HOSTILE | {"two levels up": "../../shutdown", "encoded slash": "..%2F..%2Fshutdown"}

# (organisation, method, path template) of every REST route with a path parameter
PATH_ROUTES = [
    (PHARMACY, "GET", "/api/checks/{}"),
    (PHARMACY, "POST", "/api/checks/{}/dispense"),
    (PHARMACY, "GET", "/api/checks/{}/fhir"),
    (PHARMACY, "DELETE", "/api/trusted-prescribers/{}"),
    (DOCTOR, "GET", "/api/prescriptions/{}"),
    (DOCTOR, "GET", "/api/prescriptions/{}/fhir"),
    (DOCTOR, "POST", "/api/prescriptions/{}/revoke"),
    (DOCTOR, "GET", "/api/invitations/{}/connection"),
    (PHARMACY, "GET", "/api/invitations/{}/connection"),
    (DOCTOR, "GET", "/api/webhooks/{}"),
    (PHARMACY, "DELETE", "/api/webhooks/{}"),
    (DOCTOR, "GET", "/api/webhooks/{}/deliveries"),
    (PHARMACY, "DELETE", "/api/integrators/{}"),
    # the wallet stand-in (its owner's token): its record ids are the agent's exchange ids
    (PATIENT, "POST", "/api/offers/{}/accept"),
    (PATIENT, "POST", "/api/offers/{}/decline"),
    (PATIENT, "POST", "/api/requests/{}/approve"),
    (PATIENT, "POST", "/api/requests/{}/decline"),
    (PATIENT, "POST", "/api/connections/{}/share"),
]


@pytest.fixture(scope="module")
async def operator(network: Network):
    s = Scenario(network)  # each organisation's own token: everything may be tried
    yield s
    await s.close()


@pytest.fixture(scope="module")
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def agents_not_answering(network: Network) -> list[str]:
    down = []
    for name in AGENTS:
        async with network.admin(name) as admin:
            if not await admin.is_ready():
                down.append(name)
    return down


@pytest.fixture(autouse=True)
async def agents_answer_afterwards(network: Network):
    """After each test every organisation's agent must still answer. One that does not (stopped by a
    request that reached its `/shutdown`) is stopped by its pid record and started again."""
    yield
    down = await agents_not_answering(network)
    if down:
        for name in down:
            network.supervisor.stop(f"agent-{name}", timeout_s=20)
        await network.up()


ADMINISTRATION = re.compile(r"^/api/(trusted-prescribers|webhooks|integrators|staff|audit)")  # the operator's


async def send(http: aiohttp.ClientSession, network: Network, organisation: str, method: str, path: str,
               body: dict | None = None) -> tuple[int, str, object]:
    """One request, its path sent exactly as given (no re-encoding, no normalisation)."""
    token = network.operator_token(organisation).get_secret_value()
    url = URL(network.controller_url(organisation) + path, encoded=True)
    headers = {"Authorization": f"Bearer {token}"}
    person = network.staff_member(organisation)
    if person and not ADMINISTRATION.match(path):  # as the organisation's software, for its dev person
        headers["Erx-On-Behalf-Of"] = person
    async with http.request(method, url, json=body, headers=headers) as resp:
        text = await resp.text()
        try:
            data = json.loads(text) if resp.content_type == "application/json" else text
        except ValueError:
            data = text
        return resp.status, resp.content_type, data


# The controllers' HTTP server (aiohttp) reads request lines of up to 8190 bytes: a longer one (a
# 100,000-character path parameter) is refused with a plain-text 400 by the HTTP parser itself, before
# any route or middleware of the controller runs. That is the one 4xx that carries no JSON reason.
MAX_REQUEST_LINE = 8190


def refused_problems(status: int, content_type: str, data: object, allowed: set[int] | None = None,
                     line_too_long: bool = False) -> list[str]:
    problems = []
    if line_too_long:
        if status not in (400, 414):
            problems.append(f"an over-long request line answered {status}, expected 400 or 414")
        return problems
    if allowed is not None and status not in allowed:
        problems.append(f"answered {status}, expected one of {sorted(allowed)}")
    if not 400 <= status < 500:
        problems.append(f"answered {status}, expected a 4xx")
    if content_type != "application/json" or not isinstance(data, dict) or not data.get("error"):
        problems.append(f"no JSON error reason: {content_type} {str(data)[:200]!r}")
    return problems


async def assert_refused_and_agents_answer(network: Network, answer: tuple[int, str, object],
                                           allowed: set[int] | None = None, line_too_long: bool = False) -> None:
    problems = refused_problems(*answer, allowed=allowed, line_too_long=line_too_long)
    if down := await agents_not_answering(network):
        problems.append(f"agents no longer answering: {down}")
    assert not problems, "; ".join(problems)


def medication_request() -> dict:
    return json.loads((FIXTURES / "fhir" / "medication-request-ibuprofen.json").read_text())


# -- ids in request bodies ----------------------------------------------------------------------------
BODY_ROUTES = {
    "doctor: issue": (DOCTOR, "/api/prescriptions", lambda v: {"connection_id": v, "order": sample_order()}),
    "doctor: issue from FHIR": (DOCTOR, "/api/prescriptions/fhir",
                                lambda v: {"connection_id": v, "medication_request": medication_request()}),
    "pharmacy: ask over a connection": (PHARMACY, "/api/checks", lambda v: {"connection_id": v}),
}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
@pytest.mark.parametrize("route", list(BODY_ROUTES), ids=list(BODY_ROUTES))
async def test_hostile_connection_id_in_a_body_is_refused_and_reaches_no_admin_route(
        network: Network, operator: Scenario, http: aiohttp.ClientSession, route: str, value: str):
    organisation, path, body = BODY_ROUTES[route]
    answer = await send(http, network, organisation, "POST", path, body(value))
    await assert_refused_and_agents_answer(network, answer, allowed={404, 422})


# -- ids in the REST API's own paths --------------------------------------------------------------------
@pytest.mark.parametrize("value", list(HOSTILE_SEGMENTS.values()), ids=list(HOSTILE_SEGMENTS))
@pytest.mark.parametrize("route", PATH_ROUTES, ids=[f"{o}: {m} {p}" for o, m, p in PATH_ROUTES])
async def test_hostile_path_parameter_is_refused_and_reaches_no_admin_route(
        network: Network, operator: Scenario, http: aiohttp.ClientSession, route: tuple[str, str, str], value: str):
    organisation, method, template = route
    body = {"credential_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6"} if template.endswith("/share") else None
    # percent-encoded as one segment: the controller's router hands the decoded value to the handler
    path = template.format(quote(value, safe=""))
    answer = await send(http, network, organisation, method, path, body)
    await assert_refused_and_agents_answer(network, answer, line_too_long=len(path) > MAX_REQUEST_LINE)

