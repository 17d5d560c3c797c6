"""`marport ui` answers only itself: its own Host, its own Origin and the secret it was launched with.

A foreign page in the user's browser (a form post needs no preflight) or a DNS-rebound name must get a 403,
and nothing may reach the models' server. The page's server runs for real on loopback; the target it relays
to records what reaches it.
"""

from __future__ import annotations

import http.client
import json

import pytest

from marport.ui import Target, UiServer


@pytest.fixture
def ui():
    forwarded = []

    def predict(model, body, content_type):
        forwarded.append((model, body, content_type))
        return 200, b'{"label": "positive"}'

    target = Target(lambda: [{"name": "sentiment", "kind": "sentiment"}], predict, "a recording target")
    with UiServer(target) as server:
        server.forwarded = forwarded
        yield server


def send(server, method, path, headers, body=b""):
    """A raw request: http.client adds no Host unless told, so a request without one can be sent too."""
    port = server.httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    if method == "POST":
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body if method == "POST" else None)
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data, reply


def own(server, **extra):
    port = server.httpd.server_address[1]
    headers = {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}",
               "Cookie": f"marport_ui_{port}={server.secret}", "Content-Type": "text/plain"}
    headers.update(extra)
    return {k: v for k, v in headers.items() if v is not None}


def test_the_page_itself_is_answered_and_forwarded(ui):
    status, data, _ = send(ui, "POST", "/api/predict/sentiment", own(ui), b"lovely")
    assert status == 200 and json.loads(data) == {"label": "positive"}
    assert ui.forwarded == [("sentiment", b"lovely", "text/plain")]
    port = ui.httpd.server_address[1]
    for host in (f"localhost:{port}", f"[::1]:{port}"):  # the loopback names a user may type
        status, _, _ = send(ui, "POST", "/api/predict/sentiment", own(ui, Host=host, Origin=f"http://{host}"), b"x")
        assert status == 200


@pytest.mark.parametrize("change", [
    {"Host": "evil.example:{port}"},  # DNS rebinding: the browser names the attacker's host
    {"Host": None},
    {"Origin": "http://evil.example"},  # a foreign page's form or fetch
    {"Origin": "null"},  # a sandboxed frame or a file:// page
    {"Origin": None},  # a POST without an origin: not what this page's script sends
    {"Origin": "https://127.0.0.1:{port}"},
    {"Cookie": None},  # no secret
    {"Cookie": "marport_ui_{port}=guessed"},
])
def test_anything_else_is_refused_and_nothing_forwarded(ui, change):
    port = ui.httpd.server_address[1]
    headers = own(ui, **{k: (v.format(port=port) if v else v) for k, v in change.items()})
    status, data, _ = send(ui, "POST", "/api/predict/sentiment", headers, b"lovely")
    assert status == 403, data
    assert json.loads(data)["type"] == "forbidden"
    assert ui.forwarded == []


def test_the_launch_link_sets_a_cookie_only_the_page_can_use(ui):
    port = ui.httpd.server_address[1]
    bare = {"Host": f"127.0.0.1:{port}"}
    status, _, _ = send(ui, "GET", "/", bare)
    assert status == 403  # the page's address alone is not enough
    status, _, _ = send(ui, "GET", "/api/models", bare)
    assert status == 403
    status, page, reply = send(ui, "GET", f"/?token={ui.secret}", bare)
    assert status == 200 and b"<html" in page.lower()
    cookie = reply.getheader("Set-Cookie")
    assert cookie.startswith(f"marport_ui_{port}={ui.secret};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, models, _ = send(ui, "GET", "/api/models", {**bare, "Cookie": cookie.split(";")[0]})
    assert status == 200 and json.loads(models)["models"][0]["name"] == "sentiment"
    status, _, _ = send(ui, "GET", f"/?token={ui.secret}", {"Host": f"evil.example:{port}"})
    assert status == 403  # even with the secret, not under another name


def test_launch_link_printed_carries_the_secret(ui):
    assert ui.launch_url == f"{ui.url}?token={ui.secret}"
    assert len(ui.secret) >= 32


def test_a_form_body_is_never_relayed(ui):
    """TorchServe's front end splits a form-encoded body into fields before any handler sees it."""
    headers = own(ui, **{"Content-Type": "application/x-www-form-urlencoded"})
    status, data, _ = send(ui, "POST", "/api/predict/sentiment", headers, b"text=lovely")
    assert status == 415 and json.loads(data)["type"] == "form_encoded_body"
    assert ui.forwarded == []
