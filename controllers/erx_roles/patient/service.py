"""The patient's wallet stand-in: a holder agent with a small controller.

It does what a mobile wallet's user does: open an invitation link (scanned QR code, long or short),
accept a credential offer, and answer a proof request revealing exactly what was asked. By default it
answers on its own (`auto_respond`, a per-agent setting), like a user tapping "accept" and "share";
with it off, offers and requests wait for `accept` / `approve` / `decline` through the wallet page or
the API, which show exactly what would be disclosed.

Which prescription to present is the user's choice: a credential may be named when opening the
invitation (the wallet's "share this prescription" flow); otherwise the newest matching one is used.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from erx_core.acapy_admin import (AdminApiError, AgentUnreachable, CredentialExchange, CredExState, PresentationExchange,
                                  PresExState, Topic)
from erx_core.events import Handler, Payload
from erx_roles.context import RoleContext
from erx_roles.errors import Conflict, InvalidRequest, not_found
from erx_roles.invitations import invitation_from_url
from erx_roles.patient.models import (Attribute, Candidate, HeldCredential, OfferView, OpenedInvitation, OpenInvitation,
                                      PredicateCheck, RequestView, WalletReceipt)
from erx_roles.receipts import check_receipt, receipt_id, receipt_in_message, summary

LOG = logging.getLogger("erx.patient")
ISSUE_TOPIC = "issue_credential_v2_0"
PROOF_TOPIC = "present_proof_v2_0"
MESSAGE_TOPIC = Topic.BASIC_MESSAGES.value  # a pharmacy's dispense receipt arrives as a basic message

TOKEN_KEY = "token_secret_key"
PICKUP_CODE = "pickup_code"  # the practice-signed code a representative redeems with: holds the token key too
NOT_LISTED = {TOKEN_KEY, PICKUP_CODE}
MASK = "•••••••• (one-time redemption key, masked)"
PICKUP_MASK = ("the practice's signed code for someone collecting for you: shown under “Pickup code for someone "
               "else” once stored")
DATE_ATTRIBUTES = {"patient_birth_date", "valid_from", "valid_until", "issue_date"}
SYMBOLS = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}


def readable(name: str, value: str) -> str:
    """An attribute value as people read it: YYYYMMDD dates as ISO dates."""
    if name in DATE_ATTRIBUTES and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def validity(attrs: dict[str, str], today: dt.date) -> dict[str, str]:
    """How long a held prescription can be redeemed, as the wallet tells its user: `state` (valid,
    not_yet_valid, expiring (3 days or less), expired) and a sentence."""
    try:
        start = dt.datetime.strptime(attrs["valid_from"], "%Y%m%d").date()
        end = dt.datetime.strptime(attrs["valid_until"], "%Y%m%d").date()
    except (KeyError, ValueError):
        return {"state": "unknown", "text": "validity unknown"}
    if today < start:
        return {"state": "not_yet_valid", "text": f"valid from {start.isoformat()} to {end.isoformat()}"}
    if today > end:
        return {"state": "expired", "text": f"expired on {end.isoformat()}"}
    left = (end - today).days
    return {"state": "expiring" if left <= 3 else "valid",
            "text": f"valid until {end.isoformat()} ({left} day{'s' if left != 1 else ''} left)" if left
            else f"valid until today ({end.isoformat()})"}


def predicate_statement(predicate: dict) -> str:
    name = predicate["name"]
    return (f"{name.replace('_', ' ')} {SYMBOLS.get(predicate['p_type'], predicate['p_type'])} "
            f"{readable(name, str(predicate['p_value']))}")


def disclosed(attrs: dict[str, str], names: list[str]) -> list[Attribute]:
    def attribute(name: str) -> Attribute:
        if name == TOKEN_KEY:
            return Attribute(name=name, value=MASK, masked=True)
        if name == PICKUP_CODE:  # it holds the token key too
            return Attribute(name=name, value=PICKUP_MASK if attrs.get(name) else "", masked=True)
        value = attrs.get(name, "")
        shown = readable(name, value)
        return Attribute(name=name, value=value, readable=shown if shown != value else "")
    return [attribute(n) for n in names]


def requested_names(request: dict) -> list[str]:
    names: list[str] = []
    for group in request.get("requested_attributes", {}).values():
        names += group.get("names") or [group["name"]]
    return names


def credential_title(attrs: dict[str, str]) -> str:
    medication = " ".join(v for v in (attrs.get("medication_name"), attrs.get("medication_strength"),
                                      attrs.get("medication_form")) if v)
    issued = readable("issue_date", attrs.get("issue_date", ""))
    return f"{medication or 'credential'}, issued {issued} by {attrs.get('prescriber_name', '?')}"


# a prescription id as practices issue them (a UUID); one that is not is searched for unnarrowed
PLAIN_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class PatientService:
    def __init__(self, ctx: RoleContext, auto_respond: bool = True):
        self.ctx = ctx
        self.auto_respond = auto_respond
        # invitation id or connection id -> credential the user chose to share there
        self._chosen: dict[str, str] = {}
        self.opened = ctx.store.table("opened_invitation", OpenedInvitation)
        self.receipts = ctx.store.table("receipt", WalletReceipt)

    def subscriptions(self) -> list[tuple[str, Handler]]:
        """The agent's events this wallet acts on (wired by `erx_roles.context.wire` at start-up)."""
        return [(ISSUE_TOPIC, self._on_issue_event), (PROOF_TOPIC, self._on_proof_event),
                (MESSAGE_TOPIC, self._on_message)]

    async def open_invitation(self, body: OpenInvitation) -> dict:
        invitation = await invitation_from_url(body.invitation_url)
        if body.credential_id:
            self._chosen[invitation.get("@id", "")] = body.credential_id
        self.opened.put(invitation.get("@id", ""), OpenedInvitation(
            invitation_id=invitation.get("@id", ""), label=str(invitation.get("label") or "unnamed")[:200]))
        try:
            record = await self.ctx.admin.receive_invitation(invitation)
        except AdminApiError as exc:
            raise InvalidRequest(f"the wallet could not use this invitation: {exc.reason}") from None
        return {"oob_id": record.get("oob_id"), "connection_id": record.get("connection_id"),
                "state": record.get("state"), "label": invitation.get("label")}

    async def _on_issue_event(self, topic: str, payload: Payload) -> None:
        state, cred_ex_id = payload.get("state"), payload.get("cred_ex_id")
        if state == "offer-received" and self.auto_respond:
            await self.ctx.admin.send_credential_request(cred_ex_id)
        elif state == "credential-received":  # only ever after the wallet (or its user) asked for it
            await self.ctx.admin.store_credential(cred_ex_id)

    async def _on_proof_event(self, topic: str, payload: Payload) -> None:
        if self.auto_respond and payload.get("state") == "request-received":
            await self.approve(payload["pres_ex_id"])

    async def approve(self, pres_ex_id: str, credential_id: str | None = None) -> dict:
        """Answer a proof request from one credential, revealing exactly the requested attributes."""
        record = await self.ctx.admin.presentation_exchange(pres_ex_id)
        request = record.request
        credential_id = (credential_id or self._chosen.pop(record.invitation_id, None)
                         or self._chosen.pop(record.connection_id or "", None))
        usable = await self._usable(pres_ex_id, request, credential_id)
        if not usable:
            await self.ctx.admin.problem_report(pres_ex_id, "no prescription in this wallet matches the request")
            return {"pres_ex_id": pres_ex_id, "state": "declined"}
        # the user's choice; otherwise, of the parts and prescriptions that answer, the newest one valid today
        predicates = list(request.get("requested_predicates", {}).values())
        chosen = usable[-1] if credential_id else max(usable, key=lambda c: (
            all(_satisfies(c.attrs, p) for p in predicates), c.attrs.get("issue_date", ""),
            -_part(c.attrs)))
        unmet = [p for p in request.get("requested_predicates", {}).values() if not _satisfies(chosen.attrs, p)]
        if unmet:
            # Say why, as a good wallet does: the verifier otherwise only learns "abandoned".
            text = ", ".join(f"{p['name']} {p['p_type']} {p['p_value']}" for p in unmet)
            await self.ctx.admin.problem_report(pres_ex_id, f"predicate not satisfied: {text}")
            return {"pres_ex_id": pres_ex_id, "state": "declined", "reason": f"predicate not satisfied: {text}"}
        presentation = {
            "requested_attributes": {r: {"cred_id": chosen.referent, "revealed": True}
                                     for r in request.get("requested_attributes", {})},
            "requested_predicates": {r: {"cred_id": chosen.referent}
                                     for r in request.get("requested_predicates", {})},
            "self_attested_attributes": {},
        }
        try:
            await self.ctx.admin.send_presentation(pres_ex_id, presentation)
        except AdminApiError as exc:
            LOG.warning("could not present %s: %s", pres_ex_id, exc.reason)
            await self.ctx.admin.problem_report(pres_ex_id, f"the wallet could not create the presentation: "
                                                            f"{exc.reason}")
            return {"pres_ex_id": pres_ex_id, "state": "declined", "reason": exc.reason}
        return {"pres_ex_id": pres_ex_id, "state": "presentation-sent", "credential_id": chosen.referent}

    async def _usable(self, pres_ex_id: str, request: dict, credential_id: str | None) -> list:
        """The held credentials that answer every referent of the request: the chosen one, judged from
        its own record where the request's restrictions are plain (no wallet search, whose cost grows
        with every credential the wallet holds); otherwise the agent's search, narrowed to the chosen
        prescription when there is a choice."""
        held = await self._held(credential_id) if credential_id else None
        if credential_id and held is None:
            return []  # the choice is not in this wallet
        if held is not None and (fits := answers(request, held)) is not None:
            return [held] if fits else []
        narrow = held.attrs.get("prescription_id", "") if held is not None else ""
        candidates = await self.ctx.admin.credentials_for_request(
            pres_ex_id, prescription_id=narrow if PLAIN_ID.fullmatch(narrow) else None)
        referents = set(request.get("requested_attributes", {})) | set(request.get("requested_predicates", {}))
        usable = [c.cred_info for c in candidates if referents <= set(c.presentation_referents)]
        return [c for c in usable if c.referent == credential_id] if credential_id else usable

    async def _held(self, credential_id: str):
        """The chosen credential; None if it is not in this wallet."""
        try:
            return await self.ctx.admin.credential(credential_id)
        except AdminApiError as exc:
            if isinstance(exc, AgentUnreachable) or exc.status >= 500:
                raise
            return None

    # -- the user decides (auto_respond off) ------------------------------------------------------
    async def _label(self, connection_id: str | None, invitation_id: str = "") -> str:
        if connection_id:
            try:
                return (await self.ctx.admin.connection(connection_id)).their_label or "unnamed connection"
            except AdminApiError:
                return "unknown connection"
        opened = self.opened.get(invitation_id) if invitation_id else None
        return opened.label if opened else "unknown (no connection)"

    async def offers(self) -> list[OfferView]:
        """Credential offers waiting for the user, newest first."""
        views = []
        for record in await self.ctx.admin.credential_exchanges(CredExState.OFFER_RECEIVED):
            preview = record.preview
            views.append(OfferView(
                cred_ex_id=record.cred_ex_id, issuer=await self._label(record.connection_id),
                comment=record.comment, created_at=record.created_at,
                attributes=disclosed(preview, list(preview))))
        return sorted(views, key=lambda v: v.created_at or "", reverse=True)

    @staticmethod
    async def _waiting(fetch, what: str, noun: str, state: str):
        """An exchange record that still waits for the user's answer: NotFound if unknown, Conflict if
        answered."""
        try:
            record = await fetch
        except AdminApiError as exc:
            if exc.status in (400, 404):
                raise not_found(what) from None
            raise
        if record.state != state:
            raise Conflict(f"the {noun} is {record.state}, no longer waiting for an answer")
        return record

    async def _offer(self, cred_ex_id: str) -> CredentialExchange:
        return await self._waiting(self.ctx.admin.credential_exchange(cred_ex_id), f"offer {cred_ex_id}", "offer",
                                   CredExState.OFFER_RECEIVED)

    async def accept_offer(self, cred_ex_id: str) -> dict:
        await self._offer(cred_ex_id)
        await self.ctx.admin.send_credential_request(cred_ex_id)  # stored when it arrives (_on_issue_event)
        return {"cred_ex_id": cred_ex_id, "state": "request-sent"}

    async def decline_offer(self, cred_ex_id: str, reason: str = "declined by the wallet's user") -> dict:
        await self._offer(cred_ex_id)
        await self.ctx.admin.decline_offer(cred_ex_id, reason)
        return {"cred_ex_id": cred_ex_id, "state": "declined"}

    async def requests(self) -> list[RequestView]:
        """Proof requests waiting for the user, each with every held credential that could answer it."""
        views = [await self._request_view(r)
                 for r in await self.ctx.admin.presentation_exchanges(PresExState.REQUEST_RECEIVED)]
        return sorted(views, key=lambda v: v.created_at or "", reverse=True)

    async def request_view(self, pres_ex_id: str) -> RequestView:
        record = await self._waiting(self.ctx.admin.presentation_exchange(pres_ex_id),
                                     f"proof request {pres_ex_id}", "request", PresExState.REQUEST_RECEIVED)
        return await self._request_view(record)

    async def _request_view(self, record: PresentationExchange) -> RequestView:
        request = record.request
        names = requested_names(request)
        predicates = list(request.get("requested_predicates", {}).values())
        referents = set(request.get("requested_attributes", {})) | set(request.get("requested_predicates", {}))
        candidates = []
        for c in await self.ctx.admin.credentials_for_request(record.pres_ex_id):
            if not referents <= set(c.presentation_referents):
                continue
            attrs = c.cred_info.attrs
            candidates.append(Candidate(
                credential_id=c.cred_info.referent, title=credential_title(attrs),
                issue_date=attrs.get("issue_date", ""),
                disclosed=disclosed(attrs, names),
                predicates=[PredicateCheck(statement=predicate_statement(p),
                                           yours=readable(p["name"], attrs.get(p["name"], "")),
                                           satisfied=_satisfies(attrs, p)) for p in predicates]))
        # newest first; a credential the user named when opening the invitation is preselected
        candidates.sort(key=lambda c: c.issue_date, reverse=True)
        named = self._chosen.get(record.invitation_id) or self._chosen.get(record.connection_id or "")
        chosen = named if any(c.credential_id == named for c in candidates) else \
            next((c.credential_id for c in candidates if c.usable), None)
        return RequestView(pres_ex_id=record.pres_ex_id, name=request.get("name", "proof request"),
                           verifier=await self._label(record.connection_id, record.invitation_id),
                           attribute_names=names, predicates=[predicate_statement(p) for p in predicates],
                           candidates=candidates, chosen=chosen, created_at=record.created_at)

    async def decline(self, pres_ex_id: str, reason: str = "declined by the wallet's user") -> dict:
        await self.request_view(pres_ex_id)  # NotFound / Conflict unless it is waiting for an answer
        await self.ctx.admin.problem_report(pres_ex_id, reason)
        return {"pres_ex_id": pres_ex_id, "state": "declined"}

    def choose(self, connection_id: str, credential_id: str) -> None:
        """Present this credential when the connection next asks for a prescription."""
        self._chosen[connection_id] = credential_id

    async def credentials(self, prescription_id: str | None = None) -> list[HeldCredential]:
        wql = {"attr::prescription_id::value": prescription_id} if prescription_id else None
        # The token's secret key stays in the wallet: nothing that lists credentials needs it.
        return [HeldCredential(credential_id=c.referent, cred_def_id=c.cred_def_id,
                               attributes={k: v for k, v in c.attrs.items() if k not in NOT_LISTED})
                for c in await self.ctx.admin.credentials(wql)]

    async def pickup_code(self, credential_id: str) -> str:
        """The code to hand to a representative: the practice's signed copy of this prescription with
        its token key. Whoever holds it can redeem the prescription (docs/paper-and-receipts.md)."""
        try:
            held = await self.ctx.admin.credential(credential_id)
        except AdminApiError as exc:
            if exc.status in (400, 404):
                raise not_found(f"credential {credential_id}") from None
            raise
        code = held.attrs.get(PICKUP_CODE, "")
        if not code:
            raise Conflict("this credential carries no pickup code")
        LOG.info("pickup code of credential %s shown to the wallet's user", credential_id)
        return code

    # -- dispense receipts ------------------------------------------------------------------------------
    async def _on_message(self, topic: str, payload: Payload) -> None:
        """A basic message: kept if it carries a dispense receipt (`erx-receipt:` + JWS), checked at once."""
        jws = receipt_in_message(payload.get("content"))
        if jws is None:
            return
        key = receipt_id(jws)
        if self.receipts.get(key) is not None:
            return  # the same receipt delivered again
        connection_id = payload.get("connection_id")
        held = WalletReceipt(receipt_id=key, jws=jws,
                             connection_id=connection_id if isinstance(connection_id, str) else None)
        self.receipts.put(key, await self._checked(held))
        LOG.info("dispense receipt %s received (%s)", key,
                 "verified" if held.verified else held.problem or "not checked yet")

    async def _checked(self, held: WalletReceipt) -> WalletReceipt:
        """`held` with the verdict of its signature against the signer DID's verkey on the Indy network; left
        unchecked (verified None) if the ledger could not be read."""
        try:
            found = await check_receipt(held.jws, self.ctx.admin.did_verkey)
        except AdminApiError as exc:  # unreachable or failing: nothing decided, checked again when listed
            LOG.warning("receipt %s not checked yet: %s", held.receipt_id,
                        "agent unreachable" if isinstance(exc, AgentUnreachable) else exc.reason[:200])
            return held
        held.verified, held.signer_did, held.problem, held.detail = (found.verified, found.signer_did,
                                                                     found.problem, found.detail)
        if found.receipt is not None:
            held.summary = summary(found.receipt)
            held.medication_dispense = found.receipt.medication_dispense
        return held

    async def held_receipts(self) -> list[WalletReceipt]:
        """The dispense receipts received, newest first; one not checked yet is checked now."""
        held = list(self.receipts.all())
        for index, receipt in enumerate(held):
            if receipt.verified is None:
                held[index] = self.receipts.put(receipt.receipt_id, await self._checked(receipt))
        return sorted(held, key=lambda r: r.received_at, reverse=True)


