"""Web pages served by each role's controller next to its JSON API: the doctor's practice, the
pharmacy counter and the patient's wallet stand-in (see `web` for sign-in, sessions and CSRF)."""

from __future__ import annotations

from aiohttp import web

from erx_roles.context import RoleContext
from erx_roles.pages.web import PageConfig, setup_pages

# what no agent event announces and the doctor's page shows: redemptions, read from the chain
DOCTOR_TICK_S = 5.0


def mount_pages(app: web.Application, ctx: RoleContext, service) -> None:
    """The role's page at `/` of its controller, and its invitations' short links at `/i/…`."""
    from erx_roles.pages.doctor import DoctorPages
    from erx_roles.pages.patient import PatientPages
    from erx_roles.pages.pharmacy import PharmacyPages

    agent = ctx.config
    config = PageConfig(agent=agent.name, role=agent.role, title=agent.label, password=agent.page_password,
                        secure_cookies=agent.public_url.startswith("https:"))
    live = setup_pages(app, config, agent.session_key, ctx.bus,
                       tick_s=DOCTOR_TICK_S if agent.role == "doctor" else None)
    links = ctx.links
    app.add_routes(links.routes())
    if agent.role == "doctor":
        app.add_routes(DoctorPages(service, links, live).routes())
    elif agent.role == "pharmacy":
        app.add_routes(PharmacyPages(service, links, live).routes())
    else:
        app.add_routes(PatientPages(service, live).routes())
