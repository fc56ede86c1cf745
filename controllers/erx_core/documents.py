"""Printed documents: the paper prescription (one A4 page with the pickup code's QR code) and the
dispense receipt; and reading QR codes back out of an uploaded photo, scan or PDF.

Rendering is pure (bytes out): fpdf2 lays out the page, qrcode draws the code, embedded as an 8-bit
grey PNG (Flate) that `codes_in_upload` can extract again without rendering the page.

Uploads are hostile: `codes_in_upload` accepts PNG, JPEG and PDF only (the declared type must match the
bytes), at most MAX_UPLOAD_BYTES, MAX_PIXELS per image, MAX_PDF_PAGES pages and MAX_PDF_IMAGES images;
in a PDF only image XObjects are read (never the content stream), each image's declared size is checked
before it is decoded, only a fixed set of filters is decoded, and pypdf's own output limits are lowered.
QR codes drawn as vector graphics in a PDF are not found (that would need a renderer).
"""

from __future__ import annotations

import datetime as dt
import io
import warnings
from pathlib import Path
from typing import Any

import qrcode
import zxingcpp
from fpdf import FPDF
from PIL import Image
from pypdf import PdfReader, apply_configuration
from pypdf.errors import PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, NameObject, StreamObject
from qrcode.exceptions import DataOverflowError

from erx_schemas import paper, receipt, signed

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_PIXELS = 25_000_000  # a 5000 x 5000 scan, a 12-megapixel photo twice over
MAX_PDF_PAGES = paper.MAX_THERAPY_PARTS  # a therapy's paper prescription: one page per part
MAX_PDF_IMAGES = 16
MAX_PDF_PIXELS = 2 * MAX_PIXELS  # all images of a PDF together
MAX_DECODED_BYTES = 3 * MAX_PIXELS  # what one decoded PDF stream may grow to (RGB at MAX_PIXELS)
MAX_CODES = 16
_FORM_DEPTH = 3  # image XObjects inside form XObjects inside ..., up to this depth

# Unicode fonts, where the system has one (Debian: fonts-dejavu-core); otherwise Helvetica, which only
# covers Latin-1: other characters are then printed as "?" (the QR code always holds the exact text).
FONT_CANDIDATES: tuple[tuple[Path, Path], ...] = (
    (Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")),
    (Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
     Path("/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf")),
    (Path("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"), Path("/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf")),
)
_KINDS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "application/pdf": "PDF"}
_MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}
# filters decoded in a PDF image; JBIG2 and JPX are not (pypdf would run a jbig2dec binary for JBIG2)
_DATA_FILTERS = {"/FlateDecode", "/Fl", "/LZWDecode", "/LZW", "/ASCIIHexDecode", "/AHx", "/ASCII85Decode", "/A85",
                 "/RunLengthDecode", "/RL"}
_IMAGE_FILTERS = {"/DCTDecode": "JPEG", "/DCT": "JPEG", "/CCITTFaxDecode": "TIFF", "/CCF": "TIFF"}


class UploadRejected(ValueError):
    """An upload that is not read, and why (for a 4xx answer)."""


# -- rendering -------------------------------------------------------------------------------------

def qr_png(text: str, *, box_size: int = 4, low_correction: bool = False) -> bytes:
    """`text` as a QR code (error correction M, or L if asked; quiet zone of 4), an 8-bit grey PNG.
    Raises DataOverflowError or ValueError (qrcode raises either) if it does not fit the largest QR code."""
    level = qrcode.constants.ERROR_CORRECT_L if low_correction else qrcode.constants.ERROR_CORRECT_M
    code = qrcode.QRCode(error_correction=level, border=4, box_size=box_size)
    code.add_data(text.encode("utf-8"))
    code.make(fit=True)
    out = io.BytesIO()
    code.make_image().get_image().convert("L").save(out, format="PNG", optimize=True)
    return out.getvalue()


