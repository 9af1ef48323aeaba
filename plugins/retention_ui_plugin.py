"""Airflow plugin: the "Retention" page, served by the api-server under /retention and linked
from the UI's navigation as an external view (retention_ui/app.py); a "Run evidence" button on
the purposes' tasks, to their run's evidence page (retention_ui/links.py). And two guards on the
api-server: a retention DAG cannot be triggered with a logical date in the future
(retention_ui/future_guard.py), nor the data-subject requests DAG with an address in its run
conf (retention_ui/guard.py).

This is the only .py file Airflow's plugin loader imports from plugins/ (.airflowignore hides
the packages, which are imported by name through sys.path instead). Every Airflow process loads
plugins, but only the api-server asks for `fastapi_apps`: the app (and Airflow's API security
modules, ~3 s of imports) is built on that first request, not at load.
"""

from __future__ import annotations

import functools

from airflow.plugins_manager import AirflowPlugin
from retention_ui.links import RunEvidenceLink

URL_PREFIX = "/retention"


@functools.cache
def _app():
    from retention_ui.app import create_app

    return create_app()


class RetentionPlugin(AirflowPlugin):
    name = "retention"
    external_views = [
        {
            "name": "Retention",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "url_route": "retention",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]
    global_operator_extra_links = [RunEvidenceLink()]

    @property
    def fastapi_apps(self) -> list[dict]:
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "Retention"}]

    @property
    def fastapi_root_middlewares(self) -> list[dict]:
        """A trigger refused before Airflow records it: a retention DAG's run dated in the future
        (retention_ui/future_guard.py); the data-subject requests DAG's with an address in its
        conf (retention_ui/guard.py)."""
        from retention_ui.future_guard import FutureRunGuard
        from retention_ui.guard import SubjectRequestConfGuard

        return [
            {"middleware": FutureRunGuard, "name": "retention: no run dated in the future"},
            {"middleware": SubjectRequestConfGuard, "name": "retention: no address in a subject request's conf"},
        ]
