"""The integration tests' network, and what the browser tests (test_pages*.py) share: Chromium driven by
Playwright, a patient wallet that asks its user, signing in to the pages and reading their QR codes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from erx_cli.system import LocalSystem as Network
from erx_core.progress import Progress
from erx_core.settings import REPO_ROOT
from erx_roles.invitations import decode_invitation
from tests.support import isolated_settings, manual_wallet


@pytest.fixture(scope="session")
async def network(network_home):
    """The whole local network (pool, chain, tails, agents), started once for the session."""
    net = Network(isolated_settings(network_home), Progress())
    try:
        await net.up()
        yield net
    finally:
        net.down()


# -- the browser tests ----------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
# as root, on a machine without network access: no sandbox, no background traffic, a fresh profile
# (Playwright passes its own temporary --user-data-dir)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO_ROOT / "test-artifacts" / "screenshots"
DOCTOR, PHARMACY, WALLET = "doctor", "pharmacy", "patient-manual"
WAIT_MS = 45_000


@pytest.fixture(scope="session")
async def wallet_agent(network: Network):
    """A second patient wallet, one that asks its user, added to the session's network once for every
    browser test module (the demo and the other tests use the wallet that answers on its own). Started
    once: a wallet restarted with its connections kept tries to reuse its old connection when it opens
    the practice's next invitation (ACA-Py's out-of-band reuse), and the practice does not accept that
    reuse (a known gap, docs/architecture.md)."""
    agent = manual_wallet(WALLET)
    network.settings.agents.append(agent)
    try:
        await network.up()  # starts what is not running yet: this agent and its controller
        yield agent.name
    finally:
        for name in (f"controller-{agent.name}", f"agent-{agent.name}"):
            network.supervisor.stop(name, timeout_s=20)
        network.settings.agents.remove(agent)
        network.settings.save(network.paths.settings)


@pytest.fixture(scope="module")
async def browser():
    missing = [p for p in (str(CHROMIUM), shutil.which("zbarimg")) if not p or not Path(p).exists()]
    if missing:
        pytest.skip("Chromium or zbarimg is not installed: `./erx test` installs them (apt-get)")
    from playwright.async_api import async_playwright, expect
    expect.set_options(timeout=WAIT_MS)
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def context(browser):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(WAIT_MS)
    try:
        yield context
    finally:
        await context.close()


def expect(target):
    from playwright.async_api import expect as _expect
    return _expect(target)


async def shot(page, name: str) -> None:
    await page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


async def sign_in(context, network: Network, agent: str, shot_name: str | None = None, username: str | None = None,
                  password: str | None = None):
    """Sign in to an agent's page: an organisation's as a staff member (by default its dev person: the
    prescriber, the pharmacist), the wallet's with its one password."""
    page = await context.new_page()
    await page.goto(network.page_url(agent))
    await expect(page).to_have_url(re.compile(r"/login"))
    if shot_name:
        await shot(page, shot_name)
    if network.settings.agent(agent).role == "patient":
        password = network.org(agent).secrets.page_password(agent).get_secret_value()
    else:
        username = username or network.staff_member(agent)
        password = password or network.staff_password(agent, username).get_secret_value()
        await page.fill("#f-username", username)
    await page.fill("#f-password", password)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#live-state")).to_have_text("live")  # signed in, live updates connected
    if username:  # the header says who is signed in
        await expect(page.locator("#signed-in-as")).to_have_attribute("data-username", username)
    return page


async def read_qr(figure, name: str) -> str:
    """The QR code as the browser drew it, decoded by zbarimg."""
    img = figure.locator("img.qr-code")
    await expect(img).to_be_visible()
    await img.evaluate("img => img.complete || new Promise(ok => img.addEventListener('load', ok))")
    path = SHOTS / f"{name}.png"
    for attempt in range(3):  # a live update may replace the element while it is photographed
        try:
            await img.screenshot(path=path)
            break
        except Exception:
            if attempt == 2:
                raise
    out = subprocess.run(["zbarimg", "-q", "--raw", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"zbarimg could not read {path}: {out.stderr}"
    return out.stdout.strip()


async def check_qr(figure, name: str) -> tuple[str, dict]:
    """Decode the figure's QR code; its URL must resolve (as JSON, and as a redirect) to the invitation
    whose raw link the page shows."""
    url = await read_qr(figure, name)
    assert url == await figure.get_attribute("data-short-url")
    long_url = await figure.locator("textarea.long-url").input_value()
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 200
            invitation = await resp.json()
        async with http.get(url, allow_redirects=False) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
    assert URL(location) == URL(long_url)  # aiohttp writes the empty path as "/"
    assert invitation == decode_invitation(long_url)
    return url, invitation


async def open_in_wallet(wallet, url: str, flash: str) -> None:
    await wallet.fill("#f-invitation_url", url)
    await wallet.click("#open-invitation")
    await expect(wallet.locator(".flash-ok").first).to_contain_text(flash)
