"""Out-of-band invitations as links and QR codes.

An invitation URL carries the whole invitation (`?oob=` base64url JSON): with a proof request attached
it is far too long for a QR code a phone camera reads reliably. So each controller keeps its
invitations under short links, `/i/{short_id}` (the pattern of Aries RFC 0434): a wallet that asks
with `Accept: application/json` gets the invitation itself; anything else is redirected to the long
URL. Short links are stored in the controller's records, so a printed QR code survives a restart.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from urllib.parse import parse_qs, urljoin, urlparse

import aiohttp
import qrcode
import qrcode.image.svg
from aiohttp import web
from pydantic import BaseModel, Field

from erx_core.store import Store
from erx_roles.errors import InvalidRequest

MAX_INVITATION_BYTES = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)


def decode_invitation(url: str) -> dict:
    """The out-of-band invitation carried in an invitation URL (`?oob=` base64url JSON)."""
    query = parse_qs(urlparse(url).query)
    encoded = (query.get("oob") or query.get("c_i") or [None])[0]
    if not encoded:
        raise InvalidRequest("not an invitation link: no ?oob= parameter")
    try:
        invitation = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (ValueError, json.JSONDecodeError):
        raise InvalidRequest("the invitation link's ?oob= parameter is not base64url JSON") from None
    return _as_invitation(invitation)


def _as_invitation(doc) -> dict:
    if not isinstance(doc, dict) or "invitation" not in str(doc.get("@type", "")):
        raise InvalidRequest("the link does not carry an out-of-band invitation")
    return doc


def carries_invitation(url: str) -> bool:
    query = parse_qs(urlparse(url).query)
    return bool(query.get("oob") or query.get("c_i"))


async def fetch_invitation(url: str, timeout_s: float = 10.0) -> dict:
    """The invitation behind a short link: asked for as JSON; a redirect to the long URL works too."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InvalidRequest("not an invitation link: expected an http(s) URL")
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
            async with http.get(url, headers={"Accept": "application/json"}, allow_redirects=False) as resp:
                if resp.status in REDIRECTS and resp.headers.get("Location"):
                    return decode_invitation(urljoin(url, resp.headers["Location"]))
                if resp.status != 200 or resp.content_type != "application/json":
                    raise InvalidRequest(f"the link did not lead to an invitation (HTTP {resp.status}, "
                                         f"{resp.content_type or 'no content type'})")
                body = await resp.content.read(MAX_INVITATION_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise InvalidRequest(f"could not fetch the invitation from {parsed.netloc}: "
                             f"{exc or type(exc).__name__}") from None
    if len(body) > MAX_INVITATION_BYTES:
        raise InvalidRequest("the invitation behind the link is too large")
    try:
        return _as_invitation(json.loads(body))
    except json.JSONDecodeError:
        raise InvalidRequest("the link's answer is not JSON") from None


async def invitation_from_url(url: str) -> dict:
    """A long invitation URL is decoded locally; a short one is fetched from where it points."""
    url = url.strip()
    return decode_invitation(url) if carries_invitation(url) else await fetch_invitation(url)


def qr_svg(text: str) -> bytes:
    """A QR code as SVG: medium error correction and the standard 4-module quiet zone, so cameras and
    zbarimg read it from a screen."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4,
                         image_factory=qrcode.image.svg.SvgPathImage)
    code.add_data(text)
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image().save(out)
    return out.getvalue()


def qr_png(text: str) -> bytes:
    """The same QR code as a PNG, for systems that print or embed images."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4, box_size=8)
    code.add_data(text)
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image().save(out, format="PNG")
    return out.getvalue()


class QrLinks(BaseModel):
    """What to show a wallet: a short link that fits a QR code, and that QR code as images."""

    short_url: str = Field(description="a short link to the invitation (RFC 0434): put this in the QR code")
    qr_svg_url: str = Field(description="the QR code of `short_url` as SVG")
    qr_png_url: str = Field(description="the QR code of `short_url` as PNG")


class ShortLink(BaseModel):
    short_id: str
    ref: str  # what the link stands for: an invitation's id
    invitation_url: str
    created_at: float = Field(default_factory=time.time)


class _Ref(BaseModel):
    short_id: str


class ShortLinks:
    def __init__(self, store: Store, base_url: str):
        self.base_url = base_url.rstrip("/")
        self._links = store.table("short_link", ShortLink)
        self._by_ref = store.table("short_link_ref", _Ref)

    def create(self, ref: str, invitation_url: str) -> ShortLink:
        """The short link for `ref` (created once; asking again returns the same link)."""
        if existing := self.for_ref(ref):
            return existing
        link = self._links.put(short_id := secrets.token_urlsafe(9),
                               ShortLink(short_id=short_id, ref=ref, invitation_url=invitation_url))
        self._by_ref.put(ref, _Ref(short_id=short_id))
        return link

    def get(self, short_id: str) -> ShortLink | None:
        return self._links.get(short_id)

    def for_ref(self, ref: str) -> ShortLink | None:
        found = self._by_ref.get(ref)
        return self._links.get(found.short_id) if found else None

    def url(self, link: ShortLink) -> str:
        return f"{self.base_url}/i/{link.short_id}"

    def qr_path(self, link: ShortLink) -> str:
        return f"/i/{link.short_id}/qr.svg"

    def qr_links(self, link: ShortLink) -> QrLinks:
        url = self.url(link)
        return QrLinks(short_url=url, qr_svg_url=f"{url}/qr.svg", qr_png_url=f"{url}/qr.png")

    def routes(self) -> list[web.RouteDef]:
        def found(request: web.Request) -> ShortLink:
            link = self.get(request.match_info["short_id"])
            if link is None:
                raise web.HTTPNotFound(text="no invitation behind this link")
            return link

        async def resolve(request: web.Request) -> web.Response:
            link = found(request)
            if "application/json" in request.headers.get("Accept", ""):
                return web.json_response(decode_invitation(link.invitation_url))
            raise web.HTTPFound(link.invitation_url)

        async def qr(request: web.Request) -> web.Response:
            link = found(request)
            # the code never changes for a link, so browsers may keep it
            return web.Response(body=qr_svg(self.url(link)), content_type="image/svg+xml",
                                headers={"Cache-Control": "private, max-age=86400"})

        async def qr_image(request: web.Request) -> web.Response:
            link = found(request)
            return web.Response(body=qr_png(self.url(link)), content_type="image/png",
                                headers={"Cache-Control": "private, max-age=86400"})

        return [web.get("/i/{short_id}", resolve), web.get("/i/{short_id}/qr.svg", qr),
                web.get("/i/{short_id}/qr.png", qr_image)]