_COMPARE = {">=": int.__ge__, ">": int.__gt__, "<=": int.__le__, "<": int.__lt__}


# what ACA-Py's AnonCreds holder tags a credential with, from its own record
def _credential_tags(credential) -> dict[str, str] | None:
    schema = (credential.schema_id or "").split(":")
    if len(schema) != 4 or not credential.cred_def_id:
        return None
    tags = {"schema_id": credential.schema_id, "schema_issuer_did": schema[0], "schema_name": schema[2],
            "schema_version": schema[3], "cred_def_id": credential.cred_def_id,
            "issuer_did": credential.cred_def_id.split(":")[0]}
    tags.update({f"attr::{name.replace(' ', '')}::value": value for name, value in credential.attrs.items()})
    return tags


def answers(request: dict, credential) -> bool | None:
    """Does this held credential answer every referent of the proof request (its attribute names are
    there and it meets each referent's restrictions, any one of them)? None: the request uses a
    restriction this cannot judge (a WQL operator), and the agent's own search must decide."""
    tags = _credential_tags(credential)
    if tags is None:
        return None
    groups = list(request.get("requested_attributes", {}).values()) + \
        list(request.get("requested_predicates", {}).values())
    for group in groups:
        names = group.get("names") or [group.get("name", "")]
        if not all(f"attr::{n.replace(' ', '')}::value" in tags for n in names):
            return False
        restrictions = group.get("restrictions") or []
        if any(not isinstance(r, dict) or any(k.startswith("$") or not isinstance(v, str) for k, v in r.items())
               for r in restrictions):
            return None
        if restrictions and not any(all(tags.get(k) == v for k, v in r.items()) for r in restrictions):
            return False
    return True


def _part(attrs: dict[str, str]) -> int:
    """A therapy part's number; 1 for a prescription that is not one (or an issuer's odd value)."""
    value = attrs.get("therapy_part", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 6 else 1  # "²" is a digit


def _satisfies(attrs: dict[str, str], predicate: dict) -> bool:
    try:
        return _COMPARE[predicate["p_type"]](int(attrs[predicate["name"]]), int(predicate["p_value"]))
    except (KeyError, ValueError):
        return False
