"""Run one role's controller: its agent's webhooks in, its JSON API and web page out.

    python -m erx_roles.serve --config <organisation home>/controller.json

`erx org up` starts one per organisation. The configuration file (`erx_core.config.ControllerConfig`,
mode 0600) is written by the organisation's deployment: it names this controller's agent, its own
secrets and the network's public facts, and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from aiohttp import web

from erx_core.audit import AuditLog
from erx_core.events import webhook_routes
from erx_core.config import ControllerConfig
from erx_core.staff import StaffDirectory
from erx_roles.acting import AUDIT_LOG, watch
from erx_roles.context import RoleContext, wire
from erx_roles.doctor import DoctorService, doctor_api
from erx_roles.http import PRESCRIBING_RULES, api_middlewares, json_response
from erx_roles.integrators import Integrators
from erx_roles.pages import mount_pages
from erx_roles.patient import PatientService, patient_routes
from erx_roles.pharmacy import PharmacyService, pharmacy_api
from erx_roles.staff_api import Access, StaffApi
from erx_roles.webhook_api import WebhookApi

LOG = logging.getLogger("erx.controller")
# the services' methods people act through: each call is recorded by who, on what, how it ended
AUDITED_CALLS = {"doctor": ("issue", "issue_therapy", "print_paper", "revoke"),
                 "pharmacy": ("request", "check_pickup_code", "dispense")}


async def build_app(config: ControllerConfig) -> web.Application:
    ctx = await RoleContext.open(config)
    role, agent_name = config.role, config.name
    service: DoctorService | PharmacyService | PatientService
    if role == "doctor":
        service = DoctorService(ctx)
        cred_def_id = await service.onboard()
        LOG.info("doctor onboarded: credential definition %s", cred_def_id)
        if settled := await service.recover():
            LOG.info("settled %d offer(s) answered while the controller was down", len(settled))
    elif role == "pharmacy":
        service = PharmacyService(ctx)
        if finished := await service.recover():
            LOG.info("finished %d check(s) left open by a restart", len(finished))
    else:
        service = PatientService(ctx, auto_respond=config.auto_respond)

    async def health(_: web.Request) -> web.Response:
        # records start-up recovery set aside: the controller runs, the operator has to look at them
        attention = {**getattr(service, "needs_attention", {}), **ctx.store.unreadable()}
        return json_response({"status": "ok", "role": role, "agent": agent_name, "needs_attention": attention})

    operator_token = config.operator_token
    base_url = config.public_url
    staff, audit, act_for = None, None, None
    if isinstance(service, PatientService):
        # the wallet stand-in is not an organisation: no integrators, one token (the wallet owner's)
        routes, public_paths = patient_routes(service), set
        authenticate = Integrators(ctx.store, operator_token).operator_only
    else:
        # people, not organisations: staff accounts (the dev-default ones seeded from the config), the audit
        # log of what they do, and the service calls it records (erx_roles.acting)
        staff, audit = StaffDirectory(ctx.store, role), AuditLog(ctx.store)
        if created := staff.ensure(config.staff):
            LOG.info("created staff account(s) %s", ", ".join(created))
        watch(service, *AUDITED_CALLS[role])
        integrators = Integrators(ctx.store, operator_token)
        access = Access(integrators, staff)
        api = doctor_api(service) if isinstance(service, DoctorService) else pharmacy_api(service)
        api.include(integrators.api())
        api.include(WebhookApi(ctx.outbox, ctx.store, integrators).api())
        api.include(StaffApi(staff, audit).api())
        api.title = f"erx {role} controller ({config.label})"
        api.description = API_DESCRIPTION[role]
        routes, public_paths, authenticate = api.routes(base_url), api.public_paths, access.authenticate
        act_for = access.act_for

    # aiohttp's own body limit (1 MiB) stays for every route (forms are read before sign-in is checked); the
    # API's scan upload streams its body up to documents.MAX_UPLOAD_BYTES itself
    app = web.Application(middlewares=api_middlewares(authenticate, public_paths, act_for))
    if audit is not None:
        app[AUDIT_LOG] = audit
    # Event subscriptions, all wired here (no agent event arrives before the app serves its webhook routes).
    # The service's handlers first: the pages' live updates (subscribed by mount_pages) then tell a page
    # of an event only once the service has recorded what it changed.
    wire(service, ctx.bus)
    app[PRESCRIBING_RULES] = config.prescribing
    app.add_routes(webhook_routes(ctx.bus, config.agent.webhook_key))
    app.add_routes([web.get("/health", health), *routes])
    mount_pages(app, ctx, service, staff=staff, audit=audit)
    app["service"] = service

    async def background(_: web.Application):
        await ctx.outbox.start()
        housekeeping = asyncio.create_task(service.expire_stale_forever()) \
            if isinstance(service, (PharmacyService, DoctorService)) else None
        yield
        if housekeeping is not None:
            housekeeping.cancel()
        if isinstance(service, DoctorService):
            await service.tokens.close()  # what is journaled is finished after the restart
        await ctx.close()

    app.cleanup_ctx.append(background)
    return app


API_DESCRIPTION = {
    "doctor": "Issue prescriptions into patients' wallets (AnonCreds) backed by a redemption token on chain; "
              "revoke them; follow them through webhooks. FHIR R4 MedicationRequest in. See docs/integrators.md.",
    "pharmacy": "Ask for a prescription (QR code or connection), verify it, dispense it by spending its token; "
                "trusted prescribers; webhooks; FHIR R4 MedicationDispense out. See docs/integrators.md.",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="the organisation's controller.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = ControllerConfig.load(args.config)
    web.run_app(build_app(config), host=config.host, port=config.port, print=None)


if __name__ == "__main__":
    main()
