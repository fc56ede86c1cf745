"""Secrets generated on first use and kept in the state directory (mode 0600).

Each organisation gets its own DID seed, each agent its own wallet key and admin API key: nothing is
shared and nothing secret is hard-coded. Secret values are wrapped in `SecretStr` so that printing or
logging a model never shows them.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets as _random
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from pydantic import SecretStr


def new_seed() -> str:
    """A 32-character seed, the form ACA-Py and indy-vdr take for ed25519 DIDs."""
    return _random.token_hex(16)


def new_key() -> str:
    return _random.token_urlsafe(32)


def new_password() -> str:
    """A password people paste rather than type: 96 random bits."""
    return _random.token_urlsafe(12)


def new_fernet_key() -> str:
    """The 32-byte key, base64url, that encrypted session cookies (Fernet) take."""
    return base64.urlsafe_b64encode(_random.token_bytes(32)).decode()


class SecretStore:
    def __init__(self, path: Path):
        self.path = path

    @contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            raw = fh.read()
            data: dict[str, str] = json.loads(raw) if raw.strip() else {}
            before = dict(data)
            yield data
            if data != before:
                fh.seek(0)
                fh.truncate()
                json.dump(data, fh, indent=2, sort_keys=True)

    def get(self, name: str, factory: Callable[[], str] = new_key) -> SecretStr:
        """The secret called `name`, created with `factory` the first time it is asked for."""
        with self._locked() as data:
            if name not in data:
                data[name] = factory()
            return SecretStr(data[name])

    def seed(self, owner: str) -> SecretStr:
        return self.get(f"seed:{owner}", new_seed)

    def wallet_key(self, agent: str) -> SecretStr:
        return self.get(f"wallet-key:{agent}")

    def admin_api_key(self, agent: str) -> SecretStr:
        return self.get(f"admin-api-key:{agent}")

    def webhook_key(self, agent: str) -> SecretStr:
        return self.get(f"webhook-key:{agent}")

    def controller_api_key(self, agent: str) -> SecretStr:
        """Bearer token of the controller's JSON API."""
        return self.get(f"controller-api-key:{agent}")

    @staticmethod
    def page_password_name(agent: str, role: str = "patient") -> str:
        """Where the wallet's one page password is kept (an organisation's staff have their own)."""
        return f"wallet-password:{agent}"

    def page_password(self, agent: str, role: str = "patient") -> SecretStr:
        """Sign-in password of the wallet's web page."""
        return self.get(self.page_password_name(agent, role), new_password)

    @staticmethod
    def staff_password_name(agent: str, username: str) -> str:
        """Where a dev-default staff account's first password is kept (erx_core.staff.dev_accounts)."""
        return f"staff-password:{username}:{agent}"

    def staff_password(self, agent: str, username: str) -> SecretStr:
        return self.get(self.staff_password_name(agent, username), new_password)

    def session_key(self, agent: str) -> SecretStr:
        """Encrypts the web page's session cookies."""
        return self.get(f"session-key:{agent}", new_fernet_key)
