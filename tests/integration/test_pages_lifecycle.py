"""Issue 15's prescription lifecycle through the web pages, in a real browser on the real network.

- a therapy in three parts: issued from the practice's form, listed part by part at the practice and in
  the wallet with each part's validity, the part valid today presented by QR code and dispensed;
- a paper prescription: printed from the form without a wallet, downloaded once as a PDF whose QR code is
  read back (pdftoppm + zbarimg, and the pharmacy's own reader), uploaded and pasted at two pharmacies,
  dispensed as often as allowed and then refused;
- a representative: the wallet's pickup code for someone else, read off the screen and checked at a
  pharmacy, which says a representative collects it;
- the signed dispense receipt reaching the connected wallet, verified;
- an assistant at the practice, who may not issue (nor print).

Each test sets up what it needs (its own connection and prescriptions); screenshots go to
test-artifacts/screenshots/lifecycle-*.png.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from erx_cli.system import LocalSystem as Network
from erx_core.documents import codes_in_upload
from erx_schemas.paper import PREFIX, PickupCode, open_pickup_code, parse_pickup_code, pickup_signer
from tests.integration.conftest import DOCTOR, PHARMACY, WALLET, check_qr, expect, open_in_wallet, read_qr, shot, \
    sign_in

pytestmark = pytest.mark.integration

PHARMACY_B = "pharmacy-b"
PDFTOPPM = Path("/usr/bin/pdftoppm")


def stamp() -> str:
    """Makes each test's patient its own, so its rows are found among those of earlier runs."""
    return f"{dt.datetime.now():%H%M%S%f}"


def label(network: Network, agent: str) -> str:
    return network.settings.agent(agent).label


async def connect_wallet(network: Network, doctor, wallet) -> str:
    """The doctor shows a QR code, the wallet opens it; the connection's id at the practice."""
    await doctor.click("#new-invitation")
    url, _ = await check_qr(doctor.locator("#invitation figure.qr"), "lifecycle-doctor-invitation-qr")
    await open_in_wallet(wallet, url, f"Connected to {label(network, DOCTOR)}")
    connected = doctor.locator("#connected")  # live, without a reload
    await expect(connected).to_contain_text(label(network, WALLET))
    connection_id = await connected.get_attribute("data-connection-id")
    await expect(doctor.locator(f"#f-connection_id option[value='{connection_id}']")).to_have_count(1)
    return connection_id


async def fill_order(doctor, patient: str, **fields: str) -> None:
    values = {"patient_name": patient, "patient_birth_date": "1958-03-02", "medication_name": "Metformin",
              "medication_code": "A10BA02", "medication_strength": "500 mg", "medication_form": "tablet",
              "quantity": "30", "dosage_instructions": "1 tablet twice a day with meals", "redemptions": "1"} | fields
    for field, value in values.items():
        await doctor.fill(f"#f-{field}", value)


async def accept_offer(wallet, prescription_id: str) -> None:
    offer = wallet.locator("article.offer", has_text=prescription_id)
    await expect(offer.locator("button.accept")).to_be_visible()  # live: no reload
    pickup_code = offer.locator("tr", has=wallet.locator("th code", has_text=re.compile(r"^pickup_code$")))
    await expect(pickup_code.locator("td")).to_contain_text("signed code for someone collecting for you")
    assert await wallet.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), \
        "the offer fits the page's width"
    await offer.locator("button.accept").click()
    await expect(offer).to_have_count(0)  # the page came back without it


async def issue_to_wallet(doctor, wallet, patient: str, parts: int = 1) -> list[str]:
    """Issue what the form holds to the selected wallet, accept each offer on the wallet's page; the
    prescription ids, in part order."""
    await doctor.click("#issue")
    await expect(doctor.locator(".flash-ok").first).to_contain_text("offered to the patient's wallet")
    rows = doctor.locator("#prescriptions tr[data-prescription-id]", has_text=patient)
    await expect(rows).to_have_count(parts)
    ids = [await r.get_attribute("data-prescription-id") for r in await rows.all()]  # listed in part order
    for prescription_id in ids:
        await accept_offer(wallet, prescription_id)
    for prescription_id in ids:
        await expect(wallet.locator(f"#credentials tr[data-prescription-id='{prescription_id}']")).to_have_count(1)
    return ids


