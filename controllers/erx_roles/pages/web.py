"""What the three web pages share: sign-in, encrypted session cookies, a CSRF token on every form,
security headers, server-rendered templates, field-level form errors and live updates.

- Sign-in: an organisation's staff sign in as themselves, username and password (erx_core.staff:
  argon2id hashes; an unknown name costs what a wrong password costs); the wallet's holder with the
  wallet's one password (`wallet-password:<agent>`, compared in constant time). A failed attempt costs
  a second, and is in the audit log.
- Sessions: Fernet-encrypted cookies (key `session-key:<agent>`), HttpOnly, SameSite=Strict, named per
  agent (cookies ignore ports, and all controllers share 127.0.0.1); the cookie expires after
  SESSION_MAX_AGE_S and the encryption refuses older ones. Signing in starts a fresh session. A staff
  session holds the username and role, and is checked against the account on every request: a
  disabled account, a changed password or role ends it.
- Permissions: every page handler declares what it does (`page_action`; undeclared: VIEW for a GET,
  refused otherwise) and the middleware asks `erx_core.staff.may` before it runs; actions that change
  something are recorded in the audit log (erx_roles.acting).
- CSRF: a random token per session, in a hidden field of every form, checked on every POST (and the
  Origin header, when the browser sends one, must be this page's).
- Live updates: `/events` streams server-sent events; the page re-fetches its fragments on each.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_session import Session, get_session, new_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from pydantic import BaseModel, SecretStr, ValidationError

from erx_core.audit import AuditAction, AuditLog, Via
from erx_core.events import EventBus, Payload
from erx_core.staff import (ACTION_TEXT, Action, StaffDirectory, StaffMember, StaffRole, a_role, may,
                            verify_password)
from erx_roles.acting import AUDIT_LOG, Who, audited, record, subject_of, who_signed_in
from erx_roles.errors import DomainError
from erx_roles.http import ApiError, http_error
from erx_schemas.prescription import Prescriber

LOG = logging.getLogger("erx.pages")
PACKAGE = Path(__file__).resolve().parents[1]
TEMPLATES, STATIC = PACKAGE / "templates", PACKAGE / "static"
SESSION_MAX_AGE_S = 8 * 3600
FAILED_SIGN_IN_DELAY_S = 1.0
# no sign-in needed: the sign-in form itself, styles and scripts, and invitations behind QR codes
PUBLIC_PREFIXES = ("/login", "/static/", "/i/")
NOT_PAGES = ("/api/", "/webhooks/", "/health")
SECURITY_HEADERS = {
    # no inline script or style: a value that slipped through escaping still cannot run
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on our own forms
    "Referrer-Policy": "same-origin",
}


class PageConfig(BaseModel):
    agent: str
    role: str
    title: str  # the organisation's or wallet's label
    password: SecretStr | None = None  # the wallet's one password; an organisation's staff sign in as themselves
    secure_cookies: bool = False  # plain http on loopback in development; True behind TLS


PAGE_CONFIG = web.AppKey("erx_page_config", PageConfig)
STAFF = web.AppKey("erx_staff", StaffDirectory)
ACTOR = web.RequestKey("erx_actor", StaffMember)  # the staff member signed in, on every page request
ANYONE = "anyone signed in"  # a page_action any signed-in member may use (sign out, live updates)


def page_action(action: Action | str, audit: AuditAction | None = None):
    """Declare what a page handler does: the middleware lets only staff whose role may (`may`) reach
    it, and with `audit` the action is recorded (who, on what, how it ended; erx_roles.acting).

        @page_action(Action.DISPENSE, audit=AuditAction.DISPENSED)
        async def dispense(self, request): ...
    """
    def declare(handler):
        if audit is not None:
            inner = handler

            @functools.wraps(inner)
            async def handler(*args):
                request: web.Request = args[-1]
                form = await request.post() if request.method == "POST" else {}
                member = request.get(ACTOR)
                who = who_signed_in(member) if member is not None else Who(via=Via.PAGE)
                return await audited(request.app.get(AUDIT_LOG), who, audit,
                                     subject_of(form, request.match_info), lambda: inner(*args),
                                     lambda response: response.status)
        handler.erx_action, handler.erx_audit = action, audit
        return handler
    return declare


def required_action(request: web.Request) -> Action | str | None:
    """What the matched handler declared (`page_action`); undeclared: VIEW for GET, None (refused) otherwise."""
    declared = getattr(request.match_info.handler, "erx_action", None)
    if declared is not None:
        return declared
    return Action.VIEW if request.method in ("GET", "HEAD") else None


def acting_prescriber(request: web.Request) -> Prescriber | None:
    """Who a prescription issued from this page names: the prescriber signed in."""
    member = request.get(ACTOR)
    return member.prescriber() if member is not None and member.role == StaffRole.PRESCRIBER else None


def landing(member: StaffMember | None) -> str:
    """Where a member starts: the organisation's page, or (operators, who see no patient's data) staff."""
    return "/" if member is None or may(member.role, Action.VIEW) else "/staff"


def is_page(path: str) -> bool:
    return not path.startswith(NOT_PAGES)


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)


def setup_pages(app: web.Application, config: PageConfig, session_key: SecretStr, bus: EventBus,
                tick_s: float | None = None, staff: StaffDirectory | None = None,
                audit: AuditLog | None = None) -> LiveHub:
    """Templates, sessions, sign-in, CSRF, security headers and the live event stream for one page.
    With `staff`, an organisation's members sign in as themselves; without, the wallet's holder with
    `config.password`."""
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    env.globals.update(page=config.model_dump(include={"agent", "role", "title"}))
    env.filters["when"] = _when
    app[PAGE_CONFIG] = config
    if staff is not None:
        app[STAFF] = staff
    if audit is not None and AUDIT_LOG not in app:
        app[AUDIT_LOG] = audit
    storage = EncryptedCookieStorage(
        session_key.get_secret_value(), cookie_name=f"erx_session_{config.agent.replace('-', '_')}",
        max_age=SESSION_MAX_AGE_S, httponly=True, samesite="Strict", secure=config.secure_cookies)
    app.middlewares.append(session_middleware(storage))
    app.middlewares.append(page_middleware)
    app.on_response_prepare.append(_security_headers)
    hub = LiveHub(bus, tick_s)

    async def close_streams(_: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(close_streams)
    app.add_routes([web.get("/login", login_form), web.post("/login", login), web.post("/logout", logout),
                    web.get("/events", hub.stream), web.static("/static", STATIC)])
    return hub


# -- rendering -------------------------------------------------------------------------------------
def _who(request: web.Request) -> dict[str, Any]:
    """What every template knows of the person signed in: `actor`, and `may("issue")`."""
    actor = request.get(ACTOR)
    staff_mode = STAFF in request.app
    return {"actor": actor, "may": lambda action: (not staff_mode) or (
        actor is not None and may(actor.role, Action(action)))}


async def render(request: web.Request, template: str, context: dict[str, Any] | None = None,
                 status: int = 200) -> web.Response:
    session = await get_session(request)
    context = {"csrf_token": csrf_token(session), "flashes": session.pop("flashes", []),
               "signed_in": _signed_in(request, session), **_who(request), **(context or {})}
    return aiohttp_jinja2.render_template(template, request, context, status=status)


async def fragment(request: web.Request, template: str, context: dict[str, Any]) -> web.Response:
    """A part of a page, re-fetched by the page's script when something changed."""
    session = await get_session(request)
    return aiohttp_jinja2.render_template(template, request, {"csrf_token": csrf_token(session), **_who(request),
                                                              **context})


