"""The gates' Data Docs with no internet (plugins/retention_ui/data_docs.py): every address GX's
templates load from outside is vendored or mapped to GX's own images; a page GX renders, as the
Retention page serves it, loads only files this server has; before the first gate the index is
a page that says so. No services: GX renders a site from a dataframe in a temporary folder."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import HTTPException
from retention_ui.data_docs import CDN_FILES, GX_SHIPPED_IMAGES, GX_WEB_ASSETS, VENDORED, data_docs_response, local_page

SERVED_AT = "http://127.0.0.1:8080/retention/"  # any prefix: the rewritten addresses are relative
# Loaded by a page (not followed by a click, as <a href> is).
RESOURCE = re.compile(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)=["'](https?://[^"']+)["']""")
CSS_URL = re.compile(r"""url\(\s*['"]?(https?://[^'")\s]+)""")


def _gx_view_dir() -> Path:
    import great_expectations

    return Path(great_expectations.__file__).parent / "render" / "view"


def _gx_template_texts() -> dict[str, str]:
    view = _gx_view_dir()
    files = [*(view / "templates").glob("*.j2"), *(view / "static" / "styles").glob("*.css")]
    assert len(files) > 20, "GX's templates moved: update _gx_view_dir"
    return {p.name: p.read_text(encoding="utf-8") for p in files}


def test_every_address_gx_loads_from_outside_is_vendored():
    """A GX upgrade that loads a new CDN file fails here: vendor it (static/data-docs/README.md)."""
    loaded = set()
    for text in _gx_template_texts().values():
        loaded |= set(RESOURCE.findall(text)) | set(CSS_URL.findall(text))
    cdn = {url for url in loaded if not url.startswith(GX_WEB_ASSETS)}
    assert cdn == set(CDN_FILES), f"not vendored: {sorted(cdn - set(CDN_FILES))}"
    assert {url.removeprefix(GX_WEB_ASSETS) for url in loaded - cdn} <= set(GX_SHIPPED_IMAGES)
    for path in CDN_FILES.values():
        assert (VENDORED / path).is_file(), path
    shipped = _gx_view_dir() / "static" / "images"
    assert all((shipped / name).is_file() for name in GX_SHIPPED_IMAGES.values())


def test_the_logo_gx_loads_from_its_bucket_is_one_it_ships():
    """top_navbar.j2 builds the logo's address from a variable: the names it appends are mapped."""
    navbar = _gx_template_texts()["top_navbar.j2"]
    assert f'static_images_dir = "{GX_WEB_ASSETS}"' in navbar
    assert set(re.findall(r'static_images_dir \+ "([\w.-]+)"', navbar)) <= set(GX_SHIPPED_IMAGES)


def test_vendored_files_match_gx_integrity_hashes():
    """GX pins Popper and Bootstrap's JavaScript by subresource integrity: the browser runs the
    vendored copies only if they are byte for byte the files GX expects."""
    pinned = {}
    for text in _gx_template_texts().values():
        for tag in re.findall(r"<script\b[^>]*>", text):
            src, integrity = re.search(r'src="([^"]+)"', tag), re.search(r'integrity="sha384-([^"]+)"', tag)
            if src and integrity:
                pinned[src[1]] = integrity[1]
    assert len(pinned) == 2, pinned
    for url, expected in pinned.items():
        digest = base64.b64encode(hashlib.sha384((VENDORED / CDN_FILES[url]).read_bytes()).digest()).decode()
        assert digest == expected, url