def badge(doctor, prescription_id: str):
    return doctor.locator(f"#prescriptions tr[data-prescription-id='{prescription_id}'] .badge")


async def pharmacy_request(network: Network, pharmacy, wallet, name: str):
    """The pharmacy shows a QR code with its proof request; the wallet opens it; the request on its page."""
    await pharmacy.click("#new-check")
    url, invitation = await check_qr(pharmacy.locator("#check figure.qr"), name)
    assert invitation.get("requests~attach"), "the QR code carries the proof request"
    await open_in_wallet(wallet, url, f"Opened the invitation from {label(network, PHARMACY)}")
    request = wallet.locator("article.request", has_text=label(network, PHARMACY)).first  # newest first
    await expect(request).to_be_visible()
    return request


async def check_paper(pharmacy, *, code: str | None = None, upload: Path | None = None):
    """The pharmacy page's "Paper prescription or pickup code" form; the check it leads to."""
    await expect(pharmacy.locator("#paper h2")).to_have_text("Paper prescription or pickup code")
    if code is not None:
        await pharmacy.fill("#f-code", code)
    if upload is not None:
        await pharmacy.set_input_files("#f-scan", upload)
    await pharmacy.click("#check-paper")
    await expect(pharmacy).to_have_url(re.compile(r"/checks/[^/]+$"))
    state = pharmacy.locator(".check-state")
    await expect(state).not_to_have_attribute("data-state", "requested")
    return state


def qr_in_pdf(pdf: Path) -> str:
    """The printed page rendered as a scanner would see it (pdftoppm, 200 dpi) and its QR code read by zbarimg."""
    png = pdf.with_suffix("")
    subprocess.run([str(PDFTOPPM), "-r", "200", "-png", "-singlefile", str(pdf), str(png)], check=True,
                   capture_output=True)
    out = subprocess.run(["zbarimg", "-q", "--raw", f"{png}.png"], capture_output=True, text=True)
    assert out.returncode == 0, f"zbarimg found no code on the rendered page: {out.stderr}"
    return out.stdout.strip()


async def verified_code(network: Network, code: str) -> PickupCode:
    """The pickup code as another organisation verifies it: signed by the practice's DID, whose verkey the
    pharmacy's agent reads from the Indy network."""
    jws = parse_pickup_code(code)
    async with network.admin(DOCTOR) as admin:
        practice = (await admin.public_did()).did
    assert pickup_signer(jws) == practice
    async with network.admin(PHARMACY) as admin:
        return open_pickup_code(jws, await admin.did_verkey(practice))