class _Page(FPDF):
    def __init__(self, title: str) -> None:
        super().__init__(format="A4", unit="mm")
        self.set_auto_page_break(False)
        self.set_margins(18, 16, 18)
        self.set_title(title)
        self.set_creator("erx")
        self.unicode = _add_unicode_font(self)

    def font(self, size: float, bold: bool = False) -> None:
        family = "erx" if self.unicode else "helvetica"
        self.set_font(family, "B" if bold else "", size)

    def text_(self, value: str) -> str:
        return value if self.unicode else value.encode("latin-1", "replace").decode("latin-1")

    def heading(self, value: str, size: float = 16) -> None:
        self.font(size, bold=True)
        self.multi_cell(0, size * 0.5, self.text_(value), new_x="LMARGIN", new_y="NEXT", align="L")
        self.ln(2)

    def field(self, label: str, value: str, width: float = 0, label_width: float = 42) -> None:
        self.font(9)
        self.set_text_color(90, 90, 90)
        self.cell(label_width, 5.5, self.text_(label))
        self.set_text_color(0, 0, 0)
        self.font(10.5, bold=True)
        self.multi_cell(width or 0, 5.5, self.text_(value), new_x="LMARGIN", new_y="NEXT", align="L")

    def note(self, value: str, size: float = 8.5) -> None:
        self.font(size)
        self.set_text_color(60, 60, 60)
        self.multi_cell(0, size * 0.48, self.text_(value), new_x="LMARGIN", new_y="NEXT", align="L")
        self.set_text_color(0, 0, 0)


def _add_unicode_font(pdf: FPDF) -> bool:
    for regular, bold in FONT_CANDIDATES:
        if regular.is_file() and bold.is_file():
            pdf.add_font("erx", "", str(regular))
            pdf.add_font("erx", "B", str(bold))
            return True
    return False


def _date(day: dt.date) -> str:
    return day.strftime("%d.%m.%Y")


def paper_prescription_pdf(code: paper.PickupCode, text: str, *, signer_verkey: str | None = None) -> bytes:
    """The printed prescription: what it says, the pickup code `text` (`paper.pickup_code_text`) as a
    QR code, and how to verify it. Whoever holds the page can redeem it: it says so."""
    return paper_prescriptions_pdf([(code, text)], signer_verkey=signer_verkey)


def paper_prescriptions_pdf(codes: list[tuple[paper.PickupCode, str]], *, signer_verkey: str | None = None) -> bytes:
    """One page per prescription (the parts of a therapy), as `paper_prescription_pdf` prints each."""
    if not 1 <= len(codes) <= MAX_PDF_PAGES:
        raise ValueError(f"a paper prescription has 1 to {MAX_PDF_PAGES} pages, not {len(codes)}")
    pdf = _Page("Prescription")
    for code, text in codes:
        _prescription_page(pdf, code, text, signer_verkey)
    return bytes(pdf.output())


def _prescription_page(pdf: _Page, code: paper.PickupCode, text: str, signer_verkey: str | None) -> None:
    pdf.add_page()
    m = code.medication
    pdf.heading("Prescription" if code.therapy is None else
                f"Prescription, part {code.therapy.part} of {code.therapy.parts}")
    pdf.note(f"Issued {_date(code.issue_date)} by {code.prescriber.name} ({code.prescriber.identifier}), "
             f"practice DID {code.iss}", size=9)
    pdf.ln(4)
    pdf.field("Patient", code.patient_name)
    pdf.field("Born", _date(code.patient_birth_date))
    pdf.ln(2)
    pdf.field("Medication", f"{m.name}")
    pdf.field("Strength, form", f"{m.strength}, {m.form}")
    pdf.field("Code", f"{m.code} ({m.code_system})")
    pdf.field("Quantity", str(code.quantity))
    pdf.field("Dosage", code.dosage_instructions)
    pdf.field("Substitution", "a generic or equivalent product may be dispensed" if code.substitution_allowed
              else "no substitution: exactly this product")
    pdf.ln(2)
    pdf.field("Valid", f"{_date(code.valid_from)} to {_date(code.valid_until)}")
    pdf.field("Redemptions", str(code.redemptions))
    if code.therapy is not None:
        pdf.field("Therapy", f"part {code.therapy.part} of {code.therapy.parts} ({code.therapy.therapy_id})")
    pdf.field("Prescription id", code.prescription_id)

    size = 92.0
    top = max(pdf.get_y() + 6, 128.0)
    pdf.image(io.BytesIO(qr_png(text)), x=(pdf.w - size) / 2, y=top, w=size, h=size)
    pdf.set_y(top + size + 3)
    pdf.note(f"Show this code at any pharmacy. Whoever holds this page can redeem it, {code.redemptions} "
             "time(s) in all, and can read the patient's name and medication on it: keep it safe, and hand it "
             "only to someone who collects the medication for you.", size=9.5)
    pdf.ln(3)
    kid = signed.did_url(code.iss)
    verkey_line = f" The verkey when it was signed: {signer_verkey}." if signer_verkey else ""
    pdf.note("How to verify: the QR code holds \"ERX1:\" followed by a compact JWS (RFC 7515, EdDSA / Ed25519) "
             f"of type {paper.TYP}, signed with the key {kid}. Check the signature against the verkey the Indy "
             f"network holds for {code.iss} (its NYM), that this DID is on the register of prescribers, and "
             "that the prescription's redemption token (its one-time key is in the code) is neither used up nor "
             f"cancelled.{verkey_line}")


