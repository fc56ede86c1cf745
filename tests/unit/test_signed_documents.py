"""Signed documents (erx_schemas.signed): ACA-Py 1.7's own JWS signer, run in-process on an in-memory
Askar wallet, produces what `verify` accepts; forgeries and hostile input raise `SignatureInvalid`
with a reason, never anything else. And the agent port's `sign_jws` / `did_verkey` against a fake
admin API (as in test_agent_port.py)."""

from __future__ import annotations

import json

import base58
import pytest
from acapy_agent.config.injection_context import InjectionContext
from acapy_agent.utils.testing import create_test_profile
from acapy_agent.wallet.base import BaseWallet
from acapy_agent.wallet.did_method import SOV, DIDMethods
from acapy_agent.wallet.jwt import jwt_sign
from acapy_agent.wallet.key_type import ED25519, KeyTypes
from acapy_agent.wallet.keys.manager import MultikeyManager, verkey_to_multikey
from aiohttp import web
from erx_core.acapy_admin import AdminApiError
from erx_schemas import signed
from erx_schemas.signed import Problem, SignatureInvalid, SignedDocument, verify
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import admin_of

TYP = "erx-test+jwt"


class Signer:
    """ACA-Py's `jwt_sign` on an in-memory wallet: the kid is bound as the agent binds it on first use
    (it resolves `did:sov:<did>#key-1` on the ledger; here there is no ledger, so it is bound directly)."""

    def __init__(self, profile, did: str, verkey: str):
        self.profile, self.did, self.verkey = profile, did, verkey

    async def sign(self, payload: dict, typ: str | None = TYP, kid_did: str | None = None) -> str:
        headers = {"typ": typ} if typ else {}
        return await jwt_sign(self.profile, headers, payload, verification_method=signed.did_url(kid_did or self.did))


@pytest.fixture(scope="module")
async def wallet():
    context = InjectionContext(settings={"wallet.type": "askar", "auto_provision": True,
                                         "wallet.key": "5BngFuBpS4wjFfVFCtPqoix3ZXG2XR8XJ7qosUzMak7R",
                                         "wallet.key_derivation_method": "RAW"})
    context.injector.bind_instance(DIDMethods, DIDMethods())
    context.injector.bind_instance(KeyTypes, KeyTypes())
    profile = await create_test_profile(settings=dict(context.settings), context=context)
    signers = []
    async with profile.session() as session:
        for seed in ("practice".ljust(32, "0"), "impostor".ljust(32, "0")):
            info = await session.inject(BaseWallet).create_local_did(SOV, ED25519, seed=seed)
            await MultikeyManager(session).update(verkey_to_multikey(info.verkey, alg="ed25519"),
                                                  signed.did_url(info.did))
            signers.append(Signer(profile, info.did, info.verkey))
    yield signers
    await profile.close()


@pytest.fixture
def practice(wallet) -> Signer:
    return wallet[0]


@pytest.fixture
def impostor(wallet) -> Signer:
    return wallet[1]


def parts(jws: str) -> list[str]:
    return jws.split(".")


def b64json(value: object) -> str:
    return signed.b64url_encode(json.dumps(value).encode())


def refused(jws: object, verkey: object, reason: Problem, **kw) -> SignatureInvalid:
    with pytest.raises(SignatureInvalid) as caught:
        verify(jws, verkey, **kw)
    assert caught.value.reason == reason, caught.value
    return caught.value


# -- what ACA-Py produces, and what verifies -------------------------------------------------------

async def test_acapy_signs_a_compact_jws_that_verifies_under_the_dids_verkey(practice):
    payload = {"iss": practice.did, "name": "Müller", "n": 3, "nested": {"list": [1, "x"]}}
    jws = await practice.sign(payload)
    doc = SignedDocument.parse(jws)
    # ACA-Py 1.7: the caller's headers first, then alg and kid; kid did:sov:<DID>#key-1
    assert doc.header == {"typ": TYP, "alg": "EdDSA", "kid": f"did:sov:{practice.did}#key-1"}
    assert doc.signer_did == practice.did and doc.typ == TYP
    assert verify(jws, practice.verkey) == payload
    assert verify(jws, practice.verkey, did=practice.did, typ=TYP) == payload
    assert verify(jws, practice.verkey, did=f"did:sov:{practice.did}") == payload
    # ACA-Py's default typ
    assert SignedDocument.parse(await practice.sign({"a": 1}, typ=None)).typ == "JWT"


