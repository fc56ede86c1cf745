"""The deployment's typed files: the network descriptor, a controller's one configuration, an
organisation's home and join request, and the pharmacy's trust rule (register + override)."""

from __future__ import annotations

import json
import stat

import pytest
from pydantic import SecretStr, ValidationError

from erx_cli.authority import JoinRequest
from erx_cli.launch import SetupError
from erx_cli.org import Organisation, OrgSettings, Storage
from erx_core.config import AgentLink, ControllerConfig, StoreLocation
from erx_core.descriptor import AuthorityRef, EvmChainRef, IndyNetworkRef, NetworkDescriptor
from erx_core.staff import StaffSeed
from erx_roles.dispensing import Override, issuer_did, trusted

DID = "Th7MpTaRZVRYnPiabds81Y"
ADDRESS = "0x" + "11" * 20


def descriptor(tmp_path, complete: bool = True) -> NetworkDescriptor:
    genesis = tmp_path / "genesis"
    genesis.write_text('{"txn": "genesis"}\n')
    d = NetworkDescriptor(indy=IndyNetworkRef(name="erx-test", genesis_file=genesis),
                          chain=EvmChainRef(rpc_url="http://127.0.0.1:8545", chain_id=1337),
                          tails_server_url="http://127.0.0.1:6543")
    if complete:
        d = d.model_copy(update={"prescription_schema_id": f"{DID}:2:erx-prescription:1.0",
                                 "chain": d.chain.model_copy(update={"token_contract": ADDRESS}),
                                 "authority": AuthorityRef(name="ha", did=DID, chain_address=ADDRESS)})
    return d


def test_the_descriptor_names_exactly_one_genesis_and_round_trips(tmp_path):
    with pytest.raises(ValidationError, match="exactly one"):
        IndyNetworkRef(name="x")
    with pytest.raises(ValidationError, match="exactly one"):
        IndyNetworkRef(name="x", genesis_file=tmp_path / "g", genesis_url="https://example.org/genesis")
    with pytest.raises(ValidationError):
        IndyNetworkRef(name="x", genesis_url="file:///etc/passwd")  # http(s) only
    d = descriptor(tmp_path)
    d.save(tmp_path / "descriptor.json")
    assert NetworkDescriptor.load(tmp_path / "descriptor.json") == d
    assert d.chain.client_config().contract_address == d.chain.token_contract


def test_an_incomplete_descriptor_cannot_be_joined(tmp_path):
    half = descriptor(tmp_path, complete=False)
    assert not half.complete
    with pytest.raises(ValueError, match="not complete"):
        half.require_complete()
    with pytest.raises(ValueError, match="not complete"):
        Organisation(tmp_path / "org").init(org_settings(), half)


def test_the_descriptor_refuses_unknown_fields(tmp_path):
    raw = json.loads(descriptor(tmp_path).model_dump_json())
    raw["admin_key"] = "0xsecret"
    with pytest.raises(ValidationError):
        NetworkDescriptor.model_validate(raw)


def org_settings(**overrides) -> OrgSettings:
    return OrgSettings(**({"name": "clinic", "role": "doctor", "label": "Clinic", "inbound_port": 18020,
                           "admin_port": 18021, "controller_port": 18022, "dev_accounts": True} | overrides))


def test_an_organisation_home_holds_its_own_keys_and_a_public_join_request(tmp_path):
    org = Organisation(tmp_path / "clinic")
    request = org.init(org_settings(), descriptor(tmp_path))
    assert request == JoinRequest.load(org.join_request_file)
    assert request.did == org.did_and_verkey()[0] and request.chain_address == org.chain_key().address
    published = org.join_request_file.read_text()
    for value in json.loads((org.home / "secrets.json").read_text()).values():
        assert value not in published, "a secret went into the join request"
    assert stat.S_IMODE((org.home / "secrets.json").stat().st_mode) == 0o600
    assert org.genesis_file.read_text() == '{"txn": "genesis"}\n'
    # every secret in the home is this organisation's own, and all of them are made at init
    names = set(json.loads((org.home / "secrets.json").read_text()))
    assert all(name.endswith(":clinic") for name in names)
    assert {"seed:clinic", "wallet-key:clinic", "admin-api-key:clinic", "webhook-key:clinic",
            "controller-api-key:clinic", "staff-password:prescriber:clinic", "staff-password:operator:clinic",
            "session-key:clinic", "chain-keystore-password:clinic"} <= names
    assert "wallet-password:clinic" not in names  # staff sign in as themselves
    seeded = org.staff_seeds()
    assert [(s.username, s.role) for s in seeded] == [("prescriber", "prescriber"), ("operator", "operator")]
    assert seeded[0].password.get_secret_value() == json.loads((org.home / "secrets.json").read_text())[
        "staff-password:prescriber:clinic"]


def test_a_patient_wallet_has_no_join_request(tmp_path):
    org = Organisation(tmp_path / "wallet")
    assert org.init(org_settings(name="wallet", role="patient"), descriptor(tmp_path)) is None
    assert not org.join_request_file.exists()


