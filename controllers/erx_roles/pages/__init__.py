"""Web pages served by each role's controller next to its JSON API: the doctor's practice, the
pharmacy counter and the patient's wallet stand-in (see `web` for sign-in, sessions and CSRF)."""

from __future__ import annotations

from aiohttp import web

from erx_core.audit import AuditLog
from erx_core.staff import StaffDirectory
from erx_roles.context import RoleContext
from erx_roles.pages.web import PageConfig, setup_pages

# what no agent event announces and the doctor's page shows: redemptions, read from the chain
DOCTOR_TICK_S = 5.0


def mount_pages(app: web.Application, ctx: RoleContext, service, staff: StaffDirectory | None = None,
                audit: AuditLog | None = None) -> None:
    """The role's page at `/` of its controller, and its invitations' short links at `/i/…`; for an
    organisation (`staff`) its staff's sign-in, the staff page and the audit log."""
    from erx_roles.pages.doctor import DoctorPages
    from erx_roles.pages.patient import PatientPages
    from erx_roles.pages.pharmacy import PharmacyPages
    from erx_roles.pages.staff import StaffPages

    agent = ctx.config
    config = PageConfig(agent=agent.name, role=agent.role, title=agent.label,
                        password=agent.page_password if staff is None else None,
                        secure_cookies=agent.public_url.startswith("https:"))
    live = setup_pages(app, config, agent.session_key, ctx.bus,
                       tick_s=DOCTOR_TICK_S if agent.role == "doctor" else None, staff=staff, audit=audit)
    links = ctx.links
    app.add_routes(links.routes())
    if staff is not None and audit is not None:
        app.add_routes(StaffPages(staff, audit).routes())
    if agent.role == "doctor":
        app.add_routes(DoctorPages(service, links, live).routes())
    elif agent.role == "pharmacy":
        app.add_routes(PharmacyPages(service, links, live).routes())
    else:
        app.add_routes(PatientPages(service, live).routes())
