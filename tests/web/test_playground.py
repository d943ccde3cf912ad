"""The playground in headless Chromium against a live server: sign in, price, generate, progress, play,
cancel, history, re-run, errors, phone width. Screenshots of each state go to tests/artifacts/playground/."""

from __future__ import annotations

import base64
import io
import re
import time
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from kinema.billing.pricing import PriceTable, bill
from kinema.domain.sizing import plan_frames
from tests.conftest import ADMIN_KEY, LiveServer
from tests.web.conftest import Tab

TINY_FORM = "/#/apps/kinema/tiny"
LONG = 30_000  # ms: generous ceilings for runs on two shared CPU cores; expectations return as soon as met


def finished_task(api: httpx.Client, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task: dict[str, Any] = api.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


@pytest.fixture(scope="module")
def clip(server: LiveServer) -> dict[str, Any]:
    """One short finished clip made through the API, for the views that only show finished tasks."""
    body = {"prompt": "a clip for the history", "aspect_ratio": "1:1", "duration": 0.125, "seed": 7}
    with server.client() as api:
        task: dict[str, Any] = api.post("/v1/apps/kinema/tiny/run", json=body).json()
    assert task["status"] == "completed", task
    return task


def stop(api: httpx.Client, task_id: str) -> None:
    """Cancel a task the test no longer needs and wait for it to end, so the worker is free again."""
    api.post(f"/v1/tasks/{task_id}/cancel")
    finished_task(api, task_id)


def task_id_from(page: Page) -> str:
    expect(page).to_have_url(re.compile(r"#/tasks/tsk_\w+$"))
    return page.url.rsplit("/", 1)[-1]


def choose(page: Page, field: str, option: str) -> None:
    page.locator(f".field-{field} .segmented label", has_text=re.compile(f"^{re.escape(option)}$")).click()


def wait_until_media_ready(video: Locator, ready_state: int) -> None:
    """Wait for a <video> to reach a readyState (1: metadata, 2: current frame); fail on a media error."""
    video.evaluate(
        """(v, wanted) => new Promise((done, fail) => {
            const check = () => v.readyState >= wanted && done();
            for (const name of ["loadedmetadata", "loadeddata", "canplay", "seeked"]) {
                v.addEventListener(name, check);
            }
            v.addEventListener("error", () => fail(new Error(`media error ${v.error?.code}`)));
            setTimeout(() => fail(new Error(`readyState ${v.readyState} after 30 s`)), 30000);
            check();
        })""",
        ready_state,
    )


def wait_for_painted_frame(video: Locator) -> None:
    """Wait until a paused <video> has put a frame on screen (seek in place, then a video frame callback)."""
    video.evaluate(
        """v => new Promise((done, fail) => {
            setTimeout(() => fail(new Error(`no frame painted; readyState ${v.readyState}`)), 30000);
            const paint = () => { v.requestVideoFrameCallback(() => done()); v.currentTime = v.currentTime; };
            if (v.readyState >= 2) paint(); else v.addEventListener("loadeddata", paint, {once: true});
        })"""
    )


def play_to_end(video: Locator) -> dict[str, Any]:
    """Play a <video> (audio and all) until it ends; its final position and duration."""
    result: dict[str, Any] = video.evaluate(
        """v => new Promise((done, fail) => {
            setTimeout(() => fail(new Error(`still playing at ${v.currentTime} after 30 s`)), 30000);
            v.addEventListener("ended", () => done({position: v.currentTime, duration: v.duration}));
            v.addEventListener("error", () => fail(new Error(`media error ${v.error?.code}`)));
            v.play().catch(fail);
        })"""
    )
    return result


def assert_fits_width(page: Page) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"


def test_page_and_assets_are_served_without_a_key_and_kept_out_of_the_api_schema(server: LiveServer) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css"), ("pricing.js", "javascript")):
        response = httpx.get(f"{server.url}/playground/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"], asset
        assert response.headers["cache-control"] == "no-cache"
    assert httpx.get(f"{server.url}/playground/../settings.py").status_code == 404
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "/" not in paths and not [p for p in paths if p.startswith("/playground")]
    # the API itself still needs the key
    assert httpx.get(f"{server.url}/v1/apps").status_code == 401


def test_bad_key_gets_a_clear_message_and_the_admin_key_signs_in(tab: Tab, server: LiveServer) -> None:
    page = tab.page
    page.goto("/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    tab.shot("01-login")
    page.get_by_label("API key").fill("kin_not_a_real_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#login-error")).to_contain_text("was not accepted (401")
    tab.shot("02-error-bad-key")

    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_role("button", name="Sign in").click()
    with server.client() as api:
        apps = api.get("/v1/apps").json()["data"]
        me = api.get("/v1/me").json()
    expect(page.locator(".app-card")).to_have_count(len(apps))
    expect(page.locator(".app-card[data-app='kinema/tiny']")).to_contain_text("kinema tiny (test model)")
    for app in apps:  # apps this server cannot run (Veo without a Google key) say why
        if not app["available"]:
            card = page.locator(f".app-card[data-app='{app['id']}']")
            expect(card).to_contain_text(f"Not available here: {app['unavailable_reason']}")
    expect(page.locator("#account")).to_have_text(f"{me['name']} · {me['available']} {me['currency']}")
    tab.shot("03-apps")
    # The key lives in this tab's session storage only, never in localStorage or a cookie.
    assert page.evaluate("sessionStorage.getItem('kinema.apiKey')") == ADMIN_KEY
    assert page.evaluate("localStorage.length") == 0 and tab.context.cookies() == []
    page.reload()
    expect(page.locator(".app-card").first).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('kinema.apiKey')") is None


def test_generate_shows_the_price_then_progress_then_a_playable_video_billed_at_that_price(
    tab: Tab, server: LiveServer
) -> None:
    page = tab.page
    tab.sign_in()
    page.locator(".app-card[data-app='kinema/tiny']").click()
    expect(page.get_by_role("heading", name="kinema tiny (test model)")).to_be_visible()
    page.get_by_label("Prompt", exact=True).fill("a small square test clip")
    choose(page, "aspect_ratio", "1:1")
    page.locator("#input-duration").fill("0.5")
    expect(page.locator("#price")).to_have_text("0.05 USD")  # 0.5 s x 0.10 USD/s, video only
    page.locator(".field-generate_audio .switch").click()
    expect(page.locator("#price")).to_have_text("0.125 USD")  # with audio: 0.25 USD/s
    expect(page.locator("#price-detail")).to_contain_text("12 frames at 24 fps")
    shown_price = page.locator("#price").inner_text()
    tab.shot("04-form-with-price")

    with server.client() as api:
        balance_before = Decimal(api.get("/v1/me").json()["balance"])
    page.get_by_role("button", name="Generate").click()
    task_id = task_id_from(page)
    expect(page.get_by_test_id("progress")).to_be_visible()
    expect(page.get_by_test_id("elapsed")).to_contain_text(re.compile(r"(Elapsed|Waiting) \d"))

    player = page.locator("#player")
    expect(player).to_be_visible(timeout=LONG)
    wait_until_media_ready(player, 1)
    state = player.evaluate("v => ({ready: v.readyState, duration: v.duration, error: v.error})")
    assert state["error"] is None
    assert abs(state["duration"] - 0.5) <= 1 / 24, state
    # It plays and seeks: jump to the middle and wait until the frame there is decoded.
    player.evaluate(
        "v => new Promise(done => { v.addEventListener('seeked', done, {once: true}); v.currentTime = 0.25 })"
    )
    wait_until_media_ready(player, 3)
    assert abs(player.evaluate("v => v.currentTime") - 0.25) < 1 / 24

    meta = page.get_by_test_id("output-meta")
    expect(meta).to_contain_text("720×720 (720p, 1:1)")
    expect(meta).to_contain_text("12 frames at 24 fps")
    expect(meta).to_contain_text("yes (aac)")
    expect(page.get_by_test_id("cost")).to_have_text(shown_price)
    expect(page.get_by_test_id("status")).to_have_text("completed")
    played = play_to_end(player)
    assert played["position"] == pytest.approx(played["duration"]) == pytest.approx(0.5, abs=1 / 24)
    tab.shot("06-completed")

    with server.client() as api:
        task = api.get(f"/v1/tasks/{task_id}").json()
        me = api.get("/v1/me").json()
    billing = task["output_meta"]["billing"]
    assert f"{billing['cost']} {billing['currency']}" == shown_price
    assert balance_before - Decimal(me["balance"]) == Decimal(billing["cost"])  # charged what was shown
    expect(page.locator("#account")).to_contain_text(f"{me['available']} USD")
    assert task["input"]["generate_audio"] is True and task["input"]["duration"] == 0.5
    href = page.locator("#download").get_attribute("href")
    assert href is not None and href.split("?")[0] == task["output"]["video"].split("?")[0]
    download = httpx.get(href)
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"


def test_cancel_stops_a_running_task_and_shows_it_cancelled(tab: Tab, server: LiveServer) -> None:
    page = tab.page
    tab.sign_in()
    page.goto(TINY_FORM)
    page.get_by_label("Prompt", exact=True).fill("a long clip to cancel")
    choose(page, "resolution", "1080p")  # 1080p for 1.5 s: each denoising step takes a second or more
    page.locator("#input-duration").fill("1.5")
    page.get_by_role("button", name="Generate").click()
    task_id = task_id_from(page)
    expect(page.get_by_test_id("step")).to_have_text(re.compile(r"^step \d+/\d+$"), timeout=LONG)
    expect(page.get_by_test_id("stage")).to_have_text("Denoising")
    expect(page.locator(".stages li.done").first).to_have_text(re.compile("Loading the model"))
    tab.shot("05-progress")

    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_test_id("cancelled")).to_be_visible(timeout=LONG)
    expect(page.get_by_test_id("status")).to_have_text("cancelled")
    tab.shot("07-cancelled")
    with server.client() as api:
        task = api.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "cancelled" and task["output"] is None


