"""The pickup code (erx_schemas.paper), the dispense receipt (erx_schemas.receipt) and the printed
documents (erx_core.documents): signed by ACA-Py's own signer (in-process, as in
test_signed_documents.py), read back as a pharmacy reads them, every input hostile; the QR code printed
on the PDF decodes to the same code."""

from __future__ import annotations

import datetime as dt
import io
import json
import random

import pytest
from PIL import Image, ImageFilter
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject

from erx_core import documents
from erx_core.documents import UploadRejected, codes_in_upload
from erx_schemas import paper, receipt, signed
from erx_schemas.paper import PickupCode, PickupCodeInvalid
from erx_schemas.receipt import DispenseReceipt, ReceiptInvalid
from erx_schemas.signed import Problem, SignatureInvalid
from tests.unit.test_signed_documents import Signer, wallet  # noqa: F401 - the in-process ACA-Py wallet

SECRET = "0x" + "c4" * 32
TX = "0x" + "9e" * 32


@pytest.fixture
def practice(wallet) -> Signer:  # noqa: F811
    return wallet[0]


@pytest.fixture
def pharmacy(wallet) -> Signer:  # noqa: F811
    return wallet[1]


def long_code(did: str, **changes) -> PickupCode:
    """A long but realistic prescription: German names with umlauts, a PZN, a long dosage text, part 2 of 3."""
    fields = {
        "channel": "paper", "iss": did, "prescription_id": "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
        "issue_date": dt.date(2026, 3, 2),
        "patient_name": "Maximilian Alexander Müller-Lüdenscheidt", "patient_birth_date": dt.date(1948, 3, 17),
        "medication": {"name": "Metoprololsuccinat AL 95 mg Retardtabletten", "code": "01234567",
                       "code_system": "PZN", "strength": "95 mg", "form": "Retardtablette"},
        "dosage_instructions": "1 Tablette morgens und 1/2 Tablette abends zu den Mahlzeiten unzerkaut mit "
                               "ausreichend Flüssigkeit einnehmen; bei Schwindel oder Luftnot Rücksprache mit der "
                               "Praxis halten",
        "quantity": 100, "redemptions": 3, "valid_from": dt.date(2026, 3, 2), "valid_until": dt.date(2026, 5, 30),
        "prescriber": {"name": "Dr. med. Johanna Schmidt-Wiesenthal", "identifier": "123456789"},
        "therapy": {"therapy_id": "7f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f", "part": 2, "parts": 3},
        "token": {"chain_id": 1337, "contract": "0x" + "ab" * 20, "secret_key": SECRET}}
    return PickupCode(**(fields | changes))


async def signed_code(signer: Signer, code: PickupCode) -> str:
    return await signer.sign(code.signing_payload(), typ=paper.TYP)


async def forge(signer: Signer, payload: dict, typ: str = paper.TYP) -> str:
    """A validly signed document whose payload is `payload` as given (the practice's wallet signs)."""
    return await signer.sign(payload, typ=typ)


# -- the pickup code ------------------------------------------------------------------------------

async def test_a_long_realistic_pickup_code_fits_a_qr_code_and_reads_back(practice):
    code = long_code(practice.did)
    text = paper.pickup_code_text(await signed_code(practice, code))
    # measured: 1,481 characters (QR version 32 at error correction M); ACA-Py writes the payload with
    # json.dumps' default separators and \u escapes for non-ASCII characters
    print(f"pickup code: {len(text)} characters")
    assert len(text) < 1500
    jws = paper.parse_pickup_code(f"  {text}\r\n")
    assert paper.pickup_signer(jws) == practice.did
    opened = paper.open_pickup_code(jws, practice.verkey)
    assert opened == code and opened.token.secret_key.get_secret_value() == SECRET
    assert opened.token.address.startswith("0x")


def test_the_token_key_is_revealed_only_in_the_signing_payload():
    code = long_code("Th7MpTaRZVRYnPiabds81Y")
    payload = code.signing_payload()
    assert payload["token"] == {"chain": 1337, "contract": "0x" + "ab" * 20, "key": SECRET}
    for shown in (repr(code), str(code), code.model_dump_json(), json.dumps(code.model_dump(mode="json"))):
        assert SECRET not in shown and SECRET[2:] not in shown
    # the wire names are the short ones; no None is written
    assert set(payload) == {"v", "ch", "iss", "id", "issued", "patient", "born", "med", "dosage", "qty", "subst",
                            "uses", "from", "until", "by", "therapy", "token"}
    assert "therapy" not in long_code("Th7MpTaRZVRYnPiabds81Y", therapy=None).signing_payload()


