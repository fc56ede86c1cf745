"""Chain keys are made per network, kept encrypted (web3's keystore format), readable only by their
organisation's password, and never derived from the public test mnemonic."""

from __future__ import annotations

import json
import stat

import pytest
from eth_account import Account

from erx_chain.accounts import dev_accounts
from erx_chain.keystore import KeystoreError, load_or_create


def test_a_key_is_made_once_kept_encrypted_and_reopened(tmp_path):
    path = tmp_path / "keys" / "doctor.json"
    made = load_or_create(path, "pw-1")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keystore = json.loads(path.read_text())
    assert keystore["crypto"]["kdf"] == "scrypt" and made.key.hex()[2:] not in path.read_text()
    assert Account.from_key(Account.decrypt(keystore, "pw-1")).address == made.address
    assert load_or_create(path, "pw-1").address == made.address, "the same key on every start"
    with pytest.raises(KeystoreError):
        load_or_create(path, "wrong")


def test_keys_differ_per_network_and_from_the_public_mnemonic(tmp_path):
    a, b = load_or_create(tmp_path / "a.json", "x"), load_or_create(tmp_path / "b.json", "x")
    public = dev_accounts(4, 4)
    well_known = {public.authority.address, *(x.address for x in public.doctors + public.pharmacies)}
    assert a.address != b.address and not {a.address, b.address} & well_known