def receipt_pdf(receipt_: receipt.DispenseReceipt, jws: str, *, pharmacy_name: str | None = None,
                signer_verkey: str | None = None) -> bytes:
    """The printable dispense receipt: what was dispensed, the spend transaction, and the signed receipt
    (`jws`) as a QR code when it fits one, otherwise printed as text."""
    resource = receipt_.medication_dispense
    pdf = _Page("Dispense receipt")
    pdf.add_page()
    pdf.heading("Dispense receipt")
    pdf.note(f"Dispensed {receipt_.dispensed_at.isoformat(timespec='minutes')}"
             + (f" by {pharmacy_name}" if pharmacy_name else "") + f", pharmacy DID {receipt_.iss}", size=9)
    pdf.ln(4)
    concept = resource.get("medicationCodeableConcept") or {}
    quantity = resource.get("quantity") or {}
    pdf.field("Medication", str(concept.get("text") or ""))
    if quantity:
        pdf.field("Quantity", f"{quantity.get('value', '')} {quantity.get('unit', '')}".strip())
    for dosage in resource.get("dosageInstruction") or []:
        if isinstance(dosage, dict) and dosage.get("text"):
            pdf.field("Dosage", str(dosage["text"]))
    substitution = resource.get("substitution")
    if isinstance(substitution, dict):
        pdf.field("Substitution", "yes" if substitution.get("wasSubstituted") else "no")
    for prescription in resource.get("authorizingPrescription") or []:
        identifier = (prescription or {}).get("identifier") or {}
        if identifier.get("value"):
            pdf.field("Prescription id", str(identifier["value"]))
    pdf.field("Spend transaction", receipt_.tx_hash)
    top = max(pdf.get_y() + 6, 110.0)
    png = _fitting_qr(jws)
    if png is not None:
        size = 110.0
        pdf.image(io.BytesIO(png), x=(pdf.w - size) / 2, y=top, w=size, h=size)
        pdf.set_y(top + size + 3)
    else:
        pdf.set_y(top)
        pdf.font(6)
        pdf.multi_cell(0, 2.6, jws, new_x="LMARGIN", new_y="NEXT", align="L")
        pdf.ln(2)
    verkey_line = f" The verkey when it was signed: {signer_verkey}." if signer_verkey else ""
    pdf.note("How to verify: the signed receipt (above) is a compact JWS (RFC 7515, EdDSA / Ed25519) of type "
             f"{receipt.TYP} holding this FHIR MedicationDispense, signed with the key {signed.did_url(receipt_.iss)}. "
             f"Check the signature against the verkey the Indy network holds for {receipt_.iss}.{verkey_line}")
    return bytes(pdf.output())


def _fitting_qr(text: str) -> bytes | None:
    """A QR code of `text` at error correction M, else L (a receipt is larger than a pickup code), or None."""
    for low in (False, True):
        try:
            return qr_png(text, low_correction=low)
        except (DataOverflowError, ValueError):  # qrcode raises either when the text is too long
            continue
    return None


