"""Chain accounts as encrypted keystores: one key per organisation, made for this network alone.

Each organisation's chain key (the health authority's governance key, each practice's issuer key, each
pharmacy's dispenser key) is generated at random the first time it is needed and kept as a standard
Ethereum keystore file (web3's V3 format, scrypt) under the network's chain folder, mode 0600. The
keystore's password is a secret of its own, kept by the caller (the network's secret store). No key
derives from a public mnemonic, so nobody who can reach the RPC port can act as an organisation.

Keystore files and their passwords are per organisation, so an organisation's home (see docs/) can hold
exactly its own key and nobody else's.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

# scrypt cost: the keystore sits in a folder only its operator reads; 2**14 keeps a controller's start
# quick (tens of ms) while every key still needs its password. A production deployment would keep keys
# in an HSM or a wallet service instead.
SCRYPT_N = 2**14


class KeystoreError(RuntimeError):
    pass


def load_or_create(path: Path, password: str, *, create: bool = True) -> LocalAccount:
    """The account kept in the keystore at `path`, created (random key, encrypted) if there is none
    (and `create`; otherwise a missing keystore is a KeystoreError)."""
    if not path.exists() and not create:
        raise KeystoreError(f"no chain keystore at {path}")
    if path.exists():
        try:
            keystore = json.loads(path.read_text())
            return Account.from_key(Account.decrypt(keystore, password))
        except (ValueError, KeyError) as exc:
            raise KeystoreError(f"cannot open the chain keystore {path}: {exc}") from None
    account = Account.from_key("0x" + secrets.token_hex(32))
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=SCRYPT_N)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keystore, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # never a half-written keystore, even if we die here
    return account
