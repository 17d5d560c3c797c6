"""`marport ui` in a real browser: Debian's chromium driven by Playwright, against a real TorchServe.

The page's server relays to TorchServe with the inference key, which the browser never sees. Each
test writes a screenshot of the page to build/ui-screenshots/ (two of them are in docs/serving.md).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from marport.ui import Target, UiServer, local_target
from marport.workspace import Workspace
from tests.audio_helpers import cough_like, encode
from tests.conftest import REPO_ROOT, built_archive, running_torchserve

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = REPO_ROOT / "build" / "ui-screenshots"
ANSWER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def page_url(tmp_path_factory):
    """TorchServe serving both archives from a workspace, and the page's server in front of it."""
    root = tmp_path_factory.mktemp("workspace")
    store = root / "model_store"
    store.mkdir()
    for model in ("sentiment", "respiratory"):
        shutil.copy2(built_archive(model), store / f"{model}.mar")
    workspace = Workspace.at(root)
    with running_torchserve(workspace.run_dir, store, ["sentiment.mar", "respiratory.mar"]) as server:
        target = local_target(workspace)
        relayed: list[str] = []  # every request the page's server forwarded, by model

        def predict(model, body, content_type):
            relayed.append(model)
            return target.predict(model, body, content_type)

        with UiServer(Target(target.models, predict, target.describe)) as ui:
            ui.relayed = relayed
            yield ui, server


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # A fake microphone (a tone) that needs no permission prompt: the recording path runs for real.
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, page_url):
    ui, _ = page_url
    url = ui.url
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    requests_seen = []
    page.on("request", lambda r: requests_seen.append(r))
    page.goto(ui.launch_url)  # the link `marport ui` prints: the page's address and its secret
    page.requests_seen = requests_seen
    yield page
    assert all(r.url.startswith(url) for r in requests_seen), "the page loaded something from elsewhere"
    assert not any("authorization" in {k.lower() for k in r.headers} for r in requests_seen), "a key reached the browser"
    context.close()


def shot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_type_a_sentence_and_read_the_label(page):
    page.get_by_label("Text to classify").fill("The staff were friendly and the breakfast was excellent")
    page.get_by_role("button", name="Classify").first.click()
    answer = page.locator(".sentiment-answer .label")
    answer.wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert answer.inner_text().split(" ")[0] in {"negative", "neutral", "positive"}
    assert page.locator(".sentiment-answer meter").count() == 3  # one score per class
    assert "Answered in" in page.locator("#sentiment-status").inner_text()
    shot(page, "sentiment")


def test_several_texts_and_an_explanation_with_shaded_words(page):
    page.get_by_label("Text to classify").fill("Spotless room and a warm welcome\nThe bus leaves at noon")
    page.get_by_label("Explain").first.check()
    page.get_by_role("button", name="Classify").first.click()
    page.locator(".sentiment-answer").nth(1).wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert page.locator(".sentiment-answer").count() == 2
    words = page.locator(".sentiment-answer").first.locator(".word")
    assert [words.nth(i).inner_text() for i in range(words.count())] == "Spotless room and a warm welcome".split()
    shaded = [words.nth(i).evaluate("w => getComputedStyle(w).backgroundColor") for i in range(words.count())]
    assert any(colour not in ("rgba(0, 0, 0, 0)", "transparent") for colour in shaded)
    shot(page, "sentiment-explained")


def test_upload_a_wav_read_the_probability_and_see_the_plot(page, tmp_path):
    wav = tmp_path / "cough.wav"
    wav.write_bytes(encode(cough_like(12, 16000, 4), 16000, "wav-16"))
    page.get_by_label("Recording (WAV, FLAC, OGG or MP3)").set_input_files(str(wav))
    page.get_by_label("Explain: which seconds").check()
    page.locator("#respiratory-submit").click()
    answer = page.locator(".respiratory-answer .label")
    answer.wait_for(timeout=ANSWER_TIMEOUT_MS)
    probability = float(answer.inner_text().rsplit("=", 1)[1])
    assert 0.0 <= probability <= 1.0
    plot = page.locator("#windows-plot")
    assert plot.locator("circle").count() >= 1 and plot.locator("polyline").count() == 1
    assert plot.locator("rect.heat").count() == 12  # one occlusion stretch a second
    shot(page, "respiratory")


def test_record_from_the_microphone_and_classify(page):
    page.get_by_role("button", name="Record from the microphone").click()
    try:  # the microphone opens asynchronously
        page.locator("#record[aria-pressed=true]").wait_for(timeout=15_000)
    except Exception:
        pytest.fail(f"recording did not start: {page.locator('#record-status').inner_text()!r}")
    page.wait_for_timeout(2500)
    page.get_by_role("button", name="Stop recording").click()
    page.locator("#record-status", has_text="Recorded").wait_for(timeout=10_000)
    page.locator("#respiratory-submit").click()
    answer = page.locator(".respiratory-answer .label")
    answer.wait_for(timeout=ANSWER_TIMEOUT_MS)
    assert "P(unhealthy)" in answer.inner_text()
    assert float(page.locator(".respiratory-answer .muted").first.inner_text().split(" s,")[0]) >= 1.0


def test_a_text_file_sent_as_audio_reads_as_a_message_not_json(page, tmp_path):
    fake = tmp_path / "notes.wav"
    fake.write_text("these are meeting notes, not a recording\n" * 20)
    page.get_by_label("Recording (WAV, FLAC, OGG or MP3)").set_input_files(str(fake))
    page.locator("#respiratory-submit").click()
    alert = page.locator("#respiratory-result [role=alert]")
    alert.wait_for(timeout=ANSWER_TIMEOUT_MS)
    text = alert.inner_text()
    assert "could not read this input" in text and "{" not in text.splitlines()[0]
    shot(page, "respiratory-error")


def test_keyboard_reaches_every_control_and_each_has_a_label(page):
    for control in ("#sentiment-text", "#sentiment-explain", "#respiratory-file", "#respiratory-explain"):
        label = page.locator(f"label[for={control[1:]}]")
        assert label.count() == 1 and label.inner_text().strip(), control
    reached = set()
    for _ in range(20):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    assert {"sentiment-text", "sentiment-submit", "respiratory-file", "respiratory-submit", "record"} <= reached
    assert page.locator("#sentiment-result").get_attribute("aria-live") == "polite"


EVIL_PAGE = """<!doctype html><html><body>
<form id="f" method="post" enctype="text/plain" action="{ui}api/predict/sentiment"><input name="a" value="b"></form>
<script>
fetch("{ui}api/predict/sentiment", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: "stolen"}}).finally(() => document.getElementById("f").submit());
</script></body></html>"""


def test_another_page_in_the_same_browser_cannot_use_the_models(browser, page_url):
    """The user has the page open (its cookie is set); another site, here on another loopback port, so that
    the browser even sends that cookie (same site), posts to it with fetch and with a form: nothing is relayed."""
    import http.server
    import threading

    ui, _ = page_url
    html = EVIL_PAGE.format(ui=ui.url).encode()

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    context = browser.new_context()
    try:
        mine = context.new_page()
        mine.goto(ui.launch_url)
        assert context.cookies(), "the launch link sets the page's cookie"
        before = list(ui.relayed)
        answers = []
        other = context.new_page()
        other.on("response", lambda r: answers.append(r.status) if "/api/predict/" in r.url else None)
        other.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        other.wait_for_timeout(3000)
        assert answers and set(answers) == {403}, answers  # the fetch and the form post, both refused
        assert ui.relayed == before, "a foreign page's request reached the models"
    finally:
        context.close()
        evil.shutdown()
        evil.server_close()
