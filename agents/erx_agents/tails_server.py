"""A tails server: revocation registries' tails files, uploaded and downloaded by their hash.

Speaks the protocol ACA-Py's AnonCreds tails client uses: `PUT /hash/{tails_hash}` with a multipart
field `tails`, and `GET /hash/{tails_hash}`. The hash is base58(sha256(file)); an upload whose content
does not hash to the name it is put under is refused with 400, a second upload of the same file gets
409 (ACA-Py treats that as success). Files are written to a temporary name and renamed, so a crash
never leaves a half-written tails file behind.

Run: python -m erx_agents.tails_server --host 127.0.0.1 --port 6543 --dir .erx/tails
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

import base58
from aiohttp import web

LOG = logging.getLogger("erx.tails")

# base58 of a 32-byte digest: 43 or 44 characters of the bitcoin alphabet.
HASH_RE = re.compile(r"^[1-9A-HJ-NP-Za-km-z]{32,44}$")
CHUNK = 64 * 1024


def tails_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return base58.b58encode(h.digest()).decode()


def _checked_hash(request: web.Request) -> str:
    name = request.match_info["tails_hash"]
    if not HASH_RE.match(name):
        raise web.HTTPBadRequest(text="not a tails hash (base58 of a sha256 digest)")
    return name


def make_app(store: Path, max_bytes: int) -> web.Application:
    store.mkdir(parents=True, exist_ok=True)

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "files": sum(1 for _ in store.glob("*") if _.is_file())})

    async def download(request: web.Request) -> web.StreamResponse:
        path = store / _checked_hash(request)
        if not path.is_file():
            raise web.HTTPNotFound(text="no tails file with that hash")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    async def upload(request: web.Request) -> web.Response:
        name = _checked_hash(request)
        target = store / name
        if target.exists():
            raise web.HTTPConflict(text="a tails file with that hash is already stored")
        if not request.content_type.startswith("multipart/"):
            raise web.HTTPBadRequest(text="expected multipart/form-data with a 'tails' field")
        reader = await request.multipart()
        part = await reader.next()
        while part is not None and part.name != "tails":
            part = await reader.next()
        if part is None:
            raise web.HTTPBadRequest(text="multipart body has no 'tails' field")
        digest = hashlib.sha256()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=store, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := await part.read_chunk(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size)
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            actual = base58.b58encode(digest.digest()).decode()
            if actual != name:
                raise web.HTTPBadRequest(text=f"content hash {actual} does not match {name}")
            os.replace(tmp_name, target)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
        LOG.info("stored tails file %s (%d bytes)", name, size)
        return web.Response(text=str(request.url), status=200)

    app = web.Application(client_max_size=max_bytes + 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_get("/hash/{tails_hash}", download)
    app.router.add_put("/hash/{tails_hash}", upload)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--max-bytes", type=int, default=64 * 1024 * 1024)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    web.run_app(make_app(args.dir, args.max_bytes), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
