"""The web pages in a real browser (Playwright driving Debian's Chromium) on the real network.

The whole flow goes through the pages only: the doctor signs in and shows a QR code, the patient's
wallet page opens it, the doctor issues, the wallet's holder accepts, the pharmacy shows a QR code, the
holder approves exactly what is disclosed, the pharmacy dispenses, and a second redemption is refused
on the page with its reason. Every QR code is read back from the screen with zbarimg and resolved.
Screenshots of each page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import json
import re

import aiohttp
import pytest

from erx_cli.system import LocalSystem as Network
from erx_schemas.prescription import REVEALED_FOR_DISPENSING
from tests.integration.conftest import DOCTOR, PHARMACY, WALLET, check_qr, expect, open_in_wallet, shot, sign_in

pytestmark = pytest.mark.integration


async def test_status_lists_the_pages(network: Network):
    status = await network.status()
    assert {"doctor", "pharmacy", "patient"} <= set(status.pages)
    assert status.pages["doctor"] == network.page_url(DOCTOR)
    async with aiohttp.ClientSession() as http:
        for url in status.pages.values():
            async with http.get(url, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"].startswith("/login")
            async with http.get(url + "login") as resp:
                assert resp.status == 200 and "Sign in" in await resp.text()


async def test_the_whole_flow_through_the_pages(network: Network, wallet_agent: str, browser, context):
    today = dt.date.today()
    # -- the doctor connects the patient's wallet ------------------------------------------------------
    doctor = await sign_in(context, network, DOCTOR, "01-doctor-sign-in")
    await doctor.click("#new-invitation")
    figure = doctor.locator("#invitation figure.qr")
    short_url, invitation = await check_qr(figure, "02-doctor-invitation-qr")
    assert invitation["label"] == network.settings.agent(DOCTOR).label
    await shot(doctor, "03-doctor-invitation")

    wallet = await sign_in(context, network, WALLET, "04-wallet-sign-in")
    await open_in_wallet(wallet, short_url, f"Connected to {network.settings.agent(DOCTOR).label}")
    await shot(wallet, "05-wallet-connected")

    connected = doctor.locator("#connected")  # appears without a reload
    await expect(connected).to_contain_text(network.settings.agent(WALLET).label)
    connection_id = await connected.get_attribute("data-connection-id")
    await expect(doctor.locator(f"#f-connection_id option[value='{connection_id}']")).to_have_count(1)
    await shot(doctor, "06-doctor-patient-connected")

    # -- bad input: a message at the field, nothing issued ----------------------------------------------
    await doctor.select_option("#f-connection_id", connection_id)
    await doctor.fill("#f-medication_name", "Ibuprofen")
    await doctor.fill("#f-quantity", "0")
    await doctor.click("#issue")
    await expect(doctor.locator("[data-error-for=quantity]")).to_contain_text("greater than or equal to 1")
    await expect(doctor.locator("[data-error-for=patient_name]")).to_have_text("Field required")
    await expect(doctor.locator("#f-medication_name")).to_have_value("Ibuprofen")
    await shot(doctor, "07-doctor-form-errors")

    # -- the doctor issues ----------------------------------------------------------------------------------
    for field, value in {"patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
                         "medication_code": "M01AE01", "medication_strength": "400 mg", "medication_form": "tablet",
                         "quantity": "20", "dosage_instructions": "1 tablet up to 3 times a day with food",
                         "redemptions": "1"}.items():
        await doctor.fill(f"#f-{field}", value)
    await expect(doctor.locator("#f-connection_id")).to_have_value(connection_id)
    # what the page showed while the server worked (the page is gone once the answer arrives)
    await doctor.evaluate("""() => document.addEventListener("submit", () => setTimeout(() => {
        const note = document.querySelector("#prescription-form .progress");
        sessionStorage.setItem("progress", JSON.stringify(
            [note && note.textContent, document.querySelector("#issue").disabled]));
    }, 0))""")
    await doctor.click("#issue")
    await expect(doctor.locator(".flash-ok").first).to_contain_text("offered to the patient's wallet")
    progress, button_disabled = json.loads(await doctor.evaluate("sessionStorage.getItem('progress')"))
    assert "creating the redemption token on the chain" in progress and button_disabled
    row = doctor.locator("#prescriptions tr[data-prescription-id]").first
    await expect(row.locator(".badge")).to_have_text("offered")
    prescription_id = await row.get_attribute("data-prescription-id")
    row = doctor.locator(f"#prescriptions tr[data-prescription-id='{prescription_id}']")
    await shot(doctor, "08-doctor-offered")

    # -- the wallet's holder sees the offer and accepts -------------------------------------------------------
    offer = wallet.locator("article.offer", has_text=prescription_id)
    await expect(offer).to_contain_text("Ibuprofen")  # live: no reload
    await expect(offer.locator("tr", has_text="token_secret_key").locator("td")).to_contain_text("masked")
    await shot(wallet, "09-wallet-offer")
    await offer.locator("button.accept").click()
    held = wallet.locator(f"#credentials tr[data-prescription-id='{prescription_id}']")
    await expect(held).to_have_count(1)
    await expect(held).to_contain_text("Ibuprofen")
    await shot(wallet, "10-wallet-holds-prescription")
    await expect(row.locator(".badge")).to_have_text("issued")  # the doctor's page follows live
    cred_def_id = (await doctor.locator("#cred-def-id").text_content()).strip()
    await shot(doctor, "11-doctor-issued")

    # -- the pharmacy's operator trusts the practice (bad input first) -----------------------------------------------
    operator_context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        admin = await sign_in(operator_context, network, PHARMACY, "12-pharmacy-operator-sign-in", username="operator")
        await expect(admin).to_have_url(re.compile(r"/staff$"))  # an operator sees no patient's data
        await admin.click("a[href='/trusted']")
        await admin.fill("#f-cred_def_id", "not-a-credential-definition")
        await admin.click("#add-trusted")
        await expect(admin.locator("[data-error-for=cred_def_id]")).to_contain_text("not a credential definition id")
        await shot(admin, "13-pharmacy-trusted-form-error")
        await admin.fill("#f-cred_def_id", cred_def_id)
        await admin.fill("#f-label", network.settings.agent(DOCTOR).label)
        await admin.click("#add-trusted")
        await expect(admin.locator(f"#trusted tr[data-cred-def-id='{cred_def_id}']")).to_have_count(1)
    finally:
        await operator_context.close()
    pharmacy = await sign_in(context, network, PHARMACY)  # the pharmacist: sees the list, cannot change it
    await expect(pharmacy.locator(f"#trusted tr[data-cred-def-id='{cred_def_id}']")).to_have_count(1)
    await expect(pharmacy.locator("#add-trusted")).to_have_count(0)

    # -- the pharmacy asks by QR code, the holder approves, the pharmacy dispenses ---------------------------------
    async def present(first_shot: int):
        figure = pharmacy.locator("#check figure.qr")
        url, invitation = await check_qr(figure, f"{first_shot}-pharmacy-check-qr")
        assert invitation.get("requests~attach"), "the QR code carries the proof request"
        await shot(pharmacy, f"{first_shot + 1}-pharmacy-waiting")
        await open_in_wallet(wallet, url, f"Opened the invitation from {network.settings.agent(PHARMACY).label}")
        request = wallet.locator("article.request").first  # newest first
        candidate = request.locator("fieldset.candidate", has_text=prescription_id)
        await candidate.locator("input[type=radio]").check()  # the prescription to share
        return request, candidate

    await pharmacy.click("#new-check")
    request, candidate = await present(14)
    names = [n.strip() for n in await candidate.locator("table.disclosure th").all_text_contents()]
    assert names == REVEALED_FOR_DISPENSING, "the wallet shows exactly what is disclosed"
    await expect(candidate.locator("tr", has_text="patient_name")).to_contain_text("Erika Mustermann")
    await expect(candidate.locator("tr", has_text="token_secret_key").locator("td")).to_contain_text("masked")
    statements = await candidate.locator("ul.predicates li").all_text_contents()
    assert any(s.startswith(f"valid until ≥ {today.isoformat()}") for s in statements), statements
    assert any(s.startswith(f"valid from ≤ {today.isoformat()}") for s in statements), statements
    await shot(wallet, "16-wallet-proof-request")
    await request.locator("button.approve").click()
    await expect(wallet.locator(".flash-ok").first).to_contain_text("Shared")

    verified = pharmacy.locator(".check-state[data-state=verified]")
    await expect(verified).to_be_visible()
    await expect(verified.locator("dl.prescription")).to_contain_text("Erika Mustermann")
    await expect(verified.locator("ul.checks li")).to_have_count(4)
    await shot(pharmacy, "17-pharmacy-verified")
    await pharmacy.click("#dispense")
    dispensed_check = pharmacy.url.rstrip("/").rsplit("/", 1)[-1]
    dispensed = pharmacy.locator(".check-state[data-state=dispensed]")
    await expect(dispensed).to_contain_text("0 redemption(s) left")
    await shot(pharmacy, "18-pharmacy-dispensed")
    # the printable signed receipt (a connectionless check has no wallet to send it to)
    receipt_href = await dispensed.locator("#receipt-pdf").get_attribute("href")
    receipt_pdf = await pharmacy.context.request.get(pharmacy.url.split("/checks/")[0] + receipt_href)
    assert receipt_pdf.ok and receipt_pdf.headers["content-type"] == "application/pdf"
    assert (await receipt_pdf.body()).startswith(b"%PDF")

    # -- a second redemption is refused, on the page, with its reason ------------------------------------------------
    await pharmacy.click("#next-check")
    request, _ = await present(19)
    await request.locator("button.approve").click()
    refusal = pharmacy.locator(".check-state[data-state=refused] .refusal")
    await expect(refusal).to_have_attribute("data-reason", "already_redeemed")
    await expect(refusal).to_contain_text("already been redeemed")
    await shot(pharmacy, "21-pharmacy-refused-already-redeemed")

    # -- the doctor's page shows the redemption, then revokes with confirmation -----------------------------------------
    await expect(row.locator(".badge")).to_have_text("redeemed 1 of 1")  # from the chain, without a reload
    await row.locator("a", has_text="Revoke").click()
    await expect(doctor.locator("#revoke")).to_contain_text("cannot be undone")
    await shot(doctor, "22-doctor-revoke-confirmation")
    await doctor.click("#confirm-revoke")
    await expect(row.locator(".badge")).to_have_text("revoked")
    await shot(doctor, "23-doctor-revoked")

    # -- the pharmacy's connection-based alternative; the holder declines ------------------------------------------------
    await pharmacy.goto(network.page_url(PHARMACY))
    await pharmacy.click("#new-invitation")
    url, _ = await check_qr(pharmacy.locator("#customers figure.qr"), "24-pharmacy-connect-qr")
    await open_in_wallet(wallet, url, f"Connected to {network.settings.agent(PHARMACY).label}")
    customer = pharmacy.locator("#customers li[data-connection-id]", has_text=network.settings.agent(WALLET).label).first
    await expect(customer).to_contain_text(network.settings.agent(WALLET).label)
    await customer.locator("button").click()
    await expect(pharmacy.locator(".check-state[data-state=requested]")).to_contain_text("customer's wallet")
    request = wallet.locator("article.request").first
    await expect(request).to_contain_text(network.settings.agent(PHARMACY).label)
    await request.locator("button.decline").click()
    refusal = pharmacy.locator(".check-state[data-state=refused] .refusal")
    await expect(refusal).to_have_attribute("data-reason", "declined")  # the pharmacist learns what happened
    await expect(refusal).to_contain_text("declined")
    await pharmacy.goto(network.page_url(PHARMACY))
    await expect(pharmacy.locator(f"#history tr[data-check-id='{dispensed_check}']")).to_contain_text("dispensed")
    await shot(pharmacy, "25-pharmacy-history")
    await shot(wallet, "26-wallet-declined")

    # -- no secret reached a page -----------------------------------------------------------------------------------
    async with network.admin(WALLET) as admin:
        token_keys = [c.attrs["token_secret_key"] for c in await admin.credentials()]
    secrets = [network.operator_token(a).get_secret_value() for a in (DOCTOR, PHARMACY, WALLET)]
    secrets += [network.staff_password(a, m.username).get_secret_value() for a in (DOCTOR, PHARMACY)
                for m in network.org(a).dev_staff()]
    secrets += [network.org(a).secrets.session_key(a).get_secret_value() for a in (DOCTOR, PHARMACY, WALLET)]
    for page in (doctor, wallet, pharmacy):
        html = await page.content()
        assert token_keys and not any(s in html for s in secrets + token_keys)


async def test_staff_and_the_audit_log_through_the_pages(network: Network, browser, context):
    """A practice's operator adds an assistant (the password shown once); the assistant signs in, may not
    issue, and is refused with the reason; the operator disables the account, which ends the assistant's
    session at once; the audit log shows who did what."""
    operator = await sign_in(context, network, DOCTOR, username="operator")
    await expect(operator).to_have_url(re.compile(r"/staff$"))
    username = f"ada{dt.datetime.now():%H%M%S}"
    await operator.fill("#f-username", username)
    await operator.fill("#f-display_name", "Ada Assistant")
    await operator.select_option("#f-role", "assistant")
    await operator.click("#add-member")
    password = (await operator.locator("#secret").text_content()).strip()
    await shot(operator, "27-doctor-operator-added-staff")
    assert len(password) >= 16

    assistant_context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        assistant = await sign_in(assistant_context, network, DOCTOR, username=username, password=password)
        await assistant.click("#issue")  # an assistant may connect and see, not issue
        await expect(assistant.locator(".reason[data-status='403']")).to_contain_text("An assistant may not issue")
        await shot(assistant, "28-doctor-assistant-refused")

        row = operator.locator(f"#staff tr[data-username='{username}']")
        await row.locator("button.disable").click()
        await expect(operator.locator(f"#staff tr[data-username='{username}']")).to_have_attribute(
            "data-disabled", "true")
        await assistant.goto(network.page_url(DOCTOR))
        await expect(assistant).to_have_url(re.compile(r"/login"))  # the session ended at once
    finally:
        await assistant_context.close()

    await operator.click("a[href='/audit']")
    log = operator.locator("#audit tbody")
    await expect(log.locator(f"tr[data-action='issued'][data-username='{username}'][data-outcome='refused']")) \
        .to_have_count(1)
    await expect(log.locator("tr[data-action='issued'][data-username='prescriber'][data-outcome='ok']").first) \
        .to_be_visible()
    await expect(log.locator("tr[data-action='staff-disabled']").first).to_contain_text(username)
    await shot(operator, "29-doctor-audit-log")