# -- a therapy in three parts ----------------------------------------------------------------------------
async def test_a_therapy_in_three_parts_through_the_pages(network: Network, wallet_agent: str, context):
    today, patient = dt.date.today(), f"Therapy Patient {stamp()}"
    length, interval = 27, 30  # each part valid 27 days, one starting every 30
    windows = [(today + dt.timedelta(days=interval * k), today + dt.timedelta(days=interval * k + length))
               for k in range(3)]
    doctor = await sign_in(context, network, DOCTOR)
    wallet = await sign_in(context, network, WALLET)
    connection_id = await connect_wallet(network, doctor, wallet)

    await doctor.select_option("#f-connection_id", connection_id)
    await fill_order(doctor, patient, valid_from=today.isoformat(), valid_until=windows[0][1].isoformat(),
                     parts="3", interval_days=str(interval))
    await doctor.click("#issue")
    flash = doctor.locator(".flash-ok").first
    await expect(flash).to_contain_text("3 parts of a therapy for Metformin offered to the patient's wallet")
    rows = doctor.locator("#prescriptions tr[data-prescription-id]", has_text=patient)
    await expect(rows).to_have_count(3)
    therapy_ids = {await r.get_attribute("data-therapy-id") for r in await rows.all()}
    assert len(therapy_ids) == 1 and None not in therapy_ids, "the parts are one therapy"
    ids = []
    for part, row in enumerate(await rows.all(), start=1):
        assert await row.get_attribute("data-part") == str(part)  # in part order
        ids.append(await row.get_attribute("data-prescription-id"))
        await expect(row.locator("td").nth(4)).to_have_text(f"{part} of 3")
        start, end = windows[part - 1]
        await expect(row.locator("td").nth(5)).to_have_text(f"{start.isoformat()} – {end.isoformat()}")
        await expect(row.locator(".badge")).to_have_text("offered")
    await shot(doctor, "lifecycle-01-doctor-therapy-offered")

    # -- the wallet accepts each part and lists them with their validity -------------------------------------
    for prescription_id in ids:
        await accept_offer(wallet, prescription_id)
    held = [wallet.locator(f"#credentials tr[data-prescription-id='{p}']") for p in ids]
    for part, row in enumerate(held, start=1):
        await expect(row).to_have_count(1)
        await expect(row.locator("td").nth(3)).to_have_text(f"{part} of 3")
    await expect(held[0]).to_have_attribute("data-validity", "valid")
    await expect(held[0].locator("td.validity")).to_have_text(
        f"valid until {windows[0][1].isoformat()} ({length} days left)")
    for part in (2, 3):
        start, end = windows[part - 1]
        await expect(held[part - 1]).to_have_attribute("data-validity", "not_yet_valid")
        await expect(held[part - 1].locator("td.validity")).to_have_text(
            f"valid from {start.isoformat()} to {end.isoformat()}")
    therapy_id = therapy_ids.pop()
    for row in held:
        await expect(row).to_have_attribute("data-therapy-id", therapy_id)
    await shot(wallet, "lifecycle-02-wallet-holds-three-parts")

    # -- the practice's list follows: part 1 issued, the later parts valid from their day ------------------------
    await expect(badge(doctor, ids[0])).to_have_text("issued")
    for part in (2, 3):
        await expect(badge(doctor, ids[part - 1])).to_have_text(f"valid from {windows[part - 1][0].isoformat()}")
    await shot(doctor, "lifecycle-03-doctor-therapy-issued")

    # -- at the pharmacy: the wallet can present only the part valid today ---------------------------------------
    pharmacy = await sign_in(context, network, PHARMACY)
    request = await pharmacy_request(network, pharmacy, wallet, "lifecycle-04-pharmacy-check-qr")
    candidates = [request.locator("fieldset.candidate", has_text=p) for p in ids]
    for part, candidate in enumerate(candidates, start=1):  # the three look alike but for their part
        await expect(candidate.locator("legend .part")).to_have_text(f": part {part} of 3")
    await expect(candidates[0].locator("input[type=radio]")).to_be_enabled()
    for later in candidates[1:]:  # not valid yet: the wallet cannot prove "valid from ≤ today"
        await expect(later).to_have_class(re.compile(r"\bunusable\b"))
        await expect(later.locator("input[type=radio]")).to_be_disabled()
        await expect(later.locator("ul.predicates li.unmet")).to_contain_text(f"valid from ≤ {today.isoformat()}")
    part_attribute = wallet.locator("th code", has_text=re.compile(r"^therapy_part$"))
    await expect(candidates[0].locator("tr", has=part_attribute).locator("td")).to_have_text("1")
    await candidates[0].locator("input[type=radio]").check()
    await shot(wallet, "lifecycle-05-wallet-request-part-1")
    await request.locator("button.approve").click()
    await expect(wallet.locator(".flash-ok").first).to_contain_text("Shared")

    verified = pharmacy.locator(".check-state[data-state=verified]")
    await expect(verified).to_be_visible()
    await expect(verified.locator("#therapy-part")).to_have_text("part 1 of 3")
    await expect(verified.locator("dl.prescription")).to_contain_text(patient)
    await expect(verified.locator("#channel")).to_have_text("the patient's wallet")
    await shot(pharmacy, "lifecycle-06-pharmacy-part-1-verified")
    await pharmacy.click("#dispense")
    dispensed = pharmacy.locator(".check-state[data-state=dispensed]")
    await expect(dispensed).to_contain_text("0 redemption(s) left")
    await expect(dispensed.locator("#therapy-part")).to_have_text("part 1 of 3")
    await shot(pharmacy, "lifecycle-07-pharmacy-part-1-dispensed")

    # -- the practice sees part 1 redeemed, the later parts untouched -------------------------------------------
    await expect(badge(doctor, ids[0])).to_have_text("redeemed 1 of 1")  # from the chain, without a reload
    for part in (2, 3):
        await expect(badge(doctor, ids[part - 1])).to_have_text(f"valid from {windows[part - 1][0].isoformat()}")
    await shot(doctor, "lifecycle-08-doctor-part-1-redeemed")


