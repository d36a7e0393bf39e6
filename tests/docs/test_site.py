"""The documentation site: it builds with `--strict`, every setting and every route of the service is in it, it
loads nothing from outside when read, and the README stays a short door into it."""

from __future__ import annotations

import html
import http.server
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from pydantic_settings import BaseSettings

from deployments.api import openapi_document
from sam_core.settings import ModelSpec, Settings
from tests.conftest import ServeApp
from tests.slow_http import serving

REPO_ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 200


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as CI builds it: `mkdocs build --strict` (any warning fails the build)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def page_text(site: Path, page: str) -> str:
    """A built page's text, tags dropped and entities decoded."""
    raw = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", " ", raw))


def setting_names(model: type[BaseModel], path: str = "", env_prefix: str = "SAM_") -> list[tuple[str, str | None]]:
    """Every field of a settings model as (dotted name, environment variable), nested settings included."""
    names: list[tuple[str, str | None]] = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            names += setting_names(kind, f"{path}{name}.", str(kind.model_config.get("env_prefix")))
        else:
            names.append((f"{path}{name}", f"{env_prefix}{name.upper()}" if env_prefix else None))
    return names


def test_every_setting_and_its_variable_is_on_the_configuration_page(site: Path) -> None:
    text = page_text(site, "configuration")
    fields = setting_names(Settings)
    assert len(fields) > 40  # the walk found the model's fields, nested limits included
    assert ("images.max_pixels", "SAM_IMAGE_MAX_PIXELS") in fields
    missing = [f"{name} ({env})" for name, env in fields if name not in text or (env and env not in text)]
    missing += [name for name, _ in setting_names(ModelSpec, env_prefix="") if f"{name}" not in text]
    assert not missing, missing


@pytest.mark.parametrize("model", [Settings, ModelSpec, Settings.model_fields["images"].annotation])
def test_every_setting_says_what_it_means(model: Any) -> None:
    """The configuration page's meaning column comes from these descriptions: none may be empty."""
    undescribed = [name for name, field in model.model_fields.items() if not (field.description or "").strip()]
    undescribed = [name for name in undescribed if name != "images"]  # a nested model: its fields are described
    assert not undescribed, undescribed


def test_every_route_of_the_openapi_document_is_in_the_reference(site: Path) -> None:
    text = page_text(site, "api-reference")
    paths = openapi_document()["paths"]
    assert {"/sam/embed_image", "/sam/segment_image", "/sam/segment_everything"} <= set(paths)
    missing = [f"{method.upper()} {path}" for path, methods in paths.items() for method in methods if path not in text]
    assert not missing, missing
    assert (site / "openapi.json").exists()  # the document itself is on the site


def test_the_documented_openapi_is_the_one_a_running_app_serves(serve_app: ServeApp) -> None:
    served = httpx.get(f"{serve_app.url}/openapi.json", timeout=30).json()
    assert served == openapi_document(serve_app.settings)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(site: Path) -> Iterator[str]:
    class SiteFiles(QuietHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(site), **kwargs)

    with serving(SiteFiles) as url:
        yield url


def test_the_site_loads_nothing_from_outside_when_read(site: Path, site_url: str, browser: Any) -> None:
    """Every page opened in Chromium: each request it makes (fonts, scripts, styles, images, search) stays on the
    site's own host; none fails."""
    pages = sorted(p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))
    assert len(pages) >= 15, pages
    context = browser.new_context()
    outside: list[str] = []
    failed: list[str] = []
    context.on("request", lambda r: None if r.url.startswith((site_url, "data:")) else outside.append(r.url))
    context.on("requestfailed", lambda r: failed.append(r.url))
    try:
        page = context.new_page()
        for name in pages:
            page.goto(f"{site_url}/{'' if name == '.' else name + '/'}", wait_until="networkidle")
        # the search, run by a worker on its index: it answers keystrokes (a filled-in value alone starts nothing)
        page.locator("input[name=query]").press_sequentially("segment")
        page.wait_for_selector(".md-search-result__item", timeout=15_000)
    finally:
        context.close()
    assert not outside, outside
    assert not failed, failed


def test_the_readme_is_a_short_door_into_the_site() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "bash scripts/run.sh" in readme
    assert "bash scripts/test.sh" in readme
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10, links
    broken = [link for link in links if not link.startswith("http") and not (REPO_ROOT / link).exists()]
    assert not broken, broken
    pages = {p.name for p in (REPO_ROOT / "docs").glob("*.md")}
    linked = {Path(link).name for link in links if link.startswith("docs/")}
    # unlinked: the home page, and two pages that only include their sources (k8s/README.md, METRICS.md)
    assert pages - linked <= {"index.md", "kuberay.md", "metrics.md"}, pages - linked
