"""The calibration point: a bare ASGI app that serves the same bytes a FHIR read returns.

Run under the same HTTP server (uvicorn, httptools, uvloop, one worker) as Consilium, it shows the
ceiling any Python FHIR read path on this machine can approach.
"""

import os
from pathlib import Path

BODY = Path(os.environ["BARE_BODY_FILE"]).read_bytes()
HEADERS = [(b"content-type", b"application/fhir+json; charset=utf-8"), (b"etag", b'W/"1"'),
           (b"last-modified", b"Mon, 23 Nov 2026 10:00:00 GMT"),
           (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