async def test_an_abbreviated_verkey_as_the_ledger_may_hold_it_verifies(practice):
    jws = await practice.sign({"a": 1})
    raw = base58.b58decode(practice.verkey)
    assert base58.b58decode(practice.did) == raw[:16]  # a DID made from its first key
    abbreviated = "~" + base58.b58encode(raw[16:]).decode()
    assert signed.full_verkey(practice.did, abbreviated) == practice.verkey
    assert verify(jws, abbreviated) == {"a": 1}


async def test_an_edited_payload_fails(practice):
    jws = await practice.sign({"iss": practice.did, "quantity": 20})
    header, _, signature = parts(jws)
    forged = ".".join([header, b64json({"iss": practice.did, "quantity": 200}), signature])
    refused(forged, practice.verkey, Problem.BAD_SIGNATURE)


async def test_another_dids_signature_fails(practice, impostor):
    # signed by the impostor, but naming the practice's key
    jws = await impostor.sign({"iss": practice.did, "quantity": 20})
    refused(jws, practice.verkey, Problem.SIGNER_MISMATCH, did=practice.did)
    refused(jws, impostor.verkey, Problem.SIGNER_MISMATCH)  # valid signature, but iss is not the signer
    theirs = await impostor.sign({"quantity": 20})
    header, payload, _ = parts(await practice.sign({"quantity": 20}))
    refused(".".join([header, payload, parts(theirs)[2]]), practice.verkey, Problem.BAD_SIGNATURE)
    refused(theirs, practice.verkey, Problem.BAD_SIGNATURE)  # the practice's verkey for the impostor's kid


async def test_a_copied_signature_on_other_content_fails(practice):
    one = await practice.sign({"iss": practice.did, "quantity": 20})
    other = await practice.sign({"iss": practice.did, "quantity": 100})
    refused(".".join(parts(other)[:2] + parts(one)[2:]), practice.verkey, Problem.BAD_SIGNATURE)
    # the header is signed too: another typ under the same signature fails
    header = b64json({"typ": "erx-other+jwt", "alg": "EdDSA", "kid": signed.did_url(practice.did)})
    refused(".".join([header, *parts(one)[1:]]), practice.verkey, Problem.BAD_SIGNATURE)


async def test_the_type_and_the_expected_signer_are_checked(practice, impostor):
    jws = await practice.sign({"a": 1})
    refused(jws, practice.verkey, Problem.WRONG_TYPE, typ="erx-pickup+jwt")
    refused(jws, practice.verkey, Problem.SIGNER_MISMATCH, did=impostor.did)
    refused(await practice.sign({"iss": 7}), practice.verkey, Problem.SIGNER_MISMATCH)


async def test_a_non_canonical_signature_encoding_is_refused(practice):
    jws = await practice.sign({"a": 1})
    header, payload, signature = parts(jws)
    # 64 bytes in 86 characters leave 4 unused bits in the last one: another spelling of the same bytes
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    respelled = signature[:-1] + alphabet[last ^ 1]
    assert signed.base64.urlsafe_b64decode(respelled + "==") == signed.base64.urlsafe_b64decode(signature + "==")
    refused(f"{header}.{payload}.{respelled}", practice.verkey, Problem.MALFORMED)


# -- hostile documents and keys --------------------------------------------------------------------

def header(**fields) -> str:
    return b64json({"typ": TYP, "alg": "EdDSA", "kid": "did:sov:Th7MpTaRZVRYnPiabds81Y#key-1"} | fields)


