"""Identifiers that cross a boundary: their formats, once.

Every id that reaches an agent's admin API, a URL or a query is one of these types. Requests are
validated against them at the API boundary (422 with the field named), and the agent port checks them
again before it builds a path, so a value such as `../shutdown` can never become a path of its own.
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import quote

from pydantic import StringConstraints

_B58 = "[1-9A-HJ-NP-Za-km-z]"
UUID_RE = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
INDY_DID_RE = rf"^{_B58}{{21,22}}$"
_TAG = r"[A-Za-z0-9._-]{1,64}"
SCHEMA_ID_RE = rf"^{_B58}{{21,22}}:2:[A-Za-z0-9._-]{{1,64}}:[0-9.]{{1,16}}$"
CRED_DEF_ID_RE = rf"^{_B58}{{21,22}}:3:CL:[0-9]{{1,12}}:{_TAG}$"
REV_REG_ID_RE = rf"^{_B58}{{21,22}}:4:{_B58}{{21,22}}:3:CL:[0-9]{{1,12}}:{_TAG}:CL_ACCUM:{_TAG}$"
CRED_REV_ID_RE = r"^[0-9]{1,12}$"  # ASCII digits: \d would match any script

# ACA-Py's record ids (connections, exchanges, out-of-band records, wallet credentials) are UUIDs;
# so are the controllers' own record ids (prescriptions, checks, integrators, subscriptions).
RecordId = Annotated[str, StringConstraints(pattern=UUID_RE, max_length=36)]
IndyDid = Annotated[str, StringConstraints(pattern=INDY_DID_RE, max_length=22)]
SchemaId = Annotated[str, StringConstraints(pattern=SCHEMA_ID_RE, max_length=160)]
CredDefId = Annotated[str, StringConstraints(pattern=CRED_DEF_ID_RE, max_length=160)]
RevRegId = Annotated[str, StringConstraints(pattern=REV_REG_ID_RE, max_length=260)]
CredRevId = Annotated[str, StringConstraints(pattern=CRED_REV_ID_RE, max_length=12)]

TOKEN_RE = r"^[A-Za-z0-9._:-]{1,160}$"  # any other id: no separators, no escapes, bounded
PATTERNS = {"token": TOKEN_RE, "record": UUID_RE, "cred_def": CRED_DEF_ID_RE, "rev_reg": REV_REG_ID_RE, "cred_rev": CRED_REV_ID_RE,
            "schema": SCHEMA_ID_RE, "did": INDY_DID_RE}
MAX_LENGTH = {"token": 160, "record": 36, "cred_def": 160, "rev_reg": 260, "cred_rev": 12, "schema": 160, "did": 22}
_COMPILED = {name: re.compile(rx) for name, rx in PATTERNS.items()}


class InvalidId(ValueError):
    def __init__(self, kind: str, value: object):
        shown = repr(value)[:60] + ("…" if len(repr(value)) > 60 else "")
        super().__init__(f"not a valid {kind} id: {shown}")
        self.kind = kind


def is_valid(kind: str, value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_LENGTH[kind] and bool(_COMPILED[kind].fullmatch(value))


def checked(kind: str, value: object) -> str:
    """`value` if it is a valid id of `kind` (record, cred_def, rev_reg, cred_rev, schema, did)."""
    if not is_valid(kind, value):
        raise InvalidId(kind, value)
    return value  # type: ignore[return-value]


def segment(kind: str, value: object) -> str:
    """One path segment: a valid id, percent-encoded (nothing in it can act as a separator)."""
    return quote(checked(kind, value), safe="")
