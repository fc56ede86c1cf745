"""A wallet with more prescriptions than ACA-Py lists by default still finds the one to present."""

from pydantic import SecretStr

from erx_core.acapy_admin import AcaPyAdmin

EXCHANGE = "6f1d4f0e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


async def test_credentials_for_a_request_are_read_page_by_page():
    held = [{"cred_info": {"referent": f"c{i}", "cred_def_id": "x", "attrs": {}},
             "presentation_referents": ["prescription", "valid_until"]} for i in range(23)]
    asked = []

    async def get(path, **params):
        assert path == f"/present-proof-2.0/records/{EXCHANGE}/credentials"
        asked.append((params["start"], params["count"]))
        return held[params["start"]:params["start"] + params["count"]]

    admin = AcaPyAdmin("http://127.0.0.1:9", SecretStr("k"))
    admin._get = get
    found = await admin.credentials_for_request(EXCHANGE, page=10)
    assert [c.cred_info.referent for c in found] == [f"c{i}" for i in range(23)]
    assert asked == [(0, 10), (10, 10), (20, 10)]


async def test_a_wallet_accepting_an_offer_asks_for_its_exchange_record_to_be_removed_when_done():
    sent = []

    async def post(path, body=None, **params):
        sent.append((path, body))
        return {}

    admin = AcaPyAdmin("http://127.0.0.1:9", SecretStr("k"))
    admin._post = post
    await admin.send_credential_request(EXCHANGE)
    assert sent == [(f"/issue-credential-2.0/records/{EXCHANGE}/send-request", {"auto_remove": True})]
