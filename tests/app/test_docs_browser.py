"""/docs (Swagger UI) and /redoc render in a real headless Chromium with no outside network.

Every request the page makes to a host other than the server's loopback address is refused
and recorded: the documentation must come whole from the package (fastapi-offline).
"""

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route

TIMEOUT_MS = 20_000


@pytest.fixture
def offline_page(browser: Browser, server: str) -> Iterator[tuple[Page, list[str]]]:
    """A page that may reach only the server; yields it and the list of refused URLs."""
    context = browser.new_context()
    refused: list[str] = []
    local = urlsplit(server).netloc

    def only_local(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == local or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort("internetdisconnected")

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page, refused
    finally:
        context.close()


def test_swagger_ui_renders_every_operation_offline(
    offline_page: tuple[Page, list[str]], server: str
) -> None:
    page, refused = offline_page
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.dataset.path || e.textContent.trim())"
    )
    assert {"/score", "/models", "/models/{name}", "/health", "/ready"} <= set(paths), paths
    assert page.locator(".opblock-post").count() >= 1  # POST /score, styled by swagger-ui.css
    color = page.eval_on_selector(".opblock-post", "e => getComputedStyle(e).borderColor")
    assert color not in {"", "rgba(0, 0, 0, 0)"}, "swagger-ui.css did not load"
    assert refused == [], f"/docs asked outside hosts for {refused}"


def test_redoc_renders_the_operations_offline(
    offline_page: tuple[Page, list[str]], server: str
) -> None:
    page, refused = offline_page
    page.goto(server + "/redoc")
    page.wait_for_selector("h2:has-text('Score uploaded lensing images')")
    text = page.inner_text("body")
    for summary in ("Score uploaded lensing images", "List the loaded models", "Liveness"):
        assert summary in text
    assert refused == [], f"/redoc asked outside hosts for {refused}"
