"""The gates' Great Expectations Data Docs as the Retention page serves them: with no internet,
and with a page of their own before the first gate has built them.

GX 1.24's Data Docs pages load Bootstrap, jQuery, Font Awesome, vega... from public CDNs and
GX's logo from GX's S3 bucket (its templates, great_expectations/render/view/templates/). GX has
no setting for those addresses, and a ``custom_views_directory`` cannot replace its templates
(its loader comes after the package's own: render/view/view.py, DefaultJinjaView.__init__). So
each page is rewritten as it is served: a CDN address becomes the copy vendored in
static/data-docs/ (its README names versions and licences), the logo GX's own copy in the site's
static/images/. Rewriting when serving, not when GX builds, also mends the pages built before
and keeps the gates free of the UI's paths. The addresses are relative to the page, so the site
works under any URL prefix.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

HERE = Path(__file__).resolve().parent
VENDORED = HERE / "static" / "data-docs"
TEMPLATES = HERE / "templates"

# Each address GX's templates load (what tests/test_data_docs_assets.py finds there) -> its copy
# under static/data-docs/, as <npm package>@<version>/<path in the package>.
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap@4.3.1/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap@4.3.1/dist/js/bootstrap.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js"
    ),
    # The package's minified copy of the stylesheet GX links unminified (860 KB -> 150 KB).
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.min.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "@fortawesome/fontawesome-free@6.6.0/css/all.min.css"
    ),
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js@1.12.9/dist/umd/popper.min.js",
    # GX pins a major version only: the newest of that major when vendored (what jsDelivr served).
    "https://cdn.jsdelivr.net/npm/vega@5": "vega@5.33.1/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite@5.23.0/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed@6.29.0/build/vega-embed.min.js",
}
# GX's web assets (its logo, with the data context's id in the query string) -> the image GX
# ships in the site's static/images/ (it ships no dark-mode logo: the dark theme shows this one).
GX_WEB_ASSETS = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
GX_SHIPPED_IMAGES = {"logo-long.png": "logo-long.png", "full_logo_dark.png": "logo-long.png"}

# A CDN address as a whole attribute value (quoted), never a prefix of a longer one.
_CDN_ADDRESS = re.compile(
    r"""(["'])(""" + "|".join(re.escape(url) for url in sorted(CDN_FILES, key=len, reverse=True)) + r")\1"
)
_GX_WEB_ASSET = re.compile(re.escape(GX_WEB_ASSETS) + r"""([\w.-]+)(?:\?[^"'()\s]*)?""")


def local_page(html: str, page: str) -> str:
    """A Data Docs page (``page``: its path in the site) loading everything from this server."""
    up = "../" * page.count("/")  # from the page's folder to the site's root (/retention/data-docs/)
    vendored = f"{up}../static/data-docs/"
    html = _CDN_ADDRESS.sub(lambda m: m[1] + vendored + CDN_FILES[m[2]] + m[1], html)
    return _GX_WEB_ASSET.sub(lambda m: f"{up}static/images/{GX_SHIPPED_IMAGES.get(m[1], m[1])}", html)


def vendored_file(path: str) -> FileResponse:
    """A vendored asset of static/data-docs/, never a file outside it."""
    root = VENDORED.resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404)
    # The files never change under a name (the version is in the path): browsers may keep them.
    return FileResponse(target, headers={"Cache-Control": "private, max-age=86400"})


def data_docs_response(path: str) -> Response:
    """A file of the Data Docs site the gates build (retention.paths.data_docs_dir()/site), never
    outside it; its pages made local (``local_page``). Before the site exists (no gate has run
    with Data Docs on) or with Data Docs turned off, its index is a page that says so."""
    from retention.paths import data_docs_dir

    page = path or "index.html"
    docs = data_docs_dir()
    site = (docs / "site").resolve() if docs is not None else None
    target = (site / page).resolve() if site is not None else None
    if target is not None and not target.is_relative_to(site):
        raise HTTPException(404)
    if target is None or not target.is_file():
        if page != "index.html":
            raise HTTPException(404)
        return HTMLResponse(_missing_page(turned_off=docs is None), headers={"Cache-Control": "no-store"})
    if target.suffix == ".html":
        return HTMLResponse(local_page(target.read_text(encoding="utf-8"), page))
    return FileResponse(target)


def _missing_page(turned_off: bool) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    return env.get_template("data_docs_missing.html").render(turned_off=turned_off)
