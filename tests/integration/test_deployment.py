"""Organisations deployed the production way: each from its own home, against a shared network.

On the session's dev network (pool, chain, tails), a health authority of its own (own home, own keys:
admitted by the network's trustee, it publishes a schema and deploys a token contract), then practices,
a pharmacy whose wallet and records are in PostgreSQL, and a patient's wallet, each initialised from
the authority's descriptor in its own home and started as its own processes. No secrets file is shared:
a scan of each home finds no other deployment's secret.

Onboarding a second practice makes its prescriptions acceptable at the pharmacy and offboarding it makes
them `untrusted_issuer`, without anything done at the pharmacy.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import psycopg
import pytest

from erx_cli.authority import HealthAuthority
from erx_cli.launch import SetupError
from erx_cli.org import Organisation, OrgSettings, Storage
from erx_cli.system import LocalSystem
from erx_core.processes import free_port
from erx_core.staff import dev_person
from erx_roles.scenario import Scenario, sample_order

pytestmark = pytest.mark.integration


class Homes:
    """The organisations' controllers, as the scenario reaches them (their own URL and operator token)."""

    def __init__(self, orgs: dict[str, Organisation]):
        self.orgs = orgs

    def controller_url(self, name: str) -> str:
        return self.orgs[name].settings.controller_url

    def operator_token(self, name: str):
        return self.orgs[name].operator_token()

    def staff_member(self, name: str) -> str | None:
        return dev_person(self.orgs[name].settings.role)


def _ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def org_settings(name: str, role: str, **extra) -> OrgSettings:
    inbound, admin, controller = _ports(3)
    return OrgSettings(name=name, role=role, label=f"{name} (deployment test)", inbound_port=inbound,
                       admin_port=admin, controller_port=controller, dev_accounts=True, **extra)


def secret_values(home: Path) -> set[str]:
    return {v for v in json.loads((home / "secrets.json").read_text()).values() if len(v) >= 16}


def files_holding(home: Path, secrets: set[str]) -> list[str]:
    """Files under `home` containing one of `secrets` (as text)."""
    found = []
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}" for s in secrets if s.encode() in data]
    return found


@pytest.fixture(scope="module")
async def deployment(network: LocalSystem, tmp_path_factory):
    root = tmp_path_factory.mktemp("deployments")
    authority = HealthAuthority(root / "authority", "test-authority")
    authority.init(network.network.descriptor())
    did, verkey = authority.did_and_verkey()
    await network.network.admit_authority(did, verkey, "test-authority")
    descriptor = await authority.up()
    orgs = {
        "clinic-north": Organisation(root / "clinic-north"),
        "pharmacy-pg": Organisation(root / "pharmacy-pg"),
        "clinic-south": Organisation(root / "clinic-south"),
        "wallet": Organisation(root / "wallet"),
    }
    orgs["clinic-north"].init(org_settings("clinic-north", "doctor"), descriptor)
    orgs["pharmacy-pg"].init(org_settings("pharmacy-pg", "pharmacy", storage=Storage.POSTGRES,
                                          postgres_port=free_port()), descriptor)
    orgs["clinic-south"].init(org_settings("clinic-south", "doctor"), descriptor)
    orgs["wallet"].init(org_settings("wallet", "patient"), descriptor)
    for name in ("clinic-north", "pharmacy-pg"):
        await authority.onboard(orgs[name].join_request())
    try:
        await asyncio.gather(*(orgs[n].up() for n in ("clinic-north", "pharmacy-pg", "wallet")))
        scenario = Scenario(Homes(orgs))
        yield authority, orgs, scenario, root
        await scenario.close()
    finally:
        for org in orgs.values():
            org.down()


async def issue_to_wallet(scenario: Scenario, doctor: str) -> tuple[dict, str]:
    connection_id, _ = await scenario.connect(doctor, "wallet")
    issued = await scenario.issue(doctor, connection_id, sample_order())
    assert issued["state"] == "issued", issued
    return issued, await scenario.credential_for("wallet", issued["prescription_id"])


async def test_a_practice_and_a_pharmacy_on_postgresql_issue_verify_and_dispense(deployment):
    authority, orgs, scenario, _ = deployment
    _, credential_id = await issue_to_wallet(scenario, "clinic-north")
    check = await scenario.redeem("pharmacy-pg", "wallet", credential_id)
    assert check["state"] == "dispensed", check
    # the pharmacy's records are in its PostgreSQL database, not in a file of its home
    pharmacy = orgs["pharmacy-pg"]
    assert not (pharmacy.home / "controller.db").exists()
    dsn = pharmacy.store_location().postgres_dsn.get_secret_value()
    with psycopg.connect(dsn) as db:
        rows = db.execute("SELECT count(*) FROM records WHERE kind = 'check'").fetchone()
    assert rows[0] >= 1
    # ... and so is its agent's wallet: askar made no sqlite wallet in the agent's home
    assert not list((pharmacy.home / "agent").rglob("sqlite.db"))


async def test_no_home_holds_another_deployments_secret(deployment, network: LocalSystem):
    authority, orgs, _, _ = deployment
    homes = {"authority": authority.home, **{name: org.home for name, org in orgs.items()}}
    secrets = {name: secret_values(home) for name, home in homes.items()}
    secrets["network"] = secret_values(network.network.home)  # the pool's trustee and steward seeds
    for name, home in homes.items():
        for owner, values in secrets.items():
            if owner != name:
                assert files_holding(home, values) == [], f"{name}'s home holds a secret of {owner}"


async def test_onboarding_and_offboarding_a_practice_changes_every_pharmacy_without_touching_it(deployment):
    authority, orgs, scenario, _ = deployment
    south = orgs["clinic-south"]
    with pytest.raises(SetupError, match="not on the Indy network"):
        await south.up()  # not onboarded yet: its agent cannot have a public DID
    await authority.onboard(south.join_request())
    await south.up()

    _, first = await issue_to_wallet(scenario, "clinic-south")
    _, second = await issue_to_wallet(scenario, "clinic-south")
    accepted = await scenario.present("pharmacy-pg", "wallet", first)
    assert accepted["state"] == "verified", accepted

    await authority.offboard("clinic-south")
    refused = await scenario.present("pharmacy-pg", "wallet", second)
    assert refused["state"] == "refused", refused
    assert refused["refusal"]["reason"] == "untrusted_issuer"
    # nothing was configured at the pharmacy: its own override list is empty
    overrides = await scenario.client("pharmacy-pg").get("/api/trusted-prescribers")
    assert overrides["items"] == []
