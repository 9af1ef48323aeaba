"""GX's Data Docs page views with their compiled templates kept on disk (``<data docs>/cache``).

GX builds a new Jinja environment for every view of every Data Docs build, so each gate task
compiled the same 42 page templates again (0.15 s a view here, most of a small gate's Data Docs
update). With Jinja's own bytecode cache the templates are compiled once per machine and loaded
afterwards (0.01 s); a template that changed (a GX upgrade) is compiled again, its checksum no
longer matching. Named in the site's configuration (retention.gates.data_docs.with_site), which
GX reads to build its views: imported by GX during a build only (it imports GX at its top).
"""

from __future__ import annotations

from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView
from jinja2 import FileSystemBytecodeCache

from retention.paths import data_docs_dir


def _bytecode_cache() -> FileSystemBytecodeCache | None:
    docs = data_docs_dir()
    if docs is None:
        return None
    cache = docs / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    return FileSystemBytecodeCache(str(cache))  # writes each file whole (a temporary file renamed)


class CachedPageView(DefaultJinjaPageView):
    """A validation or suite page."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _bytecode_cache()


class CachedIndexPageView(DefaultJinjaIndexPageView):
    """The site's index page."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = _bytecode_cache()
