"""The upload page in a real headless Chromium, against a real uvicorn on loopback.

Needs Debian's Chromium (`scripts/install-system-deps.sh`); a missing browser fails the tests
rather than skipping them. Playwright drives the system binary: never `playwright install`.
"""

import io
import math
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page

import models
from tests.app.serve_fixture import run_server, submit

UI_TIMEOUT_MS = 15_000


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh page on the upload page, its model list loaded; fails on any JS error.

    bypass_csp: Playwright's wait_for_function evaluates strings, which the page's policy
    forbids; test_the_page_works_under_its_content_security_policy runs with it enforced."""
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    js_errors: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model[data-loaded]")
        yield page
        assert js_errors == [], f"JavaScript errors on the page: {js_errors}"
    finally:
        context.close()


def _ring(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) float32 Einstein-ring-like image in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    img = np.exp(-((np.hypot(xx, yy) - size / 4) ** 2) / 4.0)
    img = img + 0.05 * rng.standard_normal((size, size))
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def _write_npy(path: Path, size: int = 32) -> Path:
    np.save(path, _ring(size, seed=1), allow_pickle=False)
    return path


def _write_png(path: Path, size: int = 48) -> Path:
    """An 8-bit grayscale PNG of another size than the 32 x 32 models (so it is resized)."""
    Image.fromarray((_ring(size, seed=2) * 255).astype(np.uint8), mode="L").save(path)
    return path


def _cards(page: Page) -> list[dict]:
    """What each result card shows: name, flag, numbers and its images' natural widths."""
    return page.eval_on_selector_all(
        "#results .result",
        """cards => cards.map(c => {
            const width = sel => { const i = c.querySelector(sel); return i ? i.naturalWidth : 0 };
            const value = sel => c.querySelector(sel).dataset.value;
            return {
                filename: c.dataset.filename,
                classes: c.className,
                badge: c.querySelector('.badge').textContent.trim(),
                error: c.querySelector('.file-error').hidden
                    ? null : c.querySelector('.file-error').textContent,
                loss: value('.m-loss'), lossText: c.querySelector('.m-loss').textContent,
                score: value('.m-score'),
                verdict: c.querySelector('.verdict').textContent,
                instrument: c.querySelector('.m-instrument').textContent,
                decides: Array.from(c.querySelectorAll('.decides')).map(d => d.className),
                threshold: value('.m-threshold'),
                percentile: value('.m-percentile'),
                percentileText: c.querySelector('.m-percentile').textContent,
                input: width('.fig-input img'),
                reconstruction: width('.fig-reconstruction img'),
                residual: width('.fig-residual img'),
            };
        })""",
    )


def _submit(page: Page, files: list[Path], model: str, n_cards: int) -> list[dict]:
    submit(page, files, model, n_cards)
    return _cards(page)


def test_upload_page_lists_every_model_and_the_ensemble(page: Page) -> None:
    options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    assert set(options) == {*models.list_models(), "ensemble"}
    assert page.is_hidden("#banner")
    assert page.get_attribute("#files", "multiple") is not None
    for control in ("files", "model", "score", "threshold", "api-key"):
        assert page.locator(f"label[for='{control}']").count() == 1, control