def test_rewriting_is_exact():
    """An address that merely starts like a vendored one is left alone; quotes are kept."""
    html = (
        '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
        "<script src='https://cdn.jsdelivr.net/npm/vega@5.1.0'></script>"
        '<a href="https://greatexpectations.io">GX</a>'
    )
    assert local_page(html, "index.html") == (
        '<script src="../static/data-docs/vega@5.33.1/build/vega.min.js"></script>'
        "<script src='https://cdn.jsdelivr.net/npm/vega@5.1.0'></script>"
        '<a href="https://greatexpectations.io">GX</a>'
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A Data Docs site rendered by GX through the gates' own configuration and action
    (retention.gates.data_docs), from a dataframe: one suite named like the gates' (dots), one
    passed and one failed expectation."""
    import great_expectations as gx
    import pandas as pd
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults
    from retention.gates.data_docs import docs_actions, with_site

    docs = tmp_path_factory.mktemp("data_docs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETENTION_DATA_DOCS_DIR", str(docs))  # the action's lock file goes there
        config = with_site(DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults()), docs)
        context = gx.get_context(project_config=config, mode="ephemeral")
        batch = (
            context.data_sources.add_pandas("frames")
            .add_dataframe_asset("t")
            .add_batch_definition_whole_dataframe("all")
        )
        suite = context.suites.add(
            gx.ExpectationSuite(
                "quotes.before.app.quotes",
                expectations=[
                    gx.expectations.ExpectColumnValuesToNotBeNull(column="id"),
                    gx.expectations.ExpectColumnValuesToBeUnique(column="id"),
                ],
            )
        )
        definition = context.validation_definitions.add(gx.ValidationDefinition(name="v", data=batch, suite=suite))
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(name="c", validation_definitions=[definition], actions=docs_actions(context))
        )
        checkpoint.run(batch_parameters={"dataframe": pd.DataFrame({"id": [1, 2, 2]})})
    assert (docs / "site" / "index.html").is_file()
    return docs / "site"


def _loaded_addresses(html: str) -> list[str]:
    """What a page loads: its scripts, stylesheets, icons and images, and the CSS url()s."""
    tags = re.findall(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)=["']([^"']+)["']""", html)
    return tags + re.findall(r"""url\(\s*['"]?([^'")\s]+)""", html)


def test_pages_gx_renders_load_only_files_this_server_has(site, monkeypatch):
    """Every page of the site, served by the Retention page: its scripts, stylesheets and images
    resolve (under any URL prefix) to a vendored file or a file of the site."""
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(site.parent))
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    assert "index.html" in pages and any(p.startswith("validations/") for p in pages), pages
    for page in pages:
        loaded = _loaded_addresses(data_docs_response(page).body.decode())
        assert len(loaded) >= 16, (page, loaded)
        assert not [a for a in loaded if re.match(r"(https?:)?//", a)], page
        for address in loaded:
            # GX's favicon.j2 climbs one folder fewer than its navbar on result pages: a local 404.
            if address.startswith("data:") or address.endswith("favicon.ico"):
                continue
            path = urlsplit(urljoin(SERVED_AT + "data-docs/" + page, address)).path
            if path.startswith("/retention/static/data-docs/"):
                assert (VENDORED / path.removeprefix("/retention/static/data-docs/")).is_file(), (page, address)
            else:
                assert path.startswith("/retention/data-docs/"), (page, address)
                assert (site / path.removeprefix("/retention/data-docs/")).is_file(), (page, address)


def test_no_gate_yet_the_index_says_so(tmp_path, monkeypatch):
    """Before the first gate has built the site, its index is a short page, not an error in JSON."""
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(tmp_path / "docs"))
    for path in ("", "index.html"):
        response = data_docs_response(path)
        assert response.status_code == 200 and response.media_type == "text/html"
        assert "No gate has run yet" in response.body.decode()
        assert "https://" not in response.body.decode()  # nothing from outside either
    with pytest.raises(HTTPException) as missing:
        data_docs_response("validations/quotes.html")
    assert missing.value.status_code == 404


def test_data_docs_turned_off_the_index_says_so(monkeypatch):
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", "off")
    body = data_docs_response("index.html").body.decode()
    assert "Data Docs are turned off" in body and "No gate has run yet" not in body


@pytest.mark.parametrize("path", ["../.lock", "/etc/passwd"])
def test_nothing_outside_the_site_is_served(site, monkeypatch, path):
    """The gates' lock file (`../.lock`) lies beside the site, with the validation results."""
    monkeypatch.setenv("RETENTION_DATA_DOCS_DIR", str(site.parent))
    assert (site / path).resolve().is_file()
    with pytest.raises(HTTPException) as refused:
        data_docs_response(path)
    assert refused.value.status_code == 404


@pytest.mark.parametrize("path", ["../../app.py", "/etc/passwd"])
def test_nothing_outside_the_vendored_folder_is_served(path):
    from retention_ui.data_docs import vendored_file

    assert (VENDORED / path).resolve().is_file()
    with pytest.raises(HTTPException) as refused:
        vendored_file(path)
    assert refused.value.status_code == 404
