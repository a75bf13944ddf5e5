"""End to end in a real browser: Debian's chromium driven by Playwright against a live server.

Skipped when chromium is not installed, except in CI (CI=true), where `.ci/run` installs it
and a missing browser is a failure. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STATE_TIMEOUT_MS = 180_000
# Chromium's own background connections are refused on a closed network; keep it quiet.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"CI needs Debian's chromium at {CHROMIUM} for the browser tests "
                           f"(apt-get install chromium)")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


def _open(browser, url: str, **context_options):
    """A page on ``url`` with the long state timeout; JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, **context_options)
    page = context.new_page()
    # Every wait is on a state; on a busy machine a state can take long to come.
    page.set_default_timeout(STATE_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_selector("#model option", state="attached")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture
def page(browser, live_server):
    yield from _open(browser, live_server, accept_downloads=True)


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def run_query(page, **fields) -> None:
    for name, value in fields.items():
        if page.locator(f"#{name}").evaluate("e => e.tagName") == "SELECT":
            page.select_option(f"#{name}", str(value))
        else:
            page.fill(f"#{name}", str(value))
    page.evaluate("document.querySelector('#result').replaceChildren()")
    page.click("#run")
    page.wait_for_function("document.querySelector('#result tr.sample') || "
                           "!document.querySelector('#error').hidden")
    assert page.locator("#error").is_hidden(), page.inner_text("#error")


def run_refused(page) -> str:
    """Click Run on a query the server refuses; the error box's text."""
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    return page.inner_text("#error")


def distances_and_rule(page) -> tuple[list[float], int]:
    """The D column of the sample rows and the index of the first row after the ε rule."""
    rows = page.locator("#result table.samples tr.sample, #result table.samples tr.rule")
    kinds = rows.evaluate_all("rows => rows.map(r => r.classList.contains('rule') ? 'rule' : r.querySelector('td.distance').textContent)")
    rule_at = kinds.index("rule")
    distances = [float("inf") if k == "inf" else float(k) for k in kinds if k != "rule"]
    return distances, rule_at


def test_query_renders_sorted_rows_and_the_epsilon_rule(page):
    page.select_option("#model", "counting")
    run_query(page, candidates=256, shown=60)
    stats = page.inner_text("#stats")
    shown = int(re.search(r"Showing (\d+)", stats).group(1))
    assert page.locator("#result tr.sample").count() == shown > 0
    distances, rule_at = distances_and_rule(page)
    assert distances == sorted(distances)
    assert all(d <= 0.1 for d in distances[:rule_at]) and all(d > 0.1 for d in distances[rule_at:])
    assert page.locator("#result tr.sample.inside").count() == rule_at
    # the query row names its position; a head site shows its attention row
    assert "(:)" in page.inner_text("#result tr.query")
    weights = page.locator("#result tr.attention td.input span").evaluate_all(
        "spans => spans.map(s => Number(s.title.split(' ')[1]))")
    assert len(weights) == 22 and sum(weights[:20]) == pytest.approx(1.0, abs=0.01)
    assert weights[20:] == [0, 0]  # causal: nothing after ':' (index 19)
    # ΔP colours on some tokens, per-position D on hover
    first_token = page.locator("#result tr.sample td.input span").nth(1)
    assert re.match(r"D \d", first_token.get_attribute("title"))
    assert page.locator("#result tr.sample td.input span[style*='background']").count() > 0
    assert page.locator("#agreement tr").count() > 1
    screenshot(page, "query-counting-a1.0")


def test_the_delta_p_legend_is_the_exports(page):
    page.select_option("#model", "counting")
    run_query(page, candidates=64)
    legend = page.locator("#result #legend")
    assert legend.count() == 1
    shown = legend.evaluate("p => [p.textContent, [...p.querySelectorAll('span')].map("
                            "s => getComputedStyle(s).backgroundColor)]")
    assert shown[1] == ["rgb(64, 64, 255)", "rgb(255, 64, 64)"]  # raised, lowered
    # word for word and colour for colour the HTML export's legend (views/html.py)
    exported = page.evaluate("""async () => {
        const response = await fetch("/api/query/html", { method: "POST",
            headers: { "Content-Type": "application/json" }, body: JSON.stringify(state.request) });
        const legend = new DOMParser().parseFromString(await response.text(), "text/html")
            .querySelector(".legend");
        return [legend.textContent, [...legend.querySelectorAll("span")].map((s) => s.style.background)];
    }""")
    assert shown == exported
    page.uncheck("#colour")  # no colours, no legend
    assert page.locator("#legend").count() == 0


def test_every_resource_of_the_page_loads(browser, live_server):
    # The page once named no icon: the browser's /favicon.ico answered 404 on every load.
    page = browser.new_page()
    page.set_default_timeout(STATE_TIMEOUT_MS)
    failures = []
    page.on("response", lambda response: failures.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    page.on("console", lambda message: failures.append(message.text)
            if message.type == "error" else None)
    page.goto(live_server)
    page.wait_for_selector("#model option", state="attached")
    # the icon the browser asks for (the browser's own request is not among the page's)
    status, kind = page.evaluate("""async () => {
        const link = document.querySelector("link[rel~='icon']");
        const response = await fetch(link ? link.href : "/favicon.ico");
        return [response.status, response.headers.get("content-type")]; }""")
    assert status == 200 and kind.startswith("image/")
    page.close()
    assert not failures


def test_url_reproduces_the_view(page, browser, live_server):
    page.select_option("#model", "addition")
    page.wait_for_function("document.querySelector('#input').value.includes('+')")
    run_query(page, site="a1.3", candidates=128, seed=4)
    url = page.url
    assert "site=a1.3" in url and "seed=4" in url and "model=addition" in url
    first = page.locator("#result tr.sample td.input").first.inner_text()
    other = browser.new_page()
    other.set_default_timeout(STATE_TIMEOUT_MS)
    other.goto(url)
    other.wait_for_selector("#result table.samples tr.sample")
    assert other.locator("#result tr.sample td.input").first.inner_text() == first
    assert other.input_value("#site") == "a1.3"
    other.close()


def test_bad_input_shows_the_server_message(page):
    page.select_option("#model", "counting")
    page.fill("#input", "Bab!c|a:2E")
    assert "not in the counting vocabulary" in run_refused(page)
    page.fill("#input", "Bvvzccvczvvvzvcvc|v:8E")
    page.fill("#shown", "5000")
    page.click("#run")
    page.wait_for_function("document.querySelector('#error').textContent.includes('shown')")
    screenshot(page, "error-message")


def test_cancel_stops_a_long_query(page):
    # Waits on the job's state (the page's #progress-box[data-state]), never on a timing: the
    # job is running on the server before Cancel is pressed, and the query (8,192 candidates,
    # 20 s or more) cannot end by itself in the moment before the DELETE arrives.
    page.select_option("#model", "counting")
    page.fill("#candidates", "8192")
    page.fill("#seed", "77")
    page.click("#run")
    page.wait_for_selector("#progress-box[data-state='running']")
    page.click("#cancel")
    page.wait_for_selector("#progress-box[data-state='cancelled']", state="attached")
    page.wait_for_function("document.querySelector('#error').textContent.includes('cancelled')")
    assert page.is_enabled("#run")


def test_cancel_pressed_before_the_job_starts_is_not_lost(page):
    # The old page ignored a Cancel pressed before the server answered with the job's id.
    page.select_option("#model", "counting")
    page.fill("#candidates", "8192")
    page.fill("#seed", "78")
    page.evaluate("document.querySelector('#run').click(); document.querySelector('#cancel').click()")
    page.wait_for_selector("#progress-box[data-state='cancelled']", state="attached")
    assert "cancelled" in page.inner_text("#error")


def test_all_sites_grid_and_opening_a_site(page):
    page.select_option("#model", "counting")
    run_query(page, candidates=64)
    page.click("#grid-button")
    page.wait_for_selector("#grid-table tr.site-row")
    assert page.locator("#grid-table tr.site-row").count() == 9
    screenshot(page, "grid-counting")
    page.click("#grid-table tr[data-site='x1.mid']")
    page.wait_for_function("document.querySelector('#result .meta').textContent.includes('site x1.mid')")


def test_save_and_compare_views(page):
    page.select_option("#model", "counting")
    page.evaluate("localStorage.clear()")
    run_query(page, site="a0.0", position="18", candidates=64)
    page.click("#save")
    run_query(page, site="a1.0", position=":", candidates=64)
    page.click("#save")
    page.click("#nav-saved")
    assert page.locator(".saved-item").count() == 2
    page.locator(".compare-tick").nth(0).check()
    page.locator(".compare-tick").nth(1).check()
    page.click("#compare-button")
    panels = page.locator("#compare .compare-panel")
    assert panels.count() == 2
    assert "a0.0" in panels.nth(0).inner_text() and "a1.0" in panels.nth(1).inner_text()
    screenshot(page, "compare")


def test_export_downloads_the_self_contained_page(page, tmp_path):
    page.select_option("#model", "counting")
    run_query(page, candidates=64)
    with page.expect_download() as download:
        page.click("#export")
    path = tmp_path / "view.html"
    download.value.save_as(path)
    text = path.read_text(encoding="utf-8")
    assert "<script type='application/json' id='result'>" in text and "https://" not in text


def test_attention_page_draws_every_head_of_a_layer(page):
    page.select_option("#model", "addition")
    page.click("#nav-attention")
    page.select_option("#att-model", "addition")
    page.fill("#att-input", "B123+456=579E")
    page.select_option("#att-layer", "1")
    page.click("#att-run")
    page.wait_for_selector("#attention-result table.pattern")
    assert page.locator("#attention-result table.pattern").count() == 4
    assert "view=attention" in page.url and "layer=1" in page.url
    screenshot(page, "attention-addition-layer1")


def test_verify_button_shows_the_output_change(page):
    page.select_option("#model", "counting")
    run_query(page, candidates=256)
    page.click("#verify-button")
    page.wait_for_selector("#verify-table tr.verify-inside")
    assert page.locator("#verify-table tr.verify-outside").count() > 0
    assert "mean inside ε: KL max" in page.inner_text("#verify-summary")


def takes_space(page, selector: str) -> bool:
    """Whether ``selector`` is laid out on the page (its computed display and its box), not
    merely whether it lacks the hidden attribute."""
    return page.locator(selector).evaluate(
        "e => getComputedStyle(e).display !== 'none' && e.getBoundingClientRect().height > 0")


def test_actions_and_progress_are_shown_only_when_they_apply(page):
    # style.css's display: flex on both once beat their hidden attribute: Save, Export, Verify
    # and an empty progress bar before any query, "done 100 %" after one.
    page.select_option("#model", "counting")
    assert not takes_space(page, "#actions") and not takes_space(page, "#progress-box")
    # Verify before a query patches nothing (it once ran the form's query unasked)
    verify_requests = []
    page.on("request", lambda request: verify_requests.append(request.url)
            if "/api/verify" in request.url else None)
    assert page.is_disabled("#verify-button")
    page.evaluate("document.querySelector('#verify-button').click()")
    assert not takes_space(page, "#verify") and not verify_requests
    run_query(page, candidates=64)
    assert takes_space(page, "#actions") and page.is_enabled("#verify-button")
    assert not takes_space(page, "#progress-box")


@pytest.fixture
def text_page(browser, text_live_server):
    yield from _open(browser, text_live_server)


def test_a_language_model_input_is_shown_as_its_tokens_and_a_click_picks_the_position(
        text_page, text_model):
    page = text_page
    text = "When Alice and Bob went to the park, Bob gave a key to Alice."
    expected = text_model.probed.task.text_tokens(text)
    page.select_option("#model", "tiny-lm")
    page.fill("#input", text)
    chips = page.locator("#input-tokens .token")
    page.wait_for_function(f"document.querySelectorAll('#input-tokens .token').length === {len(expected)}")
    shown = chips.evaluate_all("spans => spans.map(s => s.textContent)")
    assert shown == [token.replace(" ", "␣") for token in expected]
    # the position list is the tokens too, after the named "last"
    options = page.locator("#position option").evaluate_all("os => os.map(o => o.value)")
    assert options[0] == "last" and options[-len(expected):] == [str(i) for i in range(len(expected))]
    chips.nth(4).click()
    assert page.input_value("#position") == "4"
    assert chips.nth(4).get_attribute("class") == "token chosen"
    run_query(page, site="a1.2", candidates=64, shown=20)
    marked = page.locator("#result tr.query td.input span.query-pos")
    assert marked.text_content() == expected[4]
    assert page.locator("#result tr.sample").count() > 0
    assert page.locator("#agreement").count() == 0  # free text has no attributes to agree on
    # in its place the token reading: the query's prefix coloured by what members keep
    reading = page.locator("#query-reading span")
    assert reading.evaluate_all("spans => spans.map(s => s.textContent)") == expected[1:5]
    assert "kept by" in reading.first.get_attribute("title")
    assert page.locator("table.token-reading tr").count() == 1 + 4
    # an input past the context is refused in place, before any query
    page.fill("#input", "Alice " * 80)
    page.wait_for_selector("#input-tokens .problem")
    assert "context holds at most 64" in page.inner_text("#input-tokens")
    screenshot(page, "query-text-tokens")


def test_a_long_text_input_fits_the_window(text_page):
    # A language model's input runs to its context (64 tokens here): the table once ran off a
    # 1440-px window, its "best" and "×" columns out of sight, "input" at its column's far end.
    page = text_page
    page.set_viewport_size({"width": 1440, "height": 900})
    page.select_option("#model", "tiny-lm")
    page.fill("#input", "When Alice and Bob went to the park, Bob gave a key to Alice. "
                        "When Carol and Dave went to the store, Dave sent a map to Carol.")
    page.wait_for_function("document.querySelectorAll('#input-tokens .token').length > 50")
    run_query(page, site="a1.2", candidates=64, shown=20)
    assert page.locator("#result tr.sample").count() > 0
    width, window = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= window
    header = page.locator("#result table.samples tr").first
    rights = header.locator("th").evaluate_all("ths => ths.map(th => th.getBoundingClientRect().right)")
    assert max(rights) <= window
    # the header's text starts where its column does
    text_left, column_left = header.locator("th.input").evaluate(
        "th => { const range = document.createRange(); range.selectNodeContents(th);"
        " return [range.getBoundingClientRect().left, th.getBoundingClientRect().left]; }")
    assert text_left - column_left < 10
    screenshot(page, "query-text-long-input")


def test_cosine_noise_and_ban_rare_fields(page):
    """The factual-recall options on the page: the cosine noise reaches the query (the meta
    line says so, the URL keeps it) and ban rare on a toy model shows the server's reason."""
    page.select_option("#model", "counting")
    page.fill("#input", "Bvvzccvczvvvzvcvc|v:8E")
    run_query(page, candidates=64, noise_cosine="0.8:0.9")
    assert "noise at cosine 0.8-0.9" in page.inner_text("#result")
    assert "noise_cosine=0.8%3A0.9" in page.url
    page.fill("#noise_cosine", "")
    page.fill("#ban_rare", "3")
    assert "for language models" in run_refused(page)
    page.fill("#ban_rare", "")