SIG = signed.b64url_encode(bytes(64))
PAYLOAD = b64json({"a": 1})
HOSTILE = {
    "not a string": (None, Problem.MALFORMED),
    "bytes": (b"a.b.c", Problem.MALFORMED),
    "empty": ("", Problem.MALFORMED),
    "two parts": (f"{header()}.{PAYLOAD}", Problem.MALFORMED),
    "four parts": (f"{header()}.{PAYLOAD}.{SIG}.{SIG}", Problem.MALFORMED),
    "an empty part": (f"{header()}..{SIG}", Problem.MALFORMED),
    "padding": (f"{header()}.{PAYLOAD}.{SIG}==", Problem.MALFORMED),
    "white space": (f" {header()}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "a line break": (f"{header()}.{PAYLOAD}.{SIG}\n", Problem.MALFORMED),
    "non-ASCII": (f"{header()}.{PAYLOAD}.{SIG[:-1]}é", Problem.MALFORMED),
    "base64 not url-safe": (f"{header()}.{PAYLOAD}.{SIG[:-1]}+", Problem.MALFORMED),
    "too long": ("a" * (signed.MAX_JWS_CHARS + 1), Problem.MALFORMED),
    "header no JSON": (f"{signed.b64url_encode(b'{not json')}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "header a list": (f"{b64json(['EdDSA'])}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "header not UTF-8": (f"{signed.b64url_encode(bytes([0xff, 0xfe]))}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "duplicate header keys": (signed.b64url_encode(b'{"alg": "none", "alg": "EdDSA", "kid": "did:sov:'
                                                   b'Th7MpTaRZVRYnPiabds81Y#key-1"}') + f".{PAYLOAD}.{SIG}",
                              Problem.MALFORMED),
    "crit": (f"{header(crit=['b64'])}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "b64 false": (f"{header(b64=False)}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "an embedded jwk": (f"{header(jwk={'kty': 'OKP'})}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "alg none": (f"{header(alg='none')}.{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_ALG),
    "alg HS256": (f"{header(alg='HS256')}.{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_ALG),
    "alg ES256": (f"{header(alg='ES256')}.{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_ALG),
    "alg missing": (b64json({"kid": "did:sov:Th7MpTaRZVRYnPiabds81Y#key-1"}) + f".{PAYLOAD}.{SIG}",
                    Problem.UNSUPPORTED_ALG),
    "kid missing": (b64json({"alg": "EdDSA"}) + f".{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_KID),
    "kid did:key": (f"{header(kid='did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK')}.{PAYLOAD}.{SIG}",
                    Problem.UNSUPPORTED_KID),
    "kid another key": (f"{header(kid='did:sov:Th7MpTaRZVRYnPiabds81Y#key-2')}.{PAYLOAD}.{SIG}",
                        Problem.UNSUPPORTED_KID),
    "kid no DID": (f"{header(kid='did:sov:../../x#key-1')}.{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_KID),
    "kid a number": (f"{header(kid=1)}.{PAYLOAD}.{SIG}", Problem.UNSUPPORTED_KID),
    "typ a number": (f"{header(typ=1)}.{PAYLOAD}.{SIG}", Problem.MALFORMED),
    "short signature": (f"{header()}.{PAYLOAD}.{signed.b64url_encode(bytes(63))}", Problem.MALFORMED),
    "zero signature": (f"{header()}.{PAYLOAD}.{SIG}", Problem.BAD_SIGNATURE),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_documents_are_refused_with_a_reason(name):
    jws, reason = HOSTILE[name]
    error = refused(jws, "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS", reason)
    assert len(str(error)) < 200


async def test_payloads_that_are_no_json_object_are_refused_after_the_signature(practice):
    async def forged(raw: bytes) -> str:
        # a signature over a payload ACA-Py would not write, made with ACA-Py's wallet
        head = b64json({"typ": TYP, "alg": "EdDSA", "kid": signed.did_url(practice.did)})
        signing_input = f"{head}.{signed.b64url_encode(raw)}"
        async with practice.profile.session() as session:
            signature = await session.inject(BaseWallet).sign_message(signing_input.encode(), practice.verkey)
        return f"{signing_input}.{signed.b64url_encode(signature)}"

    for raw in (b"[1, 2]", b'"text"', b"{not json", b'{"a": 1, "a": 2}', b'{"a": NaN}', b'{"a": Infinity}',
                b"\xff\xfe", b"{" * 40 + b"}" * 40, b'{"a": ' + b"9" * 5000 + b"}",
                b'{"a": ' + b"[" * 20 + b"]" * 20 + b"}"):
        refused(await forged(raw), practice.verkey, Problem.BAD_PAYLOAD)
    assert verify(await forged(b'{"a":1}'), practice.verkey) == {"a": 1}  # compact JSON is JSON too


@pytest.mark.parametrize("verkey", [None, "", 7, "0OIl" * 11, "1" * 45, "~" + "1" * 44, "3yZe7d",
                                    base58.b58encode(bytes(31)).decode(), base58.b58encode(bytes(33)).decode()])
async def test_a_bad_verkey_is_refused(practice, verkey):
    refused(await practice.sign({"a": 1}), verkey, Problem.BAD_KEY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=400), st.from_regex(r"[A-Za-z0-9_-]{0,200}\.[A-Za-z0-9_-]{0,200}\.[A-Za-z0-9_-]{0,120}",
                                                      fullmatch=True)))
def test_any_string_is_verified_or_refused_with_a_reason(text):
    try:
        verify(text, "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS")
    except SignatureInvalid as exc:
        assert isinstance(exc.reason, Problem)
    else:  # pragma: no cover - would be a forgery of a random key's signature
        pytest.fail("a random string verified")


def test_did_url_wants_an_indy_did():
    assert signed.did_url("Th7MpTaRZVRYnPiabds81Y") == "did:sov:Th7MpTaRZVRYnPiabds81Y#key-1"
    assert signed.did_url("did:sov:Th7MpTaRZVRYnPiabds81Y") == "did:sov:Th7MpTaRZVRYnPiabds81Y#key-1"
    for bad in ("", "did:key:z6Mk", "Th7MpTaRZVRYnPiabds81Y#key-2", "0" * 22):
        with pytest.raises(ValueError):
            signed.did_url(bad)


# -- the agent port ----------------------------------------------------------------------------------

DID = "Th7MpTaRZVRYnPiabds81Y"
VERKEY = "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS"
HOSTILE_DIDS = ["../wallet/did", "did:sov:" + DID, DID + "/x", DID + "\n", "", "x" * 1000, "?did=x", DID[:-1] + "0"]


@pytest.fixture
async def fake_agent():
    seen: list[tuple[str, str, dict | None]] = []
    answers: dict[str, object] = {}

    async def anything(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.method, request.raw_path, body))
        answer = answers.get(request.path)
        if isinstance(answer, web.Response):
            return answer
        return web.json_response(answer if answer is not None else {})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    async with admin_of(app) as admin:
        yield admin, seen, answers


@pytest.mark.parametrize("hostile", HOSTILE_DIDS)
async def test_a_hostile_did_never_reaches_the_agent(fake_agent, hostile):
    admin, seen, _ = fake_agent
    for call in (admin.sign_jws(hostile, {"a": 1}), admin.did_verkey(hostile)):
        with pytest.raises(AdminApiError) as refused_:
            await call
        assert refused_.value.status == 404
    assert seen == []


async def test_sign_jws_posts_did_payload_and_type_and_checks_the_answer(fake_agent, practice, impostor):
    admin, seen, answers = fake_agent
    jws = await practice.sign({"a": 1}, typ="erx-pickup+jwt")
    answers["/wallet/jwt/sign"] = jws
    assert await admin.sign_jws(practice.did, {"a": 1}, typ="erx-pickup+jwt") == jws
    assert seen == [("POST", "/wallet/jwt/sign", {"did": practice.did, "payload": {"a": 1},
                                                  "headers": {"typ": "erx-pickup+jwt"}})]
    # an answer that is no JWS, or one signed as someone else or of another type, is the agent's fault
    for answer in ({"jwt": jws}, "not a jws", await impostor.sign({"a": 1}, typ="erx-pickup+jwt"), jws):
        answers["/wallet/jwt/sign"] = answer
        with pytest.raises(AdminApiError) as wrong:
            await admin.sign_jws(practice.did, {"a": 1}, typ="erx-receipt+jwt" if answer == jws else "erx-pickup+jwt")
        assert wrong.value.status == 502
    answers["/wallet/jwt/sign"] = await practice.sign({"a": 1}, typ=None)
    assert SignedDocument.parse(await admin.sign_jws(practice.did, {"a": 1})).typ == "JWT"
    assert seen[-1][2] == {"did": practice.did, "payload": {"a": 1}}


async def test_did_verkey_reads_the_ledger_through_the_agent(fake_agent):
    admin, seen, answers = fake_agent
    answers["/ledger/did-verkey"] = {"verkey": VERKEY}
    assert await admin.did_verkey(DID) == VERKEY
    assert seen == [("GET", f"/ledger/did-verkey?did={DID}", None)]
    raw = base58.b58decode(VERKEY)
    answers["/ledger/did-verkey"] = {"verkey": "~" + base58.b58encode(raw[16:]).decode(),
                                     "ledger_id": "erx-test"}
    expanded = await admin.did_verkey(base58.b58encode(raw[:16]).decode())
    assert expanded == VERKEY
    for answer in ({"verkey": "../x"}, {}, {"verkey": None}):
        answers["/ledger/did-verkey"] = answer
        with pytest.raises(ValueError):
            await admin.did_verkey(DID)
    answers["/ledger/did-verkey"] = web.Response(status=404, text=f"DID {DID} is not on the ledger")
    with pytest.raises(AdminApiError) as missing:
        await admin.did_verkey(DID)
    assert missing.value.status == 404