def test_upload_page_scores_npy_and_png(page: Page, server: str, tmp_path: Path) -> None:
    files = [_write_npy(tmp_path / "lens.npy"), _write_png(tmp_path / "ring.png")]

    cards = _submit(page, files, "dcae", n_cards=2)

    assert [c["filename"] for c in cards] == ["lens.npy", "ring.png"]
    assert page.is_hidden("#banner")
    for card in cards:
        assert card["error"] is None
        assert card["badge"] in {"anomalous", "normal"}
        assert ("is-anomalous" if card["badge"] == "anomalous" else "is-normal") in card["classes"]
        loss, percentile = float(card["loss"]), float(card["percentile"])
        assert math.isfinite(loss) and loss >= 0
        assert card["lossText"] not in {"", "—"}
        assert 0.0 <= percentile <= 100.0
        assert card["percentileText"].endswith("%")
        # The flag is the score against the threshold; that score is the one singled out,
        # and the verdict line says so in words.
        assert (float(card["score"]) > float(card["threshold"])) == (card["badge"] == "anomalous")
        assert card["decides"] == ["m-score decides"]
        verdict = "Flagged: " if card["badge"] == "anomalous" else "Not flagged: "
        assert card["verdict"].startswith(verdict), card["verdict"]
        # What the score used, and where from: the tiny checkpoints' card, the estimated noise.
        assert "″/px (checkpoint)" in card["instrument"], card["instrument"]
        assert "noise σ" in card["instrument"] and "(estimated)" in card["instrument"]
        assert card["reconstruction"] > 0, "reconstruction image did not load"
        assert card["residual"] > 0, "residual image did not load"
    assert cards[1]["input"] > 0, "PNG input preview did not load"
    page.screenshot(path=str(tmp_path / "upload_page.png"), full_page=True)
    assert (tmp_path / "upload_page.png").stat().st_size > 10_000

    # The page shows exactly what the API returns for the same files.
    upload = [("files", (f.name, io.BytesIO(f.read_bytes()))) for f in files]
    response = httpx.post(f"{server}/score", params={"model": "dcae"}, files=upload, timeout=30)
    assert response.status_code == 200, response.text
    for card, result in zip(cards, response.json()["results"], strict=True):
        assert float(card["loss"]) == result["reconstruction_loss"]
        assert float(card["percentile"]) == result["percentile"]
        assert (card["badge"] == "anomalous") == result["is_anomaly"]


def test_upload_page_scores_with_the_ensemble(page: Page, tmp_path: Path) -> None:
    cards = _submit(page, [_write_npy(tmp_path / "lens.npy")], "ensemble", n_cards=1)

    assert cards[0]["error"] is None
    assert cards[0]["badge"] in {"anomalous", "normal"}
    assert 0.0 <= float(cards[0]["percentile"]) <= 100.0
    assert page.inner_text("#summary").startswith("1 file scored with ensemble")
    assert cards[0]["decides"] == ["m-percentile decides"]  # the ensemble judges the mean
    assert "mean percentile" in cards[0]["verdict"]


def test_upload_page_scores_by_a_chosen_noise_aware_score(page: Page, tmp_path: Path) -> None:
    scores = page.eval_on_selector_all("#score option", "os => os.map(o => o.value)")
    assert scores[0] == "" and {"mse", "chi2", "chi2_psf"} <= set(scores)
    assert all(name in page.inner_text("#score-help") for name in scores[1:])
    page.select_option("#score", "chi2_psf")
    _submit(page, [_write_npy(tmp_path / "lens.npy")], "vae", n_cards=1)
    card = page.locator("#results .result").first
    assert card.locator(".m-score-name").inner_text() == "Anomaly score (chi2_psf)"
    assert card.locator(".m-score").inner_text() not in {"", "—"}
    scale = card.locator(".fig-residual .scale")
    assert "scale-sigma" in (scale.get_attribute("class") or "")
    assert scale.locator(".scale-max").inner_text() == "+5 σ"
    assert "noise σ" in card.locator(".residual-caption").inner_text()
    assert not card.locator(".m-imaging").is_visible()  # no fit's tests behind chi2_psf


def test_upload_page_offers_a_score_drawn_by_a_fit_only_for_a_model_that_draws_it(
    page: Page, tmp_path: Path
) -> None:
    def disabled() -> dict[str, bool]:
        return dict(
            page.eval_on_selector_all("#score option", "os => os.map(o => [o.value, o.disabled])")
        )

    assert "imaging_gain" in page.inner_text("#score-help")
    page.select_option("#model", "lensfit2")
    assert disabled()["imaging_gain"] is False
    page.select_option("#score", "imaging_gain")
    cards = _submit(page, [_write_npy(tmp_path / "lens.npy")], "lensfit2", n_cards=1)
    assert float(cards[0]["score"]) > 0
    assert page.locator(".m-score-name").first.inner_text() == "Anomaly score (imaging_gain)"
    found = page.locator(".m-imaging").first  # what the tests found, shown only for it
    assert found.is_visible() and found.inner_text().startswith("tension ")
    assert "best blob" in found.inner_text()
    page.select_option("#model", "vae")  # its fit draws no imaging_gain: back to the default
    assert disabled()["imaging_gain"] is True and disabled()["chi2"] is False
    assert page.input_value("#score") == ""