# -- a paper prescription -----------------------------------------------------------------------------------
@pytest.mark.skipif(not PDFTOPPM.exists() or not shutil.which("zbarimg"),
                    reason="pdftoppm (poppler-utils) or zbarimg missing: `./erx test` installs them (apt-get)")
async def test_a_paper_prescription_through_the_pages(network: Network, context, tmp_path: Path):
    patient = f"Paper Patient {stamp()}"
    doctor = await sign_in(context, network, DOCTOR)
    await expect(doctor.locator("#f-connection_id")).to_have_value("")  # no wallet
    await fill_order(doctor, patient, redemptions="2")
    await doctor.click("#print")
    await expect(doctor.locator("#printout h1")).to_have_text("Paper prescription ready")
    printed = doctor.locator("#printout dd[data-prescription-id]")
    await expect(printed).to_have_count(1)
    prescription_id = await printed.get_attribute("data-prescription-id")
    await expect(printed).to_contain_text("2 redemption(s)")
    await shot(doctor, "lifecycle-11-doctor-paper-ready")

    # -- the PDF downloads once ----------------------------------------------------------------------------------
    link = doctor.locator("#download-printout")
    href = await link.get_attribute("href")
    async with doctor.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == "paper-prescription.pdf"
    pdf = tmp_path / "paper-prescription.pdf"
    await download.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    again = await doctor.context.request.get(network.controller_url(DOCTOR) + href)
    assert again.status == 404, "the printout holds the token's key: it downloads once"
    assert "downloaded already" in await again.text()

    # -- its QR code, read back from the printed page -------------------------------------------------------------
    code = qr_in_pdf(pdf)
    assert code.startswith(PREFIX)
    assert codes_in_upload(pdf.read_bytes(), "application/pdf") == [code]  # the pharmacy's reader agrees
    signed = await verified_code(network, code)
    assert (signed.channel, signed.prescription_id, signed.patient_name, signed.redemptions) == \
        ("paper", prescription_id, patient, 2)

    # -- the practice lists it, on paper ---------------------------------------------------------------------------
    await doctor.goto(network.page_url(DOCTOR))
    row = doctor.locator(f"#prescriptions tr[data-prescription-id='{prescription_id}']")
    await expect(row).to_contain_text(patient)
    await expect(row.locator(".channel")).to_have_text("on paper")
    await expect(row.locator(".badge")).to_have_text("issued")

    # -- pharmacy A: the PDF uploaded --------------------------------------------------------------------------------
    pharmacy = await sign_in(context, network, PHARMACY)
    state = await check_paper(pharmacy, upload=pdf)
    await expect(state).to_have_attribute("data-state", "verified")
    await expect(state).to_have_attribute("data-channel", "paper")
    await expect(state.locator("#channel")).to_have_text("a paper prescription")
    await expect(state.locator("dl.prescription")).to_contain_text(patient)
    await expect(state.locator("ul.checks")).to_contain_text("Signature verified against the practice's key")
    await expect(state.locator("ul.checks")).to_contain_text("2 redemption(s) left")
    await shot(pharmacy, "lifecycle-12-pharmacy-paper-verified")
    await pharmacy.click("#dispense")
    dispensed = pharmacy.locator(".check-state[data-state=dispensed]")
    await expect(dispensed).to_contain_text("1 redemption(s) left")
    await expect(dispensed.locator("#receipt-pdf")).to_be_visible()  # the paper path's receipt is printed
    await shot(pharmacy, "lifecycle-13-pharmacy-paper-dispensed")

    # -- pharmacy B: the code pasted (as a scanner types it) ----------------------------------------------------------
    pharmacy_b = await sign_in(context, network, PHARMACY_B)
    state = await check_paper(pharmacy_b, code=code)
    await expect(state).to_have_attribute("data-state", "verified")
    await expect(state.locator("#channel")).to_have_text("a paper prescription")
    await expect(state.locator("ul.checks")).to_contain_text("1 redemption(s) left")
    await pharmacy_b.click("#dispense")
    await expect(pharmacy_b.locator(".check-state[data-state=dispensed]")).to_contain_text("0 redemption(s) left")

    # -- a third time: refused, with the reason -------------------------------------------------------------------------
    await pharmacy.goto(network.page_url(PHARMACY))
    state = await check_paper(pharmacy, code=code)
    await expect(state).to_have_attribute("data-state", "refused")
    refusal = state.locator(".refusal")
    await expect(refusal).to_have_attribute("data-reason", "already_redeemed")
    await expect(refusal).to_contain_text("already been redeemed")
    await shot(pharmacy, "lifecycle-14-pharmacy-paper-refused")

    await expect(row.locator(".badge")).to_have_text("redeemed 2 of 2")  # the practice's page, live


