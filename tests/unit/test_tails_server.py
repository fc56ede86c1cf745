"""The tails server stores a file only under its own hash and serves it back byte for byte."""

import hashlib

import base58
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer

from erx_agents.tails_server import make_app


def b58sha256(data: bytes) -> str:
    return base58.b58encode(hashlib.sha256(data).digest()).decode()


def form(data: bytes) -> FormData:
    fd = FormData()
    fd.add_field("tails", data, filename="tails", content_type="application/octet-stream")
    return fd


@pytest.fixture
async def client(tmp_path):
    async with TestClient(TestServer(make_app(tmp_path / "store", max_bytes=4096))) as c:
        yield c


async def test_upload_then_download_round_trips(client, tmp_path):
    data = bytes(range(256)) * 8
    name = b58sha256(data)
    put = await client.put(f"/hash/{name}", data=form(data))
    assert put.status == 200
    got = await client.get(f"/hash/{name}")
    assert got.status == 200
    assert await got.read() == data
    assert (tmp_path / "store" / name).read_bytes() == data


async def test_second_upload_is_a_conflict_not_an_overwrite(client):
    data = b"tails" * 10
    name = b58sha256(data)
    assert (await client.put(f"/hash/{name}", data=form(data))).status == 200
    assert (await client.put(f"/hash/{name}", data=form(data))).status == 409


async def test_content_that_does_not_match_its_hash_is_refused_and_not_kept(client, tmp_path):
    name = b58sha256(b"what the name promises")
    resp = await client.put(f"/hash/{name}", data=form(b"something else"))
    assert resp.status == 400
    assert "does not match" in await resp.text()
    assert list((tmp_path / "store").iterdir()) == []
    assert (await client.get(f"/hash/{name}")).status == 404


async def test_names_that_are_not_hashes_are_refused(client):
    assert (await client.put("/hash/..%2Fsecrets.json", data=form(b"x"))).status in (400, 404)
    assert (await client.get("/hash/not-a-hash")).status == 400


async def test_oversized_upload_is_refused(client, tmp_path):
    data = b"z" * 5000
    resp = await client.put(f"/hash/{b58sha256(data)}", data=form(data))
    assert resp.status == 413
    assert list((tmp_path / "store").iterdir()) == []


async def test_upload_without_tails_field_is_a_clear_400(client):
    fd = FormData()
    fd.add_field("other", b"x", filename="other", content_type="application/octet-stream")
    resp = await client.put(f"/hash/{b58sha256(b'x')}", data=fd)
    assert resp.status == 400
    assert "tails" in await resp.text()
