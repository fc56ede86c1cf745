"""Documents signed with an organisation's public DID key: a compact JWS (RFC 7515), EdDSA / Ed25519.

The format is what ACA-Py 1.7 produces with `POST /wallet/jwt/sign {"did": <public DID>, "payload": ...,
"headers": {"typ": ...}}` (acapy_agent.wallet.jwt.jwt_sign), so the key never leaves the agent's wallet:

    BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature)      (no padding)
    header  = {"typ": <given, default "JWT">, "alg": "EdDSA", "kid": "did:sov:<DID>#key-1"}
    payload = json.dumps(payload)  (ASCII, Python's default separators)

ACA-Py resolves the kid `did:sov:<DID>#key-1` through its did:sov resolver, that is the NYM's verkey on
the Indy ledger, and signs with the wallet's key for that verkey. A verifier therefore needs only the DID
named by the kid and the verkey the ledger holds for it: `verify(jws, verkey)`.

Pure functions on hostile input: every failure is a `SignatureInvalid` with a `Problem` and a detail that
never quotes the document (it may carry a secret, such as a token key).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from enum import StrEnum
from typing import Any

import base58
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict

ALG = "EdDSA"
KEY_FRAGMENT = "key-1"  # ACA-Py's (and the Universal Resolver's) id of a did:sov DID's one key
MAX_JWS_CHARS = 16_384  # far above a QR code's capacity (2,953 bytes) and any receipt
MAX_NESTING = 16  # JSON depth of header and payload
HEADER_KEYS = frozenset({"alg", "kid", "typ"})  # nothing else: no crit, jwk, x5u, b64 ...

_B58 = "[1-9A-HJ-NP-Za-km-z]"
_INDY_DID = re.compile(rf"{_B58}{{21,22}}")
_KID = re.compile(rf"did:sov:({_B58}{{21,22}})#{KEY_FRAGMENT}")
_SEGMENT = r"[A-Za-z0-9_-]+"
_COMPACT = re.compile(rf"({_SEGMENT})\.({_SEGMENT})\.({_SEGMENT})")
_VERKEY = re.compile(rf"~?{_B58}{{21,44}}")


class Problem(StrEnum):
    MALFORMED = "malformed"  # not a compact JWS of this profile (segments, base64url, JSON, header keys)
    UNSUPPORTED_ALG = "unsupported_alg"  # alg is not EdDSA
    UNSUPPORTED_KID = "unsupported_kid"  # kid is not did:sov:<indy DID>#key-1
    WRONG_TYPE = "wrong_type"  # typ is not the kind of document expected (a receipt is no pickup code)
    BAD_KEY = "bad_key"  # the verkey given is no Ed25519 public key
    BAD_SIGNATURE = "bad_signature"  # the signature does not verify under the verkey
    SIGNER_MISMATCH = "signer_mismatch"  # the kid's DID is not the expected one, or not the payload's iss
    BAD_PAYLOAD = "bad_payload"  # the signed payload is no JSON object


class SignatureInvalid(ValueError):
    """A signed document that must not be trusted, with why (`reason`) and a detail for people."""

    def __init__(self, reason: Problem, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def did_url(did: str) -> str:
    """The kid ACA-Py puts for an (unqualified or did:sov) Indy DID: `did:sov:<DID>#key-1`."""
    nym = unqualified(did)
    if not _INDY_DID.fullmatch(nym):
        raise ValueError("not an Indy DID (21 or 22 base58 characters, optionally did:sov:)")
    return f"did:sov:{nym}#{KEY_FRAGMENT}"


def unqualified(did: str) -> str:
    return did.removeprefix("did:sov:")


def full_verkey(did: str, verkey: str) -> str:
    """The full base58 verkey: the ledger may hold the abbreviated `~` form, the DID's 16 bytes being the
    key's first half."""
    if verkey.startswith("~"):
        return base58.b58encode(base58.b58decode(unqualified(did)) + base58.b58decode(verkey[1:])).decode()
    return verkey


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str, what: str) -> bytes:
    """Strict base64url without padding; only the canonical encoding of its bytes (so one document has
    one spelling, and a code can serve as its own key)."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise SignatureInvalid(Problem.MALFORMED, f"the {what} is not base64url") from None
    if b64url_encode(data) != segment:
        raise SignatureInvalid(Problem.MALFORMED, f"the {what} is not canonical base64url")
    return data


def _json_object(raw: bytes, what: str, problem: Problem) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        text = raw.decode("utf-8")
        value = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # ValueError covers JSONDecodeError, duplicate keys, NaN/Infinity and ints of > 4300 digits
        raise SignatureInvalid(problem, f"the {what} is not a JSON object (UTF-8, no duplicate keys)") from None
    if not isinstance(value, dict):
        raise SignatureInvalid(problem, f"the {what} is not a JSON object")
    if _depth(value) > MAX_NESTING:
        raise SignatureInvalid(problem, f"the {what} is nested more than {MAX_NESTING} levels deep")
    return value


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


class SignedDocument(BaseModel):
    """A compact JWS taken apart, its signature NOT checked yet. `signer_did` is the DID the kid names:
    the one whose ledger verkey `verify` needs. The payload stays undecoded until it is verified."""

    model_config = ConfigDict(frozen=True, hide_input_in_errors=True)

    header: dict[str, Any]
    typ: str | None
    kid: str
    signer_did: str  # unqualified, as ACA-Py's public DIDs and the ledger's NYMs are
    signing_input: bytes  # ASCII BASE64URL(header) "." BASE64URL(payload): what was signed
    payload_segment: str
    signature: bytes

    @classmethod
    def parse(cls, jws: object) -> SignedDocument:
        if not isinstance(jws, str):
            raise SignatureInvalid(Problem.MALFORMED, "a signed document is a string")
        if len(jws) > MAX_JWS_CHARS:
            raise SignatureInvalid(Problem.MALFORMED, f"longer than {MAX_JWS_CHARS} characters")
        match = _COMPACT.fullmatch(jws)
        if match is None:
            raise SignatureInvalid(Problem.MALFORMED, "not a compact JWS: three base64url parts separated by dots")
        header_segment, payload_segment, signature_segment = match.groups()
        header = _json_object(b64url_decode(header_segment, "header"), "header", Problem.MALFORMED)
        unknown = sorted(set(header) - HEADER_KEYS)
        if unknown:
            shown = ", ".join(repr(k[:20]) for k in unknown[:5])
            raise SignatureInvalid(Problem.MALFORMED, f"header parameters not allowed here: {shown}")
        if header.get("alg") != ALG:
            raise SignatureInvalid(Problem.UNSUPPORTED_ALG, f"alg must be {ALG} (Ed25519)")
        kid = header.get("kid")
        kid_match = _KID.fullmatch(kid) if isinstance(kid, str) else None
        if kid_match is None:
            raise SignatureInvalid(Problem.UNSUPPORTED_KID, f"kid must be did:sov:<Indy DID>#{KEY_FRAGMENT}")
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise SignatureInvalid(Problem.MALFORMED, "typ must be a string")
        signature = b64url_decode(signature_segment, "signature")
        if len(signature) != 64:
            raise SignatureInvalid(Problem.MALFORMED, "an Ed25519 signature has 64 bytes")
        return cls(header=header, typ=typ, kid=kid, signer_did=kid_match.group(1),
                   signing_input=f"{header_segment}.{payload_segment}".encode("ascii"),
                   payload_segment=payload_segment, signature=signature)


def verify_key(did: str, verkey_base58: object) -> VerifyKey:
    """The Ed25519 public key of a base58 verkey (full or `~abbreviated` for `did`)."""
    if not isinstance(verkey_base58, str) or not _VERKEY.fullmatch(verkey_base58):
        raise SignatureInvalid(Problem.BAD_KEY, "a verkey is 32 bytes in base58")
    try:
        raw = base58.b58decode(full_verkey(did, verkey_base58))
    except ValueError:
        raise SignatureInvalid(Problem.BAD_KEY, "a verkey is 32 bytes in base58") from None
    if len(raw) != 32:
        raise SignatureInvalid(Problem.BAD_KEY, "a verkey is 32 bytes in base58")
    try:
        return VerifyKey(raw)
    except (CryptoError, ValueError, TypeError):
        raise SignatureInvalid(Problem.BAD_KEY, "not an Ed25519 public key") from None


def verify(jws: object, verkey_base58: object, *, did: str | None = None, typ: str | None = None) -> dict[str, Any]:
    """The payload of `jws` if its signature verifies under `verkey_base58` (the ledger's verkey for the
    kid's DID). With `did`, the kid must name that DID; with `typ`, the header must say that type. A
    payload's `iss`, when present, must be the kid's DID. Anything else raises `SignatureInvalid`."""
    doc = SignedDocument.parse(jws)
    if typ is not None and doc.typ != typ:
        raise SignatureInvalid(Problem.WRONG_TYPE, f"expected a document of type {typ}")
    if did is not None and unqualified(did) != doc.signer_did:
        raise SignatureInvalid(Problem.SIGNER_MISMATCH, f"signed by {doc.signer_did}, not by {unqualified(did)}")
    key = verify_key(doc.signer_did, verkey_base58)
    try:
        key.verify(doc.signing_input, doc.signature)  # libsodium: rejects non-canonical and small-order
    except (BadSignatureError, CryptoError, ValueError):
        raise SignatureInvalid(Problem.BAD_SIGNATURE, f"the signature does not verify under the verkey of "
                                                      f"{doc.signer_did}") from None
    payload = _json_object(b64url_decode(doc.payload_segment, "payload"), "payload", Problem.BAD_PAYLOAD)
    iss = payload.get("iss")
    if iss is not None and (not isinstance(iss, str) or unqualified(iss) != doc.signer_did):
        raise SignatureInvalid(Problem.SIGNER_MISMATCH, f"the payload's issuer is not the signer {doc.signer_did}")
    return payload