def test_bad_input_is_reported_next_to_each_field(tab: Tab) -> None:
    page = tab.page
    tab.sign_in()
    page.goto(TINY_FORM)
    page.get_by_label("Prompt", exact=True).fill("   ")
    page.locator("#input-duration").fill("25")
    expect(page.locator("#price")).to_have_text("–")
    expect(page.locator("#price-detail")).to_contain_text("from 0.1 to 20 s")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#error-duration")).to_contain_text("less than or equal to 20")
    expect(page.locator("#error-prompt")).to_contain_text("at least 1 character")
    expect(page.locator(".field-duration")).to_have_class(re.compile("invalid"))
    expect(page.locator("#form-error")).to_contain_text("Fix the highlighted fields")
    expect(page).to_have_url(re.compile(r"#/apps/kinema/tiny$"))  # nothing was submitted
    tab.shot("08-error-bad-input")


def portrait_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (90, 160), (30, 120, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_dropped_image_is_previewed_uploaded_and_used_as_the_first_frame(
    tab: Tab, server: LiveServer
) -> None:
    page = tab.page
    tab.sign_in()
    page.goto(TINY_FORM)
    page.get_by_label("Prompt", exact=True).fill("zoom out from the blue")
    page.locator("#input-duration").fill("0.1")
    encoded = base64.b64encode(portrait_png()).decode()
    transfer = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "portrait.png", {type: "image/png"}));
            return transfer;
        }""",
        encoded,
    )
    page.locator(".dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    expect(page.locator(".image-status")).to_contain_text(re.compile(r"Uploaded portrait\.png \(file_\w+\)"))
    preview = page.locator(".dropzone .preview")
    expect(preview).to_be_visible()
    assert preview.evaluate("img => img.naturalWidth") == 90
    tab.shot("04b-form-with-image")

    page.get_by_role("button", name="Generate").click()
    task_id = task_id_from(page)
    expect(page.get_by_test_id("progress")).to_be_visible()
    with server.client() as api:
        task = api.get(f"/v1/tasks/{task_id}").json()
        assert task["input"]["image"].startswith("file_")
        stop(api, task_id)  # the server's own tests check what an uploaded image does to the clip


def test_history_lists_tasks_with_status_and_cost_and_reruns_with_the_same_input(
    tab: Tab, server: LiveServer, clip: dict[str, Any]
) -> None:
    with server.client() as api:
        failed = api.post("/v1/apps/lightricks/ltx-2-fast/run", json={"prompt": "no weights here"}).json()
        assert failed["status"] == "failed"
    page = tab.page
    tab.sign_in()
    page.get_by_role("link", name="History").click()
    row = page.locator(f".history-item[data-task-id='{clip['id']}']")
    expect(row.get_by_test_id("status")).to_have_text("completed")
    expect(row.get_by_test_id("cost")).to_have_text(f"{clip['output_meta']['billing']['cost']} USD")
    expect(row).to_contain_text("720×720 · 0.125 s")
    failed_row = page.locator(f".history-item[data-task-id='{failed['id']}']")
    expect(failed_row.get_by_test_id("status")).to_have_text("failed")
    expect(failed_row).to_contain_text("model_not_available")
    wait_until_media_ready(row.locator("video"), 2)  # the thumbnail shows the first frame
    wait_for_painted_frame(row.locator("video"))
    tab.shot("09-history")

    row.get_by_role("button", name="Re-run").click()
    rerun_id = task_id_from(page)
    assert rerun_id != clip["id"]
    with server.client() as api:
        rerun = api.get(f"/v1/tasks/{rerun_id}").json()
        assert rerun["input"] == clip["input"]
        stop(api, rerun_id)

    # "Edit & re-run" opens the app's form filled with the task's input, advanced fields included.
    page.goto(f"/#/tasks/{clip['id']}")
    page.get_by_role("link", name="Edit & re-run").click()
    expect(page.get_by_label("Prompt", exact=True)).to_have_value(clip["input"]["prompt"])
    expect(page.locator("#input-duration")).to_have_value("0.125")
    expect(page.locator("#input-seed")).to_have_value("7")
    expect(page.locator("#input-seed")).to_be_visible()  # "Advanced" unfolded to show it
    expect(page.locator(".field-aspect_ratio input:checked + label")).to_have_text("1:1")
    expect(page.locator("#price")).to_have_text(f"{clip['output_meta']['billing']['cost']} USD")


def test_failed_task_shows_its_error_and_what_to_try(tab: Tab) -> None:
    page = tab.page
    tab.sign_in()
    page.goto("/#/apps/lightricks/ltx-2-fast")
    page.get_by_label("Prompt", exact=True).fill("clouds over mountain peaks")
    page.get_by_role("button", name="Generate").click()
    failure = page.get_by_test_id("failure")
    expect(failure).to_be_visible(timeout=LONG)
    expect(failure).to_contain_text("The task failed")
    expect(failure).to_contain_text("model_not_available")
    expect(failure).to_contain_text("kinema/tiny app needs no download")
    expect(page.get_by_test_id("status")).to_have_text("failed")
    tab.shot("10-error-failed-task")


def test_insufficient_balance_and_rate_limit_are_explained(tab: Tab, server: LiveServer) -> None:
    from kinema.api.security import RequestLimiter

    with server.client() as api:
        broke = api.post("/v1/admin/users", json={"name": "broke"}).json()
    page = tab.page
    tab.sign_in(broke["key"])
    expect(page.locator("#account")).to_have_text("broke · 0.00 USD")
    page.goto(TINY_FORM)
    page.get_by_label("Prompt", exact=True).fill("more than I can pay for")
    price = page.locator("#price").inner_text()
    page.get_by_role("button", name="Generate").click()
    error = page.locator("#form-error")
    expect(error).to_contain_text("Not enough balance for this run: this run can cost up to")
    expect(error).to_contain_text("Top up the account")
    held = re.search(r"can cost up to ([\d.]+) USD", error.inner_text())
    assert held is not None and Decimal(held.group(1)) == Decimal(
        price.removesuffix(" USD")
    )  # the shown price
    tab.shot("11-error-402")

    server.state.limiter = RequestLimiter("20/minute")
    try:
        with server.client(broke["key"]) as api:  # use up this key's requests for the minute
            while api.get("/v1/apps").status_code != 429:
                pass
        page.get_by_role("button", name="Generate").click()
        expect(error).to_contain_text(
            "Too many requests: too many requests for this API key (limit 20/minute)"
        )
        expect(page.locator("#generate")).to_be_disabled()
        expect(page.locator("#generate")).to_contain_text(re.compile(r"wait \d+ s"))
        tab.shot("11-error-429")
    finally:
        server.state.limiter = None


def test_phone_width_fits_the_form_and_the_result(phone: Tab, clip: dict[str, Any]) -> None:
    page = phone.page
    phone.sign_in()
    assert_fits_width(page)
    page.goto(TINY_FORM)
    page.get_by_label("Prompt", exact=True).fill("a clip for a phone screen")
    expect(page.locator("#price")).to_have_text("0.10 USD")
    assert_fits_width(page)
    phone.shot("12-phone-form")
    page.goto(f"/#/tasks/{clip['id']}")
    play_to_end(page.locator("#player"))
    assert_fits_width(page)
    phone.shot("13-phone-completed")
    page.goto("/#/history")
    wait_for_painted_frame(page.locator(f".history-item[data-task-id='{clip['id']}'] video"))
    assert_fits_width(page)
    phone.shot("14-phone-history")


# The price shown before a run is computed in the page; it must be the server's own arithmetic. ----------


def server_price(table: PriceTable, fps: int, resolution: str, audio: bool, duration: float) -> str:
    frames = plan_frames(duration, fps, 8).frames
    return bill(table, resolution=resolution, has_audio=audio, frames=frames, fps=fps).cost


@pytest.mark.parametrize(
    "table",
    [
        PriceTable(),
        PriceTable(
            video=Decimal("0.123456"),
            video_audio=Decimal("0.3333335"),
            video_4k=Decimal("1E+1"),
            video_4k_audio=Decimal("0.0000005"),
        ),
    ],
    ids=["default", "odd-rates"],
)
def test_page_price_matches_server_billing_for_every_setting(tab: Tab, table: PriceTable) -> None:
    page = tab.page
    page.goto("/")
    pricing = {
        "currency": table.currency,
        "per_second": {
            "720p/1080p video": str(table.video),
            "720p/1080p video+audio": str(table.video_audio),
            "4K video": str(table.video_4k),
            "4K video+audio": str(table.video_4k_audio),
        },
    }
    # ties (0.0625 * 24 = 1.5, 2.5625 * 24 = 61.5), thirds, tiny and long durations, and a 25 fps app
    durations = [0.0625, 0.1, 0.1875, 1 / 3, 0.5, 1, 1.04, 2.5625, 4.99, 5, 7.3, 12.345, 19.99, 20]
    cases = [
        (fps, resolution, audio, duration)
        for fps in (24, 25)
        for resolution in ("720p", "1080p", "4K")
        for audio in (False, True)
        for duration in durations
    ]
    shown = page.evaluate(
        """async ([pricing, cases]) => {
            const {priceFor} = await import("./playground/pricing.js");
            return cases.map(([fps, resolution, generateAudio, duration]) =>
                priceFor(pricing, fps, {resolution, generateAudio, duration}).cost);
        }""",
        [pricing, cases],
    )
    expected = [server_price(table, *case) for case in cases]
    assert shown == expected


def test_event_stream_parser_reassembles_lines_split_across_chunks(tab: Tab) -> None:
    page = tab.page
    page.goto("/")
    # CRLF split between chunks, a keep-alive comment, multi-line data, an event without an id.
    chunks = [
        "id: 1\r",
        '\nevent: progress\r\ndata: {"step": 1,\r\ndata:  "total": 3}\r\n\r',
        "\n",
        ": ping\n\n",
        "event: log\ndata: hello",
        "\n\nid: 9\nevent: task\ndata: {}\n\n",
    ]
    events = page.evaluate(
        """async chunks => {
            const {parseEventStream} = await import("./playground/api.js");
            const encoder = new TextEncoder();
            const body = new ReadableStream({start(controller) {
                for (const chunk of chunks) controller.enqueue(encoder.encode(chunk));
                controller.close();
            }});
            const events = [];
            for await (const event of parseEventStream(body)) events.push(event);
            return events;
        }""",
        chunks,
    )
    assert events == [
        {"id": "1", "event": "progress", "data": '{"step": 1,\n "total": 3}'},
        {"id": None, "event": "log", "data": "hello"},
        {"id": "9", "event": "task", "data": "{}"},
    ]