def test_organisation_names_and_endpoints_are_checked():
    with pytest.raises(ValidationError):
        org_settings(name="../other")
    with pytest.raises(ValidationError):
        org_settings(public_url="javascript:alert(1)")
    assert org_settings(public_endpoint="https://clinic.example/didcomm").agent_endpoint == \
        "https://clinic.example/didcomm"
    assert org_settings().controller_url == "http://127.0.0.1:18022"


def test_postgres_storage_needs_a_port(tmp_path):
    with pytest.raises(SetupError, match="postgres_port"):
        Organisation(tmp_path / "p").init(org_settings(role="pharmacy", storage=Storage.POSTGRES),
                                          descriptor(tmp_path))


def test_a_join_request_carries_only_a_valid_did_and_address():
    with pytest.raises(ValidationError):
        JoinRequest(role="doctor", name="c", label="C", did="did:sov:" + DID, verkey="x" * 44, chain_address=ADDRESS)
    with pytest.raises(ValidationError):
        JoinRequest(role="patient", name="c", label="C", did=DID, verkey="x" * 44, chain_address=ADDRESS)


def test_a_controller_configuration_is_written_for_its_owner_only_and_round_trips(tmp_path):
    config = ControllerConfig(
        name="clinic", role="doctor", label="Clinic", port=18022, public_url="http://127.0.0.1:18022",
        agent=AgentLink(admin_url="http://127.0.0.1:18021", admin_api_key=SecretStr("k" * 32),
                        webhook_key=SecretStr("w" * 32)),
        operator_token=SecretStr("t" * 32), session_key=SecretStr("s" * 44),
        staff=[StaffSeed(username="anna", display_name="Dr. Anna", role="prescriber", professional_id="1",
                         password=SecretStr("p" * 16))],
        store=StoreLocation(sqlite_file=tmp_path / "controller.db"))
    path = tmp_path / "controller.json"
    config.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ControllerConfig.load(path) == config
    assert "k" * 32 not in repr(config) and "p" * 16 not in repr(config), "secrets must not show in logs"
    with pytest.raises(ValidationError):  # nothing but what a controller needs
        ControllerConfig.model_validate(json.loads(path.read_text()) | {"network": {}})


@pytest.mark.parametrize("override, registered, expected", [
    (None, True, True), (None, False, False),
    (Override.ALLOW, False, True), (Override.ALLOW, True, True),
    (Override.DENY, True, False), (Override.DENY, False, False),
])
def test_the_pharmacys_override_wins_over_the_national_register(override, registered, expected):
    assert trusted(override, registered) is expected


def test_the_issuer_is_the_did_that_wrote_the_credential_definition():
    assert issuer_did(f"{DID}:3:CL:12:prescription") == DID


def test_erx_org_init_makes_a_home_from_the_command_line(tmp_path, capsys):
    from erx_cli.cli import main

    descriptor(tmp_path).save(tmp_path / "descriptor.json")
    home = tmp_path / "pharmacy"
    assert main(["org", "init", "pharmacy", "city-pharmacy", "--home", str(home), "--network",
                 str(tmp_path / "descriptor.json"), "--label", "City Pharmacy",
                 "--public-url", "https://pharmacy.example"]) == 0
    assert "hand" in capsys.readouterr().out
    request = JoinRequest.load(home / "join-request.json")
    assert (request.role, request.name, request.label) == ("pharmacy", "city-pharmacy", "City Pharmacy")
    assert Organisation(home).settings.controller_url == "https://pharmacy.example"
    # a bad name is refused with a message, not a stack trace
    assert main(["org", "init", "doctor", "../evil", "--home", str(tmp_path / "evil"), "--network",
                 str(tmp_path / "descriptor.json")]) == 2
    assert "bad configuration" in capsys.readouterr().err


def test_erx_authority_init_writes_a_public_join_request(tmp_path, capsys):
    from erx_cli.cli import main

    descriptor(tmp_path, complete=False).save(tmp_path / "network.json")
    home = tmp_path / "authority"
    assert main(["authority", "init", "--home", str(home), "--network", str(tmp_path / "network.json")]) == 0
    request = json.loads((home / "join-request.json").read_text())
    assert set(request) == {"name", "did", "verkey", "chain_address"}
    secrets = set(json.loads((home / "secrets.json").read_text()).values())
    assert not secrets & set(request.values())
    assert "admit-authority" in capsys.readouterr().out


def test_a_real_organisation_starts_with_its_operator_only(tmp_path):
    """No dev prescriber with a made-up physician id in a production home: the operator adds the staff."""
    bare = Organisation(tmp_path / "real")
    bare._settings = org_settings(dev_accounts=False)
    assert [a.role for a in bare.dev_staff()] == ["operator"]
    dev = Organisation(tmp_path / "dev")
    dev._settings = org_settings()
    assert sorted(a.role for a in dev.dev_staff()) == ["operator", "prescriber"]
