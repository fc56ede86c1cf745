"""The audit log: who did what, on which prescription, when, and how it ended.

Append-only: `AuditLog` writes a new entry (a fresh id) and has no way to change or remove one. An entry
holds identifiers, enumerations and a short reason, and nothing else: its fields cannot carry a token's
key or any other secret. Usernames, ids and targets must match their formats; the reason (a refusal's
words) is screened, any run that looks like a key, a token or a hash being replaced, before it is kept.

Entries are recorded by the role layer (erx_roles.acting), where the person acting is known: the
pages, the REST API, sign-in; never by the services.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from enum import StrEnum
from typing import Annotated, Iterator

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from erx_core.ids import CRED_DEF_ID_RE, UUID_RE, RecordId
from erx_core.staff import USERNAME_RE, StaffRole, Username
from erx_core.store import Store, TablePage

REASON_MAX = 200


class Via(StrEnum):
    PAGE = "page"  # signed in to the organisation's web page
    STAFF_TOKEN = "staff-token"  # a staff member's own API token
    OPERATOR_TOKEN = "operator-token"  # the organisation's operator token (for a named person, or for nobody)
    INTEGRATOR = "integrator"  # an integrator's token (for a named person, or for nobody)


class AuditAction(StrEnum):
    SIGNED_IN = "signed-in"
    SIGN_IN_FAILED = "sign-in-failed"
    SIGNED_OUT = "signed-out"
    ISSUED = "issued"
    REVOKED = "revoked"
    CHECKED = "checked"  # asked a wallet for a prescription, to check and dispense it
    DISPENSED = "dispensed"
    STAFF_ADDED = "staff-added"
    STAFF_DISABLED = "staff-disabled"
    STAFF_ENABLED = "staff-enabled"
    STAFF_PASSWORD_SET = "staff-password-set"
    STAFF_TOKEN_ISSUED = "staff-token-issued"
    STAFF_TOKEN_REVOKED = "staff-token-revoked"
    INTEGRATOR_ADDED = "integrator-added"
    INTEGRATOR_REMOVED = "integrator-removed"
    TRUST_SET = "trusted-prescriber-set"
    TRUST_REMOVED = "trusted-prescriber-removed"
    EXPORTED = "audit-exported"


class Outcome(StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not allowed, not possible in this state, or refused by the chain or the wallet
    FAILED = "failed"  # an upstream system did not answer, or an error


def outcome_of(status: int) -> Outcome:
    return Outcome.OK if status < 400 else Outcome.REFUSED if status < 500 else Outcome.FAILED


# -- what an entry may hold -----------------------------------------------------------------------------
_KNOWN_ID = [re.compile(rx) for rx in (USERNAME_RE, UUID_RE, CRED_DEF_ID_RE)]


def _known_id(value: str) -> str:
    if not any(rx.fullmatch(value) for rx in _KNOWN_ID):
        raise ValueError("a target is a username, a record id or a credential definition id")
    return value


_OUR_TOKENS = re.compile(r"erx[a-z]?_[A-Za-z0-9_-]+")
_LONG_HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{64,}")
_KEY_LIKE = re.compile(r"[A-Za-z0-9_+/=-]{32,}")
_UUID = re.compile(UUID_RE)
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")  # a chain account: public


def screened(text: str) -> str:
    """`text` without anything shaped like a secret: our tokens, 256-bit hex (a key, a hash), and any
    other unbroken run of 32 or more key characters (base64, hex) that is not a record id or an account; at most
    REASON_MAX characters."""
    text = _OUR_TOKENS.sub("[token]", text)
    text = _LONG_HEX.sub("[hex]", text)
    text = _KEY_LIKE.sub(lambda m: m[0] if _UUID.fullmatch(m[0]) or _ADDRESS.fullmatch(m[0]) else "[redacted]", text)
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 1] + "…"


Target = Annotated[str, AfterValidator(_known_id)]


def is_subject(field: str, value: object) -> bool:
    """Is `value` a valid `prescription_id`, `check_id` or `target` of an entry?"""
    if not isinstance(value, str):
        return False
    if field == "target":
        return any(rx.fullmatch(value) for rx in _KNOWN_ID)
    return field in ("prescription_id", "check_id") and bool(_UUID.fullmatch(value))
Reason = Annotated[str, AfterValidator(screened)]


class AuditEntry(BaseModel):
    """One thing a person (or a token acting for nobody) did. No field can hold a secret (see the module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entry_id: RecordId
    at: dt.datetime = Field(description="when (UTC)")
    username: Username | None = Field(default=None, description="the staff member; null: a token acting for nobody")
    role: StaffRole | None = None
    via: Via
    integrator_id: RecordId | None = Field(default=None, description="the integrator whose token was used")
    action: AuditAction
    prescription_id: RecordId | None = None
    check_id: RecordId | None = None
    target: Target | None = Field(default=None, description="what an administrative action was about: a staff "
                                  "member, an integrator, a credential definition")
    outcome: Outcome
    status: int = Field(ge=100, le=599, description="the HTTP status the action was answered with")
    reason: Reason | None = Field(default=None,
                                  description="why it was refused or failed, screened of anything like a secret")


COLUMNS = list(AuditEntry.model_fields)


class AuditLog:
    """The organisation's audit log, in its controller's store (table `audit`), newest first."""

    def __init__(self, store: Store):
        self._table = store.table("audit", AuditEntry, indexed=("prescription_id",))

    def record(self, **fields) -> AuditEntry:
        """Append an entry (`fields` as AuditEntry's, without `entry_id` and `at`)."""
        entry = AuditEntry(entry_id=str(uuid.uuid4()), at=dt.datetime.now(dt.UTC), **fields)
        self._table.put(entry.entry_id, entry)
        return entry

    def page(self, limit: int, after: str | None = None) -> TablePage[AuditEntry]:
        return self._table.page(limit, after=after)

    def of_prescription(self, prescription_id: str) -> list[AuditEntry]:
        return list(self._table.find_all("prescription_id", prescription_id))

    def entries(self, page_size: int = 500) -> Iterator[AuditEntry]:
        """Every entry, newest first, read a page at a time."""
        after = None
        while True:
            found = self.page(page_size, after)
            yield from found.items
            if (after := found.next) is None:
                return

    def export(self, fmt: str) -> Iterator[str]:
        """The whole log as CSV (a header line first) or JSON Lines, newest first, line by line."""
        if fmt == "jsonl":
            for entry in self.entries():
                yield json.dumps(entry.model_dump(mode="json"), separators=(",", ":")) + "\n"
            return
        if fmt != "csv":
            raise ValueError(f"unknown export format {fmt!r}")
        yield _csv_line(COLUMNS)
        for entry in self.entries():
            yield _csv_line(["" if v is None else v for v in entry.model_dump(mode="json").values()])


def _csv_line(values: list) -> str:
    out = io.StringIO()
    # a cell starting like a formula is kept as text by spreadsheets
    csv.writer(out, lineterminator="\n").writerow(
        "'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@") else v for v in values)
    return out.getvalue()