# -- reading uploads -------------------------------------------------------------------------------

def codes_in_upload(data: bytes, content_type: str) -> list[str]:
    """The texts of the QR codes in an uploaded PNG, JPEG or PDF, in the order found, without repeats.
    Raises UploadRejected for anything not read (too large, not of its declared type, damaged)."""
    kind = _kind(data, content_type)
    if kind == "PDF":
        return _codes_in_pdf(data)
    with _open_image(data, kind) as image:
        return _codes_in(image, [])


def _codes_in(image: Image.Image, codes: list[str]) -> list[str]:
    for found in zxingcpp.read_barcodes(image, formats=zxingcpp.BarcodeFormat.QRCode):
        if found.valid and found.text and found.text not in codes and len(codes) < MAX_CODES:
            codes.append(found.text)
    return codes


def _kind(data: bytes, content_type: str) -> str:
    if not isinstance(data, (bytes, bytearray)):
        raise UploadRejected("the upload is not bytes")
    if len(data) > MAX_UPLOAD_BYTES:
        raise UploadRejected(f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB")
    if not data:
        raise UploadRejected("the upload is empty")
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    kind = _KINDS.get(declared)
    if kind is None:
        raise UploadRejected("upload a PNG or JPEG image or a PDF (content type image/png, image/jpeg or "
                             "application/pdf)")
    if kind == "PDF":
        if b"%PDF-" not in data[:1024]:
            raise UploadRejected("the upload is declared a PDF but is none")
    elif not data.startswith(_MAGIC[kind]):
        raise UploadRejected(f"the upload is declared {declared} but is no {kind} image")
    return kind


def _open_image(data: bytes, kind: str) -> Image.Image:
    """A greyscale image, its size checked before it is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width * height > MAX_PIXELS:
                image.close()
                raise UploadRejected(f"the image has {width} x {height} pixels, more than {MAX_PIXELS:,}")
            if kind == "JPEG":
                image.draft("L", (width, height))
            grey = image.convert("L")
            image.close()
            return grey
    except UploadRejected:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            MemoryError, EOFError) as exc:
        raise UploadRejected(f"the {kind} image could not be read ({type(exc).__name__})") from None


def _codes_in_pdf(data: bytes) -> list[str]:
    limits = {name: MAX_DECODED_BYTES for name in (
        "zlib_maximum_output_length", "lzw_maximum_output_length", "run_length_maximum_output_length",
        "array_based_stream_maximum_output_length", "image_maximum_buffer_size")}
    codes: list[str] = []
    with apply_configuration(maximum_declared_stream_length=MAX_UPLOAD_BYTES, jbig2dec_binary=None, **limits):
        try:
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                raise UploadRejected("the PDF is encrypted")
            pages = len(reader.pages)
            if pages > MAX_PDF_PAGES:
                raise UploadRejected(f"the PDF has {pages} pages; upload at most {MAX_PDF_PAGES}")
            streams: list[StreamObject] = []
            for page in reader.pages:
                streams += _image_xobjects(page, 0, set())
                if len(streams) > MAX_PDF_IMAGES:
                    raise UploadRejected(f"the PDF holds more than {MAX_PDF_IMAGES} images")
            pixels = 0
            for stream in streams:
                pixels += _pixels(stream)
                if pixels > MAX_PDF_PIXELS:
                    raise UploadRejected(f"the PDF's images have more than {MAX_PDF_PIXELS:,} pixels in all")
            for stream in streams:  # one decoded image at a time
                image = _decode_pdf_image(stream)
                if image is not None:
                    with image:
                        _codes_in(image, codes)
        except UploadRejected:
            raise
        except (PyPdfError, OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError,
                RecursionError, MemoryError, IndexError, ZeroDivisionError) as exc:
            raise UploadRejected(f"the PDF could not be read ({type(exc).__name__})") from None
    return codes


def _pixels(stream: StreamObject) -> int:
    """The image's declared pixels (0 if it declares none: it is not decoded then)."""
    width, height = _resolved(stream.get("/Width")), _resolved(stream.get("/Height"))
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        return 0
    if width * height > MAX_PIXELS:
        raise UploadRejected(f"an image in the PDF has {width} x {height} pixels, more than {MAX_PIXELS:,}")
    return width * height


def _image_xobjects(node: Any, depth: int, seen: set[int]) -> list[StreamObject]:
    """The image XObjects of a page or form, recursively into forms (never the content stream)."""
    resources = _resolved(node.get("/Resources")) if isinstance(node, DictionaryObject) else None
    xobjects = _resolved(resources.get("/XObject")) if isinstance(resources, DictionaryObject) else None
    if not isinstance(xobjects, DictionaryObject):
        return []
    found: list[StreamObject] = []
    for reference in xobjects.values():
        obj = _resolved(reference)
        if not isinstance(obj, StreamObject) or id(obj) in seen:
            continue
        seen.add(id(obj))
        subtype = obj.get("/Subtype")
        if subtype == "/Image":
            found.append(obj)
        elif subtype == "/Form" and depth < _FORM_DEPTH:
            found += _image_xobjects(obj, depth + 1, seen)
        if len(found) > MAX_PDF_IMAGES:
            break
    return found


def _resolved(value: Any) -> Any:
    return value.get_object() if isinstance(value, IndirectObject) else value


def _decode_pdf_image(stream: StreamObject) -> Image.Image | None:
    """One image XObject as a greyscale image, or None if it is of a kind not read here."""
    if not _pixels(stream):
        return None
    width, height = _resolved(stream["/Width"]), _resolved(stream["/Height"])
    filters = _resolved(stream.get("/Filter"))
    names = [str(_resolved(f)) for f in filters] if isinstance(filters, ArrayObject) else \
        ([str(filters)] if isinstance(filters, NameObject) else [])
    if filters is not None and not names:
        return None
    image_filter = names[-1] if names and names[-1] in _IMAGE_FILTERS else None
    if any(name not in _DATA_FILTERS for name in (names[:-1] if image_filter else names)):
        return None  # JBIG2, JPX, or a filter after the image codec: not read
    data = stream.get_data()
    if image_filter is not None:
        return _open_image(data, _IMAGE_FILTERS[image_filter])
    return _raw_image(stream, data, width, height)


def _raw_image(stream: StreamObject, data: bytes, width: int, height: int) -> Image.Image | None:
    bits = _resolved(stream.get("/BitsPerComponent"))
    space = _resolved(stream.get("/ColorSpace"))
    palette: bytes | None = None
    if isinstance(space, ArrayObject) and space and _resolved(space[0]) == "/ICCBased":
        profile = _resolved(space[1]) if len(space) > 1 else None
        components = _resolved(profile.get("/N")) if isinstance(profile, StreamObject) else None
        space = {1: "/DeviceGray", 3: "/DeviceRGB"}.get(components)  # type: ignore[arg-type]
    elif isinstance(space, ArrayObject) and len(space) == 4 and _resolved(space[0]) in ("/Indexed", "/I"):
        base, lookup = _resolved(space[1]), _resolved(space[3])
        if base != "/DeviceRGB":
            return None
        palette = lookup.get_data() if isinstance(lookup, StreamObject) else bytes(getattr(lookup, "original_bytes",
                                                                                           b""))
        space = "/Indexed"
    mode = {("/DeviceGray", 1): "1", ("/DeviceGray", 8): "L", ("/DeviceRGB", 8): "RGB",
            ("/Indexed", 8): "P", ("/G", 8): "L", ("/RGB", 8): "RGB"}.get((space, bits))  # type: ignore[arg-type]
    if mode is None:
        return None
    channels = 3 if mode == "RGB" else 1
    row = (width + 7) // 8 if mode == "1" else width * channels
    if len(data) < row * height:
        return None
    image = Image.frombytes(mode, (width, height), bytes(data[:row * height]))
    if mode == "P":
        image.putpalette((palette or b"")[:768].ljust(768, b"\0"))
    return image.convert("L")