def test_a_code_too_long_for_a_qr_code_is_refused_when_it_is_made():
    code = long_code("Th7MpTaRZVRYnPiabds81Y", dosage_instructions="ä" * 500, patient_name="Ö" * 200)
    payload = json.dumps(code.signing_payload())
    fake = ".".join([signed.b64url_encode(b'{"alg": "EdDSA", "kid": "did:sov:Th7MpTaRZVRYnPiabds81Y#key-1"}'),
                     signed.b64url_encode(payload.encode()), signed.b64url_encode(bytes(64))])
    with pytest.raises(ValueError, match="more than a QR code holds"):
        paper.pickup_code_text(fake)


PAYLOAD_PROBLEMS = {
    "an unknown field": lambda p: p.update(extra=1),
    "the Python name instead of the wire name": lambda p: p.update(quantity=p.pop("qty")),
    "a number as text": lambda p: p.update(qty="100"),
    "a bool as number": lambda p: p.update(subst=1),
    "no token": lambda p: p.pop("token"),
    "a short token key": lambda p: p["token"].update(key="0x1234"),
    "a token key with an unknown field": lambda p: p["token"].update(address="0x" + "ab" * 20),
    "another version": lambda p: p.update(v=2),
    "another channel": lambda p: p.update(ch="fax"),
    "an unknown code system": lambda p: p["med"].update(system="XYZ"),
    "a bad PZN": lambda p: p["med"].update(code="1234"),
    "a control character in a name": lambda p: p.update(patient="Max\u0000Muster"),
    "a bidi override in the dosage": lambda p: p.update(dosage="1 \u202etablet"),
    "a name too long": lambda p: p.update(patient="x" * 201),
    "a window backwards": lambda p: p.update(until="2026-03-01"),
    "a window over a year": lambda p: p.update(until="2027-03-03"),
    "a date not ISO": lambda p: p.update(born="17.03.1948"),
    "born after the issue": lambda p: p.update(born="2026-03-03"),
    "part of fewer parts": lambda p: p["therapy"].update(part=4),
    "too many parts": lambda p: p["therapy"].update(part=1, of=13),
    "no redemptions": lambda p: p.update(uses=0),
    "an issuer no DID": lambda p: p.update(iss="did:sov:../x"),
}


@pytest.mark.parametrize("problem", PAYLOAD_PROBLEMS)
async def test_a_signed_payload_that_is_no_valid_pickup_code_is_refused(practice, problem):
    payload = long_code(practice.did).signing_payload()
    PAYLOAD_PROBLEMS[problem](payload)
    jws = await forge(practice, payload)
    with pytest.raises((PickupCodeInvalid, SignatureInvalid)) as caught:
        paper.open_pickup_code(jws, practice.verkey)
    assert SECRET not in str(caught.value) and SECRET[2:] not in str(caught.value)


async def test_a_pickup_code_naming_another_issuer_than_its_signer_is_refused(practice, pharmacy):
    jws = await signed_code(pharmacy, long_code(practice.did))
    with pytest.raises(SignatureInvalid) as caught:
        paper.open_pickup_code(jws, pharmacy.verkey)
    assert caught.value.reason == Problem.SIGNER_MISMATCH


async def test_a_forged_pickup_code_fails(practice, pharmacy):
    genuine = await signed_code(practice, long_code(practice.did))
    header, payload, signature = genuine.split(".")
    body = json.loads(signed.b64url_decode(payload, "payload"))
    body["qty"] = 1000
    for forged in (".".join([header, signed.b64url_encode(json.dumps(body).encode()), signature]),
                   ".".join([header, payload, (await signed_code(pharmacy, long_code(pharmacy.did))).split(".")[2]]),
                   ".".join([*(await signed_code(practice, long_code(practice.did, quantity=5))).split(".")[:2],
                             signature])):
        with pytest.raises(SignatureInvalid) as caught:
            paper.open_pickup_code(forged, practice.verkey)
        assert caught.value.reason == Problem.BAD_SIGNATURE


async def test_a_receipt_is_no_pickup_code_and_a_pickup_code_no_receipt(practice):
    code_jws = await signed_code(practice, long_code(practice.did))
    receipt_jws = await practice.sign(a_receipt(practice.did).signing_payload(), typ=receipt.TYP)
    for call in (lambda: paper.open_pickup_code(receipt_jws, practice.verkey),
                 lambda: paper.pickup_signer(receipt_jws),
                 lambda: receipt.open_receipt(code_jws, practice.verkey),
                 lambda: receipt.receipt_signer(code_jws)):
        with pytest.raises(SignatureInvalid) as caught:
            call()
        assert caught.value.reason == Problem.WRONG_TYPE