async def flash(request: web.Request, message: str, kind: str = "ok") -> None:
    """A message shown once, on the next page (post/redirect/get)."""
    session = await get_session(request)
    session["flashes"] = [*session.get("flashes", []), {"kind": kind, "text": message}]


def see_other(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def _when(timestamp: float | str | None) -> str:
    if timestamp is None or timestamp == "":
        return ""
    if isinstance(timestamp, str):  # ACA-Py's ISO times
        return timestamp.replace("T", " ")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


# -- forms -----------------------------------------------------------------------------------------
def field_errors(exc: ValidationError) -> dict[str, str]:
    """pydantic's errors as one message per form field ("form" for errors that belong to no field)."""
    errors: dict[str, str] = {}
    for e in exc.errors(include_url=False, include_input=False):
        name = "_".join(str(p) for p in e["loc"])
        errors.setdefault(name or "form", e["msg"].removeprefix("Value error, "))
    return errors


def text_fields(form) -> dict[str, str]:
    """A submitted form's values, stripped; empty fields are left out (pydantic then says "required")."""
    return {k: v.strip() for k, v in form.items() if isinstance(v, str) and v.strip() and not k.startswith("_")}


# -- sessions, sign-in, CSRF ---------------------------------------------------------------------------
def signed_in(session: Session) -> bool:
    """Signed in, and not longer ago than a working day: a used session is renewed by its cookie,
    but never beyond SESSION_MAX_AGE_S after the password was given."""
    return bool(session.get("signed_in")) and time.time() - session.get("since", 0) < SESSION_MAX_AGE_S


def session_member(staff: StaffDirectory, session: Session) -> StaffMember | None:
    """The member a staff session is of, if it still counts: signed in within the working day, the account
    there and enabled, with the role and the password (`epoch`) the session began with."""
    if not signed_in(session) or not isinstance(session.get("username"), str):
        return None
    account = staff.get(session["username"])
    if account is None or account.disabled or account.role != session.get("role") \
            or account.epoch != session.get("epoch"):
        return None
    return account.public()


def _signed_in(request: web.Request, session: Session) -> bool:
    return ACTOR in request if STAFF in request.app else signed_in(session)


def csrf_token(session: Session) -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never an open redirect."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_form(request: web.Request) -> web.Response:
    session = await get_session(request)
    if _signed_in(request, session):
        raise see_other(_after_sign_in(request.get(ACTOR), request.query.get("next")))
    return await render(request, "login.html", {"next": _safe_next(request.query.get("next")), "form": {}})


def _after_sign_in(member: StaffMember | None, target: str | None) -> str:
    target = _safe_next(target)
    return landing(member) if target == "/" else target


async def login(request: web.Request) -> web.Response:
    config = request.app[PAGE_CONFIG]
    form = await request.post()
    target = str(form.get("next", ""))
    staff = request.app.get(STAFF)
    if staff is None:  # the wallet: one password
        expected = config.password.get_secret_value().encode() if config.password else b""
        if not expected or not hmac.compare_digest(str(form.get("password", "")).encode(), expected):
            return await _failed_sign_in(request, target, {}, "wrong password")
        session = await new_session(request)  # a fresh session (and CSRF token): no fixation
        session.update(signed_in=True, since=time.time())
        csrf_token(session)
        LOG.info("signed in to the %s page from %s", config.agent, request.remote)
        raise see_other(_safe_next(target))

    username = str(form.get("username", "")).strip().lower()
    account = staff.get(username)
    # the hash is checked off the event loop, also for an unknown name (against a stand-in hash)
    correct = await asyncio.to_thread(verify_password, account.password_hash if account else None,
                                      str(form.get("password", "")))
    log = request.app.get(AUDIT_LOG)
    if account is None or not correct:
        if account is not None:  # what was typed as a name is not kept unless it is one (it may be a password)
            record(log, who_signed_in(account.public()), AuditAction.SIGN_IN_FAILED, {}, 401, "wrong password")
        return await _failed_sign_in(request, target, {"username": username if account else ""},
                                     "wrong username or password")
    if account.disabled:
        record(log, who_signed_in(account.public()), AuditAction.SIGN_IN_FAILED, {}, 403, "the account is disabled")
        return await render(request, "login.html", {"next": _safe_next(target), "form": {"username": username},
                                                     "errors": {"username": "This account is disabled; ask your "
                                                                "organisation's operator."}}, status=403)
    session = await new_session(request)  # a fresh session (and CSRF token): no fixation
    session.update(signed_in=True, since=time.time(), username=account.username, role=str(account.role),
                   epoch=account.epoch)
    csrf_token(session)
    record(log, who_signed_in(account.public()), AuditAction.SIGNED_IN, {}, 303)
    LOG.info("%s (%s) signed in to the %s page from %s", account.username, account.role, config.agent, request.remote)
    raise see_other(_after_sign_in(account.public(), target))


async def _failed_sign_in(request: web.Request, target: str, form: dict[str, str], message: str) -> web.Response:
    LOG.warning("failed sign-in to the %s page from %s", request.app[PAGE_CONFIG].agent, request.remote)
    await asyncio.sleep(FAILED_SIGN_IN_DELAY_S)
    return await render(request, "login.html", {"next": _safe_next(target), "form": form,
                                                 "errors": {"password": message}}, status=401)


async def logout(request: web.Request) -> web.Response:
    if (member := request.get(ACTOR)) is not None:
        record(request.app.get(AUDIT_LOG), who_signed_in(member), AuditAction.SIGNED_OUT, {}, 303)
    (await get_session(request)).invalidate()
    raise see_other("/login")


logout.erx_action = ANYONE  # type: ignore[attr-defined]


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"


@web.middleware
async def page_middleware(request: web.Request, handler):
    """Sign-in and CSRF for the pages; errors as a page with a reason, never a stack trace."""
    if not is_page(request.path):
        return await handler(request)
    try:
        session = await get_session(request)
        if request.method == "POST":
            form = await request.post()
            expected = session.get("csrf", "")
            given = str(form.get("_csrf", "") or request.headers.get("X-CSRF-Token", ""))
            if not expected or not hmac.compare_digest(given.encode(), expected.encode()) or not _same_origin(request):
                LOG.warning("refused a %s %s without a valid CSRF token", request.method, request.path)
                return await _error(request, 403, "This form has expired or was not sent from this page. "
                                                  "Reload the page and try again.")
        staff = request.app.get(STAFF)
        if staff is not None and signed_in(session):
            member = session_member(staff, session)
            if member is None:  # disabled, password or role changed, or the account is gone
                session.invalidate()
            else:
                request[ACTOR] = member
        if not is_public(request.path) and not _signed_in(request, session):
            if request.method == "GET" and request.match_info.http_exception is None and \
                    not request.path.startswith(("/fragments/", "/events")):
                raise see_other(f"/login?next={quote(request.path_qs, safe='')}")
            if request.match_info.http_exception is None:
                return await _error(request, 401, "Please sign in again.")
        if staff is not None and ACTOR in request and not is_public(request.path) \
                and request.match_info.http_exception is None:
            await _require(request, request[ACTOR])
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return await _error(request, exc.status, exc.text if exc.text and not exc.text.startswith(str(exc.status))
                            else exc.reason)
    except ApiError as exc:
        return await _error(request, exc.status, exc.reason)
    except DomainError as exc:  # a service's refusal: its HTTP status (erx_roles.http), its reason
        return await _error(request, http_error(exc).status, exc.reason)
    except Exception:
        LOG.exception("unhandled error in %s %s", request.method, request.path)
        return await _error(request, 500, "Something went wrong; the controller's log says what.")


async def _require(request: web.Request, member: StaffMember) -> None:
    """Refuse (403, with the reason) what the member's role may not do; an operator opening the page of
    patients' data is shown the staff page instead."""
    action = required_action(request)
    if action == ANYONE or (isinstance(action, Action) and may(member.role, action)):
        return
    if request.method == "GET" and request.path == "/":
        raise see_other(landing(member))
    reason = (f"{a_role(member.role).capitalize()} may not {ACTION_TEXT[action]}." if isinstance(action, Action)
              else "This page action declares no permission (erx_roles.pages.web.page_action).")
    if (audit := getattr(request.match_info.handler, "erx_audit", None)) is not None:
        form = await request.post() if request.method == "POST" else {}
        record(request.app.get(AUDIT_LOG), who_signed_in(member), audit, subject_of(form, request.match_info),
               403, reason)
    raise ApiError(403, reason)


async def _error(request: web.Request, status: int, message: str) -> web.Response:
    return await render(request, "error.html", {"status": status, "message": message}, status=status)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if is_page(request.path):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.path.startswith(("/static/", "/i/")):
            response.headers.setdefault("Cache-Control", "no-store")


# -- live updates ----------------------------------------------------------------------------------------
class LiveHub:
    """Fans the agent's events out to every open page as server-sent events.

    The page does not need the event's content (it may hold personal data): each event only says
    "something changed", and the page re-fetches its fragments, which are authorised like pages.
    """

    KEEPALIVE_S = 15.0

    def __init__(self, bus: EventBus, tick_s: float | None = None):
        self._queues: set[asyncio.Queue[str | None]] = set()
        self._tick_s = tick_s  # for what no event announces (e.g. redemptions on the chain)
        self._closing = False
        bus.subscribe("*", self._on_event)  # after the services: they have recorded the change by now

    async def _on_event(self, topic: str, payload: Payload) -> None:
        self.notify(topic)

    def notify(self, what: str = "changed") -> None:
        for queue in list(self._queues):
            if queue.full():
                continue  # a stalled page gets one refresh anyway
            queue.put_nowait(what)

    async def close(self) -> None:
        self._closing = True
        for queue in list(self._queues):
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)

    @page_action(ANYONE)
    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        await response.prepare(request)
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=32)
        self._queues.add(queue)
        try:
            await response.write(b"retry: 2000\ndata: hello\n\n")
            wait = min(self.KEEPALIVE_S, self._tick_s or self.KEEPALIVE_S)
            while not self._closing:
                try:
                    what = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    what = "tick" if self._tick_s else ""
                if what is None:
                    break
                await response.write(f"data: {what}\n\n".encode() if what else b": keepalive\n\n")
        except ConnectionResetError:  # the page was closed
            pass
        finally:
            self._queues.discard(queue)
        return response

