"""People, not organisations: an organisation's staff accounts, their roles, and what each role may do.

A practice has prescribers, assistants and operators; a pharmacy has pharmacists, assistants and
operators. `may(role, action)` is the whole rule (docs/staff-and-audit.md has the table); the pages and
the REST API ask it before every action, and nothing else decides.

An account is kept in the controller's store (table `staff`, keyed by username): its password only as
an argon2id hash (argon2-cffi's defaults, RFC 9106), its personal API token only as a SHA-256 digest
(the token is 256 random bits: a fast digest is enough, and the lookup is by index), never the secret
itself. `epoch` goes up whenever the password changes or the account is disabled: a page session
started before that no longer counts.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from enum import StrEnum
from typing import Annotated, Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints, model_validator

from erx_core.store import Store, TablePage
from erx_schemas.prescription import Prescriber, Text

USERNAME_RE = r"^[a-z][a-z0-9._-]{1,29}$"  # at most 30: shorter than every secret erx generates
PROFESSIONAL_ID_RE = r"^[!-~]{1,60}$"  # as the credential's prescriber_id: printable ASCII, no spaces
Username = Annotated[str, StringConstraints(pattern=USERNAME_RE, max_length=30)]
ProfessionalId = Annotated[str, StringConstraints(pattern=PROFESSIONAL_ID_RE, max_length=60)]
_USERNAME = re.compile(USERNAME_RE)
PERSONAL_TOKEN_PREFIX = "erxs_"  # integrators' tokens start with erx_, the operator token has no prefix


class StaffRole(StrEnum):
    PRESCRIBER = "prescriber"
    ASSISTANT = "assistant"
    PHARMACIST = "pharmacist"
    OPERATOR = "operator"


class Action(StrEnum):
    """What a person does, as the pages and the REST API declare it per operation."""

    VIEW = "view"  # see prescriptions / checks, patients and customers, the event log
    CONNECT = "connect"  # connect a patient's (customer's) wallet
    ISSUE = "issue"
    REVOKE = "revoke"
    CHECK = "check"  # ask a wallet for a prescription and have it checked
    DISPENSE = "dispense"
    MANAGE_STAFF = "manage-staff"
    MANAGE_WEBHOOKS = "manage-webhooks"
    MANAGE_INTEGRATORS = "manage-integrators"
    MANAGE_TRUST = "manage-trust"  # the pharmacy's trusted prescribers
    AUDIT = "audit"  # read and export the audit log


ROLES: dict[str, tuple[StaffRole, ...]] = {
    "doctor": (StaffRole.PRESCRIBER, StaffRole.ASSISTANT, StaffRole.OPERATOR),
    "pharmacy": (StaffRole.PHARMACIST, StaffRole.ASSISTANT, StaffRole.OPERATOR),
}
_ADMINISTRATION = frozenset({Action.MANAGE_STAFF, Action.MANAGE_WEBHOOKS, Action.MANAGE_INTEGRATORS,
                             Action.MANAGE_TRUST, Action.AUDIT})
PERMISSIONS: dict[StaffRole, frozenset[Action]] = {
    StaffRole.PRESCRIBER: frozenset({Action.VIEW, Action.CONNECT, Action.ISSUE, Action.REVOKE}),
    # at a practice an assistant never meets CHECK (no such operation there); at a pharmacy it prepares
    # a dispense, and a pharmacist hands the medication over
    StaffRole.ASSISTANT: frozenset({Action.VIEW, Action.CONNECT, Action.CHECK}),
    StaffRole.PHARMACIST: frozenset({Action.VIEW, Action.CONNECT, Action.CHECK, Action.DISPENSE}),
    # operators run the organisation's systems; they see no patient's data
    StaffRole.OPERATOR: _ADMINISTRATION,
}
# done by a person or not at all: a token acting for nobody is refused (the prescription names its prescriber)
NEEDS_PERSON = frozenset({Action.ISSUE, Action.REVOKE, Action.DISPENSE})
ACTION_TEXT = {Action.VIEW: "see prescriptions and patients", Action.CONNECT: "connect wallets",
               Action.ISSUE: "issue prescriptions", Action.REVOKE: "revoke prescriptions",
               Action.CHECK: "ask for and check prescriptions", Action.DISPENSE: "dispense",
               Action.MANAGE_STAFF: "manage staff accounts", Action.MANAGE_WEBHOOKS: "manage webhooks",
               Action.MANAGE_INTEGRATORS: "manage integrators",
               Action.MANAGE_TRUST: "change the trusted prescribers", Action.AUDIT: "read the audit log"}


def a_role(role: StaffRole) -> str:
    """"a prescriber", "an assistant": for messages."""
    return f"{'an' if role[0] in 'aeiou' else 'a'} {role}"


def may(role: StaffRole, action: Action) -> bool:
    """May a staff member in `role` do `action`? The one rule: docs/staff-and-audit.md."""
    return action in PERMISSIONS[role]


def needs_person(action: Action) -> bool:
    """Must a named person do `action` (a token acting for nobody may not)?"""
    return action in NEEDS_PERSON


def roles_of(organisation_role: str) -> tuple[StaffRole, ...]:
    """The staff roles an organisation of this kind (doctor, pharmacy) has; none for a wallet."""
    return ROLES.get(organisation_role, ())


def is_username(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 30 and bool(_USERNAME.fullmatch(value))


# -- accounts ---------------------------------------------------------------------------------------------
class StaffCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username = Field(description="lower case letters, digits, `.`, `_`, `-`; 2–30, a letter first",
                               examples=["anna.schmidt"])
    display_name: Text = Field(min_length=1, max_length=200, examples=["Dr. Anna Schmidt"])
    role: StaffRole
    professional_id: ProfessionalId | None = Field(
        default=None, description="prescribers: the national physician number (printable ASCII, no spaces); "
                                  "every prescription they issue names it", examples=["123456789"])

    @model_validator(mode="after")
    def _prescribers_are_identified(self) -> StaffCreate:
        if self.role == StaffRole.PRESCRIBER and self.professional_id is None:
            raise ValueError("a prescriber needs a professional_id (e.g. the national physician number): "
                             "every prescription they issue names it")
        return self


class StaffMember(BaseModel):
    """A staff account as the API and pages show it: never its password hash or token digest."""

    username: Username
    display_name: str
    role: StaffRole
    professional_id: str | None = None
    disabled: bool = False
    created_at: float
    token_hint: str | None = Field(default=None, description="the personal API token's last four characters")

    def prescriber(self) -> Prescriber:
        """Who a prescription issued by this member names (only prescribers may issue)."""
        if self.role != StaffRole.PRESCRIBER or self.professional_id is None:
            raise ValueError(f"{self.username} is a {self.role}, not a prescriber")
        return Prescriber(name=self.display_name, identifier=self.professional_id)


class StoredStaff(StaffMember):
    password_hash: str
    token_sha256: str | None = None
    epoch: int = 0

    def public(self) -> StaffMember:
        return StaffMember(**self.model_dump(exclude={"password_hash", "token_sha256", "epoch"}))


class StaffSeed(StaffCreate):
    """An account the controller creates at start-up unless it exists (the dev-default accounts)."""

    password: SecretStr


# -- secrets ---------------------------------------------------------------------------------------------
_HASHER = PasswordHasher()
# verified against when the username is unknown, so that an unknown name costs what a wrong password costs
_UNKNOWN = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Constant work whatever is wrong (about 0.1 s of CPU: call it off the event loop)."""
    try:
        return _HASHER.verify(password_hash or _UNKNOWN, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_personal_token() -> str:
    return PERSONAL_TOKEN_PREFIX + secrets.token_urlsafe(32)


# -- the directory --------------------------------------------------------------------------------------------
class StaffError(ValueError):
    """A refusal of a staff change (the role layer maps each kind to its HTTP answer)."""


class UnknownStaff(StaffError):
    pass


class StaffExists(StaffError):
    pass


class RoleNotHere(StaffError):
    pass


class StaffDirectory:
    """The staff accounts of one organisation, read from the store on every use (a disabled account
    stops working at once, whichever process disabled it)."""

    def __init__(self, store: Store, organisation_role: str):
        self.organisation_role = organisation_role
        self.roles = roles_of(organisation_role)
        self._table = store.table("staff", StoredStaff, indexed=("token_sha256",))

    def get(self, username: str) -> StoredStaff | None:
        return self._table.get(username) if is_username(username) else None

    def member(self, username: str) -> StaffMember | None:
        found = self.get(username)
        return found.public() if found else None

    def active(self, username: str) -> StaffMember | None:
        """The member if the account exists and is enabled."""
        found = self.get(username)
        return found.public() if found is not None and not found.disabled else None

    def page(self, limit: int, after: str | None = None) -> TablePage[StaffMember]:
        found = self._table.page(limit, after=after)
        return TablePage(items=[s.public() for s in found.items], next=found.next, total=found.total)

    def all(self) -> list[StaffMember]:
        return [s.public() for s in self._table.all()]

    def add(self, account: StaffCreate, password: str) -> StaffMember:
        if account.role not in self.roles:
            raise RoleNotHere(f"a {self.organisation_role} has no {account.role}s; its roles are "
                              + ", ".join(self.roles))
        if self._table.get(account.username) is not None:
            raise StaffExists(f"there is already a staff member {account.username}")
        stored = StoredStaff(**account.model_dump(include=set(StaffCreate.model_fields)), created_at=time.time(),
                             password_hash=hash_password(password))
        self._table.put(stored.username, stored)
        return stored.public()

    def ensure(self, seeds: Iterable[StaffSeed]) -> list[str]:
        """Create each seeded account that does not exist yet (never changes one that does)."""
        created = []
        for seed in seeds:
            if seed.role in self.roles and self._table.get(seed.username) is None:
                self.add(seed, seed.password.get_secret_value())
                created.append(seed.username)
        return created

    def _change(self, username: str, **changes) -> StoredStaff:
        found = self.get(username)
        if found is None:
            raise UnknownStaff(f"no staff member {username}")
        updated = found.model_copy(update=changes)
        self._table.put(username, updated)
        return updated

    def set_disabled(self, username: str, disabled: bool) -> StaffMember:
        found = self.get(username)
        epoch = (found.epoch if found else 0) + (1 if disabled else 0)
        return self._change(username, disabled=disabled, epoch=epoch).public()

    def set_password(self, username: str, password: str) -> StaffMember:
        found = self.get(username)
        return self._change(username, password_hash=hash_password(password),
                            epoch=(found.epoch if found else 0) + 1).public()

    def new_token(self, username: str) -> tuple[StaffMember, str]:
        """A new personal API token (replacing the previous one), shown once."""
        token = new_personal_token()
        return self._change(username, token_sha256=token_digest(token), token_hint=token[-4:]).public(), token

    def drop_token(self, username: str) -> StaffMember:
        return self._change(username, token_sha256=None, token_hint=None).public()

    def by_token(self, token: str) -> StoredStaff | None:
        if not token.startswith(PERSONAL_TOKEN_PREFIX):
            return None
        return self._table.find("token_sha256", token_digest(token))


def dev_accounts(organisation_role: str, organisation: str) -> list[StaffCreate]:
    """The accounts `erx org init` (and `./erx up`) give an organisation for development and tests: an
    operator, and a prescriber or a pharmacist. Their passwords are random, in the organisation's secrets."""
    person = {"doctor": StaffCreate(username="prescriber", display_name="Dr. Dev Prescriber",
                                    role=StaffRole.PRESCRIBER, professional_id=f"DEV-{organisation.upper()}"),
              "pharmacy": StaffCreate(username="pharmacist", display_name="Dev Pharmacist",
                                      role=StaffRole.PHARMACIST)}.get(organisation_role)
    if person is None:
        return []
    return [person, StaffCreate(username="operator", display_name="Dev Operator", role=StaffRole.OPERATOR)]


def dev_person(organisation_role: str) -> str | None:
    """The dev-default account that does an organisation's everyday work (the demo and tests act as it)."""
    return {"doctor": "prescriber", "pharmacy": "pharmacist"}.get(organisation_role)
