"""Airflow plugin: the "Retention" page (read-only), served by the api-server under /retention
and linked from the UI's navigation as an external view. The page itself: retention_ui/app.py.
And a guard on the api-server: a retention DAG cannot be triggered with a logical date in the
future (retention_ui/future_guard.py).

This is the only .py file Airflow's plugin loader imports from plugins/ (.airflowignore hides
the packages, which are imported by name through sys.path instead). Every Airflow process loads
plugins, but only the api-server asks for `fastapi_apps`: the app (and Airflow's API security
modules, ~3 s of imports) is built on that first request, not at load.
"""

from __future__ import annotations

import functools

from airflow.plugins_manager import AirflowPlugin

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

    @property
    def fastapi_apps(self) -> list[dict]:
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "Retention"}]

    @property
    def fastapi_root_middlewares(self) -> list[dict]:
        from retention_ui.future_guard import FutureRunGuard

        return [{"middleware": FutureRunGuard, "name": "retention: no run dated in the future"}]
