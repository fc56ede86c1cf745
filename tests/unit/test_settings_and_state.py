"""Settings validation, secrets on disk, controller records, and `reset` keeping installed venvs."""

import os
import stat

import pytest
from pydantic import ValidationError

from erx_cli.system import LocalSystem as Network
from erx_core.secrets import SecretStore
from erx_core.settings import ChainSettings, Settings
from erx_core.store import Store
from erx_roles.pharmacy import StoredCheck


def test_two_components_on_one_port_are_refused():
    with pytest.raises(ValidationError, match="port 8545 is configured for both"):
        Settings(chain=ChainSettings(port=8545), tails={"port": 8545})


def test_fewer_than_four_validators_are_refused():
    with pytest.raises(ValidationError, match="at least 4 validators"):
        Settings(pool={"node_ports": [1, 2, 3], "client_ports": [4, 5, 6]})


def test_settings_file_round_trips_with_secret_values(tmp_path):
    s = Settings(home=tmp_path)
    s.save(tmp_path / "settings.json")
    assert stat.S_IMODE(os.stat(tmp_path / "settings.json").st_mode) == 0o600
    assert Settings.load(tmp_path / "settings.json") == s


def test_secrets_are_generated_once_private_and_distinct(tmp_path):
    store = SecretStore(tmp_path / "secrets.json")
    seed = store.seed("doctor")
    assert len(seed.get_secret_value()) == 32
    assert store.seed("doctor") == seed
    assert store.seed("pharmacy") != seed
    assert store.wallet_key("doctor") != store.admin_api_key("doctor")
    assert seed.get_secret_value() not in repr(seed)
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.json").st_mode) == 0o600


def test_store_survives_reopening(tmp_path):
    store = Store(tmp_path / "c.db")
    checks = store.table("check", StoredCheck)
    checks.put("a", StoredCheck(check_id="a", pres_ex_id="p", spend_raw_tx="0xraw"))
    store.close()
    again = Store(tmp_path / "c.db").table("check", StoredCheck)
    assert again.get("a").spend_raw_tx == "0xraw"
    assert again.get("missing") is None


def test_reset_wipes_state_but_keeps_installed_environments(tmp_path):
    home = tmp_path / "home"
    settings = Settings(home=home, venvs=home / "venv")
    for d in ("venv/main", "indy-pool/x", "agents/doctor", "logs"):
        (home / d).mkdir(parents=True)
    (home / "secrets.json").write_text("{}")
    Network(settings).reset()
    assert sorted(p.name for p in home.iterdir()) == ["venv"]
    assert (home / "venv" / "main").is_dir()