@pytest.mark.parametrize("text, message", [
    (None, "is text"), (b"ERX1:a.b.c", "is text"), ("", "starts with ERX1:"), ("x" * 4001, "at most 4000"),
    ("erx1:a.b.c", "upper case"), ("ERX2:a.b.c", "starts with ERX1:"), ("https://example.org/ERX1:a.b.c", "starts"),
    ("ERX1:", "three base64url parts"), ("ERX1:a.b", "three base64url parts"), ("ERX1:a. b.c", "three"),
    ("ERX1:a.b.c\nERX1:a.b.c", "three"), ("ERX1:a.b.ç", "three"), ("ERX1:a.b.c=", "three"),
    ("ERX1:a.b.c.d", "three"), ("\u00a0ERX1:a.b.c", "starts with ERX1:"),
])
def test_hostile_pickup_texts_are_refused_with_a_message(text, message):
    with pytest.raises(ValueError, match=message):
        paper.parse_pickup_code(text)


def test_parse_pickup_code_only_checks_the_form():
    assert paper.parse_pickup_code("ERX1:a.b.c") == "a.b.c"
    with pytest.raises(SignatureInvalid):
        paper.pickup_signer("a.b.c")


# -- the dispense receipt -------------------------------------------------------------------------

AT = dt.datetime(2026, 3, 5, 10, 15, tzinfo=dt.UTC)


def medication_dispense(**changes) -> dict:
    """Shaped as erx_schemas.fhir.medication_dispense writes it."""
    resource = {
        "resourceType": "MedicationDispense", "id": "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
        "contained": [{"resourceType": "Patient", "id": "patient", "name": [{"text": "Erika Mustermann"}],
                       "birthDate": "1964-08-12"},
                      {"resourceType": "Organization", "id": "pharmacy", "name": "Löwen-Apotheke"}],
        "identifier": [{"system": receipt.TOKEN_SPEND_TX_SYSTEM, "value": TX}],
        "status": "completed",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.whocc.no/atc", "code": "M01AE01"}],
                                      "text": "Ibuprofen 400 mg tablet"},
        "subject": {"reference": "#patient"},
        "performer": [{"actor": {"reference": "#pharmacy", "display": "Löwen-Apotheke"}}],
        "authorizingPrescription": [{"type": "MedicationRequest", "identifier": {
            "system": "urn:erx:prescription-id", "value": "7f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"}}],
        "quantity": {"value": 20, "unit": "tablet"},
        "whenHandedOver": AT.isoformat(),
        "dosageInstruction": [{"text": "1 tablet up to 3 times a day after meals"}],
        "substitution": {"wasSubstituted": True, "reason": [{"text": "generic"}]},
    }
    return resource | changes


def a_receipt(did: str, **changes) -> DispenseReceipt:
    return DispenseReceipt(**({"iss": did, "tx_hash": TX, "dispensed_at": AT,
                               "medication_dispense": medication_dispense()} | changes))


async def test_a_receipt_is_signed_and_verified_against_the_pharmacys_verkey(pharmacy, practice):
    issued = a_receipt(pharmacy.did)
    jws = await pharmacy.sign(issued.signing_payload(), typ=receipt.TYP)
    print(f"receipt: {len(jws)} characters")
    assert receipt.receipt_signer(jws) == pharmacy.did
    assert receipt.open_receipt(jws, pharmacy.verkey) == issued
    with pytest.raises(SignatureInvalid) as caught:
        receipt.open_receipt(jws, practice.verkey)
    assert caught.value.reason == Problem.BAD_SIGNATURE


@pytest.mark.parametrize("resource, message", [
    ({"resourceType": "MedicationRequest"}, "resourceType"),
    (medication_dispense(quantity="many"), "not a valid FHIR"),
    (medication_dispense(contained=[{"resourceType": "NoSuchThing"}]), "not a valid FHIR"),
    (medication_dispense(note=[{"text": "key " + SECRET}]), "32-byte hex"),
    (medication_dispense(note=[{"text": SECRET[2:] + "00"}]), "32-byte hex"),
    (medication_dispense(identifier=[{"system": receipt.TOKEN_SPEND_TX_SYSTEM, "value": "0x" + "11" * 32}]),
     "32-byte hex"),
    (medication_dispense(whenHandedOver="2026-03-06T10:15:00+00:00"), "whenHandedOver"),
    (medication_dispense(whenHandedOver="2026-03-05T10:15:00"), "not a valid FHIR|whenHandedOver"),
    (medication_dispense(note=[{"text": "x" * 20_000}]), "longer than"),
])
def test_a_receipt_holds_a_valid_medication_dispense_and_no_other_secret(resource, message):
    with pytest.raises(ValueError, match=message):
        a_receipt("Th7MpTaRZVRYnPiabds81Y", medication_dispense=resource)


