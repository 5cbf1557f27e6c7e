"""osapi: what nova's and cinder's clients share (HTTP status meanings, transport failures, the service's own
message, one line); the sweep's cinder client against a local HTTP server. No lab."""
import http.server
import json
import socket
import threading
import types

import pytest

from crashup_lib import log, nova, osapi
from crashup_lib.cinder import CinderApi, CinderError
from tests.helpers import free_port

VOLUME = "0b5e6a3c-8d1f-4c2e-9a7b-1f2e3d4c5b6a"


def test_status_kinds_and_nova_error_classes():
    assert [osapi.status_kind(s) for s in (None, 200, 400, 401, 404, 409, 500, 503)] == [
        None, None, osapi.BAD_REQUEST, None, osapi.NOT_FOUND, osapi.CONFLICT, osapi.UNAVAILABLE, osapi.UNAVAILABLE]
    assert [nova._error_class(s) for s in (None, 400, 403, 404, 409, 502)] == [
        nova.NovaError, nova.NovaBadRequest, nova.NovaError, nova.NovaNotFound, nova.NovaConflict,
        nova.NovaUnavailable]


def response(body: str, reason: str = "Bad Request"):
    def decoded():
        return json.loads(body)
    return types.SimpleNamespace(json=decoded, text=body, reason=reason)


@pytest.mark.parametrize("body, expected", [
    ('{"badRequest": {"code": 400, "message": "Invalid volume:\\n  bad  status"}}', "Invalid volume: bad status"),
    ('{"message": "top level"}', "top level"),
    ("<html><body><h1>502 Bad Gateway</h1></body></html>", "502 Bad Gateway"),
    ("", "Bad Request"),
    ("x" * 1000, "x" * 297 + "..."),
])
def test_the_service_message_is_one_line(body, expected):
    assert osapi.error_message(response(body)) == expected


def test_short_cause_keeps_the_errno_part():
    e = Exception("HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by NewConnectionError("
                  "'<urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: "
                  "[Errno 111] Connection refused'))")
    assert osapi.short_cause(e) == "[Errno 111] Connection refused"
    assert log.error_line("a\n b\t c") == "a b c" and len(log.error_line("y" * 400)) == 300


class Cinder:
    """A block-storage endpoint on 127.0.0.1: answers each POST with (status, body), records what it got."""

    def __init__(self, status=202, body=""):
        self.status, self.body, self.requests = status, body, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.path, json.loads(self.rfile.read(length) or b"null")))
                payload = outer.body.encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v3/project"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def api(url, timeout=5.0):
    from keystoneauth1 import session
    return CinderApi(session.Session(), endpoint_override=url, timeout=timeout)


def test_cinder_reset_status_posts_the_action():
    server = Cinder()
    try:
        api(server.url).reset_status("volume", VOLUME, {"status": "available", "attach_status": "detached"})
        api(server.url).reset_status("backup", "b1", {"status": "error"})
    finally:
        server.close()
    assert server.requests == [
        (f"/v3/project/volumes/{VOLUME}/action", {"os-reset_status": {"status": "available",
                                                                      "attach_status": "detached"}}),
        ("/v3/project/backups/b1/action", {"os-reset_status": {"status": "error"}})]


def test_cinder_refusal_is_one_line_with_cinders_message():
    server = Cinder(400, '{"badRequest": {"code": 400, "message": "Invalid status:\\nin-use"}}')
    try:
        with pytest.raises(CinderError) as caught:
            api(server.url).reset_status("volume", VOLUME, {"status": "available"})
    finally:
        server.close()
    assert str(caught.value) == f"cinder reset_status {VOLUME}: HTTP 400: Invalid status: in-use"
    assert caught.value.status == 400


def test_cinder_not_answering_is_one_line_naming_the_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v3/p"
    with pytest.raises(CinderError) as caught:
        api(url).reset_status("volume", VOLUME, {"status": "available"})
    assert str(caught.value) == (f"cinder reset_status {VOLUME}: cannot connect to {url}: "
                                 "[Errno 111] Connection refused")
    with socket.socket() as listener:                # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/v3/p"
        with pytest.raises(CinderError) as caught:
            api(url, timeout=0.5).reset_status("backup", "b1", {"status": "error"})
    assert str(caught.value) == f"cinder reset_status b1: no answer within 0.5s from {url}"
