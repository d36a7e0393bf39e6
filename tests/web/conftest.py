"""The labelling page's tests: a fresh browser context on the running app for each test, which fails the test
when the page threw."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ServeApp


@pytest.fixture
def page(browser: Any, serve_app: ServeApp) -> Iterator[Any]:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"