def test_a_receipt_wants_an_aware_time_and_a_transaction_hash():
    for changes in ({"dispensed_at": AT.replace(tzinfo=None)}, {"tx_hash": "0x1234"}, {"iss": "did:key:z6Mk"}):
        with pytest.raises(ValueError):
            a_receipt("Th7MpTaRZVRYnPiabds81Y", **changes)


async def test_a_signed_payload_that_is_no_valid_receipt_is_refused(pharmacy):
    payload = a_receipt(pharmacy.did).signing_payload() | {"token_key": SECRET}
    jws = await pharmacy.sign(payload, typ=receipt.TYP)
    with pytest.raises(ReceiptInvalid) as caught:
        receipt.open_receipt(jws, pharmacy.verkey)
    assert SECRET not in str(caught.value)


# -- printed documents and uploads ------------------------------------------------------------------

async def test_the_paper_prescription_pdf_carries_the_code_in_its_qr(practice):
    code = long_code(practice.did)
    text = paper.pickup_code_text(await signed_code(practice, code))
    pdf = documents.paper_prescription_pdf(code, text, signer_verkey=practice.verkey)
    assert pdf.startswith(b"%PDF-") and len(pdf) < 200_000
    assert SECRET.encode() not in pdf and SECRET[2:].encode() not in pdf
    assert codes_in_upload(pdf, "application/pdf") == [text]
    found = paper.parse_pickup_code(codes_in_upload(pdf, "application/pdf; charset=binary")[0])
    assert paper.open_pickup_code(found, practice.verkey) == code


async def test_a_therapys_paper_prescription_has_a_page_and_a_code_per_part(practice):
    therapy_id = "8a1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    texts, pages = [], []
    for part in (1, 2, 3):
        start = dt.date(2026, 3, 2) + dt.timedelta(days=28 * (part - 1))
        code = long_code(practice.did, prescription_id=f"{part}f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                         valid_from=start, valid_until=start + dt.timedelta(days=27),
                         therapy={"therapy_id": therapy_id, "part": part, "parts": 3})
        texts.append(paper.pickup_code_text(await signed_code(practice, code)))
        pages.append((code, texts[-1]))
    pdf = documents.paper_prescriptions_pdf(pages)
    assert codes_in_upload(pdf, "application/pdf") == texts
    with pytest.raises(ValueError, match="1 to"):
        documents.paper_prescriptions_pdf([])


async def test_the_receipt_pdf_carries_the_signed_receipt(pharmacy):
    issued = a_receipt(pharmacy.did)
    jws = await pharmacy.sign(issued.signing_payload(), typ=receipt.TYP)
    pdf = documents.receipt_pdf(issued, jws, pharmacy_name="Löwen-Apotheke", signer_verkey=pharmacy.verkey)
    assert codes_in_upload(pdf, "application/pdf") == [jws]
    assert receipt.open_receipt(codes_in_upload(pdf, "application/pdf")[0], pharmacy.verkey) == issued


async def test_without_a_unicode_font_the_page_is_printed_in_latin_1(practice, monkeypatch):
    monkeypatch.setattr(documents, "FONT_CANDIDATES", ())
    code = long_code(practice.did, patient_name="Дмитрий Łukasz Müller")
    text = paper.pickup_code_text(await signed_code(practice, code))
    pdf = documents.paper_prescription_pdf(code, text)
    assert codes_in_upload(pdf, "application/pdf") == [text]  # the QR code keeps the exact name


async def test_a_photo_of_the_code_is_read(practice):
    text = paper.pickup_code_text(await signed_code(practice, long_code(practice.did)))
    qr = Image.open(io.BytesIO(documents.qr_png(text, box_size=6))).convert("L")
    photo = Image.new("L", (qr.width + 600, qr.height + 400), 200)
    photo.paste(qr.rotate(7, expand=True, fillcolor=255), (250, 180))
    photo = photo.filter(ImageFilter.GaussianBlur(1))
    jpeg, png = io.BytesIO(), io.BytesIO()
    photo.convert("RGB").save(jpeg, format="JPEG", quality=85)
    photo.save(png, format="PNG")
    assert codes_in_upload(jpeg.getvalue(), "image/jpeg") == [text]
    assert codes_in_upload(png.getvalue(), "image/png") == [text]
    blank = io.BytesIO()
    Image.new("L", (200, 200), 255).save(blank, format="PNG")
    assert codes_in_upload(blank.getvalue(), "image/png") == []