# -- a representative ------------------------------------------------------------------------------------------
async def test_a_representative_collects_with_the_wallets_pickup_code(network: Network, wallet_agent: str, context):
    patient = f"Represented Patient {stamp()}"
    doctor = await sign_in(context, network, DOCTOR)
    wallet = await sign_in(context, network, WALLET)
    connection_id = await connect_wallet(network, doctor, wallet)
    await doctor.select_option("#f-connection_id", connection_id)
    await fill_order(doctor, patient)
    [prescription_id] = await issue_to_wallet(doctor, wallet, patient)

    held = wallet.locator(f"#credentials tr[data-prescription-id='{prescription_id}']")
    await held.locator("a.pickup", has_text="Pickup code for someone else").click()
    await expect(wallet.locator("#pickup h1")).to_have_text("Let someone collect this prescription")
    await expect(wallet.locator("#pickup .status.warn")).to_contain_text("can redeem what is left")
    code = await read_qr(wallet.locator("#pickup-code"), "lifecycle-21-wallet-pickup-qr")
    assert code == await wallet.locator("#pickup textarea.long-url").input_value()
    await shot(wallet, "lifecycle-22-wallet-pickup-code")
    signed = await verified_code(network, code)
    assert (signed.channel, signed.prescription_id, signed.patient_name) == ("wallet", prescription_id, patient)

    pharmacy = await sign_in(context, network, PHARMACY)
    state = await check_paper(pharmacy, code=code)
    await expect(state).to_have_attribute("data-state", "verified")
    await expect(state).to_have_attribute("data-channel", "representative")
    await expect(state.locator("#channel")).to_contain_text(
        "a pickup code from the patient's wallet: a representative collects it")
    await expect(state.locator("dl.prescription")).to_contain_text(patient)
    await shot(pharmacy, "lifecycle-23-pharmacy-representative")
    await pharmacy.click("#dispense")
    await expect(pharmacy.locator(".check-state[data-state=dispensed]")).to_contain_text("0 redemption(s) left")
    await expect(badge(doctor, prescription_id)).to_have_text("redeemed 1 of 1")


