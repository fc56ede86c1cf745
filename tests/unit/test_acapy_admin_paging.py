"""A wallet with more prescriptions than ACA-Py lists by default still finds the one to present."""

from pydantic import SecretStr

from erx_core.acapy_admin import AcaPyAdmin


async def test_credentials_for_a_request_are_read_page_by_page():
    held = [{"cred_info": {"referent": f"c{i}"}, "presentation_referents": ["prescription", "valid_until"]}
            for i in range(23)]
    asked = []

    async def get(path, **params):
        asked.append((params["start"], params["count"]))
        return held[params["start"]:params["start"] + params["count"]]

    admin = AcaPyAdmin("http://127.0.0.1:9", SecretStr("k"))
    admin.get = get
    found = await admin.credentials_for_request("ex", page=10)
    assert [c["cred_info"]["referent"] for c in found] == [f"c{i}" for i in range(23)]
    assert asked == [(0, 10), (10, 10), (20, 10)]