def png_bytes(size: tuple[int, int], mode: str = "1") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, 1).save(out, format="PNG", optimize=True)
    return out.getvalue()


def pdf_with_image(width: int, height: int, filter_: str | None = "/FlateDecode", data: bytes = b"x",
                   pages: int = 1) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        page = writer.add_blank_page(200, 200)
        image = DecodedStreamObject()
        image.set_data(data)
        image.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Image"),
                      NameObject("/Width"): NumberObject(width), NameObject("/Height"): NumberObject(height),
                      NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                      NameObject("/BitsPerComponent"): NumberObject(8)})
        if filter_:
            image[NameObject("/Filter")] = NameObject(filter_)
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/XObject"): DictionaryObject(
            {NameObject("/Im0"): writer._add_object(image)})})
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pixel_bomb_is_refused_before_it_is_decoded():
    bomb = png_bytes((6000, 6000))  # 36 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    with pytest.raises(UploadRejected, match="pixels"):
        codes_in_upload(bomb, "image/png")
    with pytest.raises(UploadRejected, match="pixels"):
        codes_in_upload(pdf_with_image(60_000, 60_000), "application/pdf")


@pytest.mark.parametrize("data, content_type, message", [
    (b"", "image/png", "empty"),
    (b"x" * (documents.MAX_UPLOAD_BYTES + 1), "image/png", "larger than"),
    (png_bytes((10, 10)), "image/gif", "upload a PNG or JPEG"),
    (png_bytes((10, 10)), "", "upload a PNG or JPEG"),
    (png_bytes((10, 10)), "image/jpeg", "is no JPEG"),
    (b"GIF89a" + bytes(40), "image/png", "is no PNG"),
    (b"\x89PNG\r\n\x1a\n" + bytes(40), "image/png", "could not be read"),
    (b"%PDF-1.7\n garbage", "application/pdf", "could not be read"),
    (png_bytes((10, 10)), "application/pdf", "is none"),
    (pdf_with_image(10, 10, pages=documents.MAX_PDF_PAGES + 1), "application/pdf", "pages"),
])
def test_hostile_uploads_are_refused_with_a_reason(data, content_type, message):
    with pytest.raises(UploadRejected, match=message):
        codes_in_upload(data, content_type)


def test_pdf_images_of_kinds_not_read_are_skipped():
    # JBIG2 (pypdf would run an external decoder), JPX, and a declared size the data does not have
    for filter_ in ("/JBIG2Decode", "/JPXDecode"):
        assert codes_in_upload(pdf_with_image(10, 10, filter_), "application/pdf") == []
    assert codes_in_upload(pdf_with_image(100, 100, None, data=b"short"), "application/pdf") == []


def test_a_flate_bomb_in_a_pdf_is_refused():
    import zlib

    writer = PdfWriter()
    page = writer.add_blank_page(200, 200)
    image = DecodedStreamObject()
    image._data = zlib.compress(bytes(documents.MAX_DECODED_BYTES + 1), 9)  # ~75 MB from ~75 kB
    image.update({NameObject("/Type"): NameObject("/XObject"), NameObject("/Subtype"): NameObject("/Image"),
                  NameObject("/Width"): NumberObject(5000), NameObject("/Height"): NumberObject(5000),
                  NameObject("/ColorSpace"): NameObject("/DeviceGray"), NameObject("/BitsPerComponent"): NumberObject(8),
                  NameObject("/Filter"): NameObject("/FlateDecode")})
    page[NameObject("/Resources")] = DictionaryObject({NameObject("/XObject"): DictionaryObject(
        {NameObject("/Im0"): writer._add_object(image)})})
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(UploadRejected, match="could not be read"):
        codes_in_upload(out.getvalue(), "application/pdf")


def test_random_bytes_are_refused_or_read_never_crash():
    rng = random.Random(15)
    for _ in range(40):
        base = pdf_with_image(20, 20)
        mutated = bytearray(base)
        for _ in range(rng.randint(1, 30)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            assert isinstance(codes_in_upload(bytes(mutated), "application/pdf"), list)
        except UploadRejected:
            pass
