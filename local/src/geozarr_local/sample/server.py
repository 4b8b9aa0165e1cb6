"""Serve sample products and their source STAC items over HTTP on loopback.

    python -m geozarr_local.sample.server --host 127.0.0.1 --port N --root DIR

Routes (layout of DIR in layout.py):
    GET/HEAD /healthz                                  200 "ok"
    GET/HEAD /products/<id>.zarr/<key>                 the store's files; 404 for a missing key;
                                                       single byte ranges (206) for fsspec
    GET      /collections/<collection>/items/<id>      the item, hrefs on this server's base URL
    GET      /collections/<collection>                 a minimal collection document
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from geozarr_local.sample.layout import PLACEHOLDER_BASE, PRODUCTS_DIR, SampleLayout

ITEM_ROUTE = re.compile(r"^/collections/(?P<collection>[^/]+)/items/(?P<item_id>[^/]+)/?$")
COLLECTION_ROUTE = re.compile(r"^/collections/(?P<collection>[^/]+)/?$")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
JSON_NAMES = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}
COPY_BLOCK = 1024 * 1024


class SampleHandler(BaseHTTPRequestHandler):
    server: SampleServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def end_headers(self) -> None:
        # A browser page (the local map) may read items and stores from another origin.
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet access log: only errors (status >= 400) reach stderr."""
        if len(args) >= 2 and str(args[1]).isdigit() and int(args[1]) < 400:
            return
        super().log_message(format, *args)

    def _base_url(self) -> str:
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def _dispatch(self, *, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path == "/healthz":
            self._send(HTTPStatus.OK, b"ok", "text/plain", send_body=send_body)
            return
        if path.startswith(f"/{PRODUCTS_DIR}/"):
            self._send_file(path, send_body=send_body)
            return
        if match := ITEM_ROUTE.match(path):
            self._send_item(match["collection"], match["item_id"], send_body=send_body)
            return
        if match := COLLECTION_ROUTE.match(path):
            self._send_collection(match["collection"], send_body=send_body)
            return
        self._not_found(send_body=send_body)

    def _send_item(self, collection: str, item_id: str, *, send_body: bool) -> None:
        item_path = self.server.layout.item_path(collection, item_id)
        if not _inside(item_path, self.server.layout.root) or not item_path.is_file():
            self._not_found(send_body=send_body)
            return
        text = item_path.read_text().replace(PLACEHOLDER_BASE, self._base_url())
        self._send(HTTPStatus.OK, text.encode(), "application/geo+json", send_body=send_body)

    def _send_collection(self, collection: str, *, send_body: bool) -> None:
        folder = self.server.layout.item_path(collection, "x").parent
        if not _inside(folder, self.server.layout.root) or not folder.is_dir():
            self._not_found(send_body=send_body)
            return
        base = self._base_url()
        body = {
            "type": "Collection",
            "stac_version": "1.0.0",
            "id": collection,
            "description": f"Synthetic sample products ({collection})",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [[None, None]]},
            },
            "links": [
                {"rel": "self", "href": f"{base}/collections/{collection}"},
                {"rel": "root", "href": f"{base}/"},
            ]
            + [
                {"rel": "item", "href": f"{base}/collections/{collection}/items/{p.stem}"}
                for p in sorted(folder.glob("*.json"))
            ],
        }
        payload = json.dumps(body).encode()
        self._send(HTTPStatus.OK, payload, "application/json", send_body=send_body)

    def _send_file(self, path: str, *, send_body: bool) -> None:
        file_path = self.server.layout.root / path.lstrip("/")
        if not _inside(file_path, self.server.layout.root) or not file_path.is_file():
            self._not_found(send_body=send_body)
            return
        size = file_path.stat().st_size
        content_type = (
            "application/json" if file_path.name in JSON_NAMES else "application/octet-stream"
        )
        start, end = 0, size - 1
        status = HTTPStatus.OK
        requested = self.headers.get("Range")
        if requested:
            parsed = _parse_range(requested, size)
            if parsed is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = parsed
            status = HTTPStatus.PARTIAL_CONTENT
        length = max(0, end - start + 1)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not send_body or length == 0:
            return
        with file_path.open("rb") as handle:
            handle.seek(start)
            remaining = length
            while remaining > 0:
                block = handle.read(min(COPY_BLOCK, remaining))
                if not block:
                    break
                self.wfile.write(block)
                remaining -= len(block)

    def _not_found(self, *, send_body: bool) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain", send_body=send_body)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, *, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    match = RANGE.match(header.strip())
    if match is None or size == 0:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        start, end = max(0, size - int(last)), size - 1
    else:
        start = int(first)
        end = min(size - 1, int(last)) if last else size - 1
    if start > end or start >= size:
        return None
    return start, end


class SampleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], root: Path) -> None:
        self.layout = SampleLayout(root)
        super().__init__(address, SampleHandler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    server = SampleServer((args.host, args.port), args.root)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return 0
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