# -- the signed receipt in the wallet ---------------------------------------------------------------------------
async def test_the_dispense_receipt_reaches_the_connected_wallet(network: Network, wallet_agent: str, context):
    patient = f"Receipt Patient {stamp()}"
    doctor = await sign_in(context, network, DOCTOR)
    wallet = await sign_in(context, network, WALLET)
    connection_id = await connect_wallet(network, doctor, wallet)
    await doctor.select_option("#f-connection_id", connection_id)
    await fill_order(doctor, patient, medication_name="Ramipril", medication_code="C09AA05",
                     medication_strength="5 mg", quantity="28", dosage_instructions="1 tablet in the morning")
    [prescription_id] = await issue_to_wallet(doctor, wallet, patient)

    # -- the pharmacy connects the customer's wallet and asks it over the connection -----------------------------
    # pharmacy B: no other browser test connects a wallet to it (a wallet opening a second invitation of
    # the same pharmacy reuses its connection, and the customers' list would not grow)
    pharmacy = await sign_in(context, network, PHARMACY_B)
    customers = pharmacy.locator("#customers li[data-connection-id]", has_text=label(network, WALLET))
    before = await customers.count()
    await pharmacy.click("#new-invitation")
    url, _ = await check_qr(pharmacy.locator("#customers figure.qr"), "lifecycle-31-pharmacy-connect-qr")
    await open_in_wallet(wallet, url, f"Connected to {label(network, PHARMACY_B)}")
    await expect(customers).to_have_count(before + 1)  # live; the newest first
    await customers.first.locator("button").click()
    await expect(pharmacy.locator(".check-state[data-state=requested]")).to_contain_text("customer's wallet")
    request = wallet.locator("article.request", has_text=label(network, PHARMACY_B)).first
    candidate = request.locator("fieldset.candidate", has_text=prescription_id)
    await candidate.locator("input[type=radio]").check()
    await request.locator("button.approve").click()
    await expect(wallet.locator(".flash-ok").first).to_contain_text("Shared")

    verified = pharmacy.locator(".check-state[data-state=verified]")
    await expect(verified.locator("dl.prescription")).to_contain_text(patient)
    await pharmacy.click("#dispense")
    dispensed = pharmacy.locator(".check-state[data-state=dispensed]")
    await expect(dispensed.locator("#receipt")).to_contain_text("sent to the patient's wallet")
    tx_hash = (await dispensed.locator(".status.ok code").text_content()).strip()
    assert re.fullmatch(r"0x[0-9a-f]{64}", tx_hash), tx_hash
    await shot(pharmacy, "lifecycle-32-pharmacy-dispensed-receipt-sent")

    # -- the wallet's page shows it, verified against the pharmacy's verkey -------------------------------------------
    receipt = wallet.locator("#receipts tr[data-receipt-id]", has=wallet.locator(f"code[title='{tx_hash}']"))
    await expect(receipt).to_have_attribute("data-verified", "yes")  # live: no reload
    await expect(receipt).to_contain_text("Ramipril")
    await expect(receipt).to_contain_text(label(network, PHARMACY_B))
    async with network.admin(PHARMACY_B) as admin:
        pharmacy_did = (await admin.public_did()).did
    await expect(receipt).to_contain_text(pharmacy_did)
    await expect(receipt.locator("td.status.ok")).to_have_text("yes")
    await shot(wallet, "lifecycle-33-wallet-receipt-verified")


# -- an assistant may not issue -------------------------------------------------------------------------------------
async def test_an_assistant_at_the_practice_may_not_issue(network: Network, context):
    username, patient = f"asst{stamp()[:10]}", f"Unissued Patient {stamp()}"
    async with aiohttp.ClientSession(headers={
            "Authorization": f"Bearer {network.operator_token(DOCTOR).get_secret_value()}"}) as http:
        async with http.post(network.controller_url(DOCTOR) + "/api/staff", json={
                "username": username, "display_name": "Anna Assistant", "role": "assistant"}) as resp:
            assert resp.status == 201, await resp.text()
            password = (await resp.json())["password"]

    assistant = await sign_in(context, network, DOCTOR, username=username, password=password)
    await expect(assistant.locator("#signed-in-as")).to_have_attribute("data-role", "assistant")
    await fill_order(assistant, patient)
    await assistant.click("#print")  # no wallet needed to try: on paper
    refused = assistant.locator(".reason[data-status='403']")
    await expect(refused).to_contain_text("An assistant may not issue")
    await shot(assistant, "lifecycle-41-doctor-assistant-may-not-print")

    await assistant.goto(network.page_url(DOCTOR))  # the assistant sees the list: nothing was issued
    await expect(assistant.locator("#prescriptions")).to_be_visible()
    await expect(assistant.locator("#prescriptions tr", has_text=patient)).to_have_count(0)
    async with aiohttp.ClientSession(headers={
            "Authorization": f"Bearer {network.operator_token(DOCTOR).get_secret_value()}"}) as http:
        async with http.get(network.controller_url(DOCTOR) + "/api/audit", params={"limit": "20"}) as resp:
            assert resp.status == 200
            entries = (await resp.json())["items"]
    assert any(e["username"] == username and e["action"] == "issued" and e["outcome"] == "refused" for e in entries)