def test_upload_page_shows_an_unreadable_file_inline(page: Page, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.fits"
    corrupt.write_bytes(b"SIMPLE  = this is not a FITS file" + bytes(range(256)))
    files = [corrupt, _write_npy(tmp_path / "lens.npy")]

    cards = _submit(page, files, "dcae", n_cards=2)

    assert page.is_hidden("#banner")
    bad, good = cards
    assert bad["badge"] == "error" and "is-error" in bad["classes"]
    assert bad["error"] and "corrupt.fits" in bad["error"]
    assert page.locator("#results .result.is-error .result-body").is_hidden()
    assert good["error"] is None and good["badge"] in {"anomalous", "normal"}
    assert good["reconstruction"] > 0


def test_upload_page_shows_a_failed_request_in_the_banner(page: Page, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage, not an array")
    page.set_input_files("#files", [str(corrupt)])
    page.select_option("#model", "dcae")
    page.click("#submit")

    page.wait_for_selector("#banner:not([hidden])")
    text = page.inner_text("#banner")
    assert "422" in text and "corrupt.npy" in text
    assert page.is_hidden("#results-section")
    assert page.locator("#results .result").count() == 0


def test_upload_page_sends_the_api_key(
    browser: Browser, tiny_checkpoints: Path, tmp_path: Path
) -> None:
    settings = {"DEEPLENSE_API_KEY": "s3cret-key"}
    with run_server(tiny_checkpoints, tmp_path / "server.log", settings=settings) as url:
        context = browser.new_context(bypass_csp=True)  # for _submit's wait_for_function
        try:
            page = context.new_page()
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.goto(url + "/")  # the page itself stays open without a key
            page.wait_for_selector("#banner:not([hidden])")
            assert "401" in page.inner_text("#banner")
            # No list of models it cannot know: only the service's default.
            options = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
            assert options == [""]

            page.fill("#api-key", "s3cret-key")
            page.press("#api-key", "Tab")  # `change` reloads the model list with the key
            page.wait_for_selector("#banner", state="hidden")
            cards = _submit(page, [_write_npy(tmp_path / "lens.npy")], "dcae", n_cards=1)
        finally:
            context.close()
    assert cards[0]["error"] is None
    assert cards[0]["badge"] in {"anomalous", "normal"}


def test_upload_page_shows_each_models_measured_auc_and_a_near_chance_caveat(
    browser: Browser, server: str
) -> None:
    listing = httpx.get(server + "/models").json()
    for card in listing["models"]:  # what evaluate --update-checkpoints would have stored
        chance = card["name"] == "rbm"
        assert card["default_score"] != "chi2"
        card["metrics"] = {
            "auc_sub": 0.51 if chance else 0.912,
            f"auc_{card['default_score']}_sub": 0.51 if chance else 0.912,
            "auc_chi2_sub": 0.55,
        }
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page.route("**/models", lambda route: route.fulfill(json=listing))
        page.goto(server + "/")
        page.wait_for_selector("#model[data-loaded]")
        labels = page.eval_on_selector_all("#model option", "os => os.map(o => o.textContent)")
        assert "dcae (AUC 0.912)" in labels and "rbm (AUC 0.510)" in labels
        page.select_option("#model", "dcae")
        help_text = page.text_content("#model-help") or ""
        assert "measured AUC 0.912" in help_text and "near chance" not in help_text
        page.select_option("#score", "chi2")  # the chosen score's AUC
        assert "measured AUC 0.550 (chi2" in (page.text_content("#model-help") or "")
        page.select_option("#score", "")
        page.select_option("#model", "rbm")
        assert "near chance" in (page.text_content("#model-help") or "")
    finally:
        context.close()


def test_the_page_works_under_its_content_security_policy(
    browser: Browser, server: str, tmp_path: Path
) -> None:
    # The policy enforced (no bypass_csp), and no Playwright evaluation of strings: the
    # page's own script, style sheet and data: result images must all be allowed.
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model[data-loaded]")
        page.set_input_files("#files", [str(_write_npy(tmp_path / "lens.npy"))])
        page.select_option("#model", "dcae")
        page.click("#submit")
        page.wait_for_selector("#results .result img")
        loaded = page.eval_on_selector_all("#results img", "is => is.every(i => i.complete)")
        assert loaded and not page.is_hidden("#results-section")
    finally:
        context.close()
    assert problems == []
