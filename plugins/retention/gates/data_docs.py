"""The gates' Data Docs site: where GX renders the validation results, counts only.

A local folder (``retention.paths.data_docs_dir()``, off with ``RETENTION_DATA_DOCS_DIR=off``)
that the Retention page serves under /retention/data-docs/: the HTML site in ``site/``, the
validation results it is built from in ``validations/``. A gate gathers its validation results
(its Checkpoint runs on the tables, one validation per archive object) and updates it once for
all of them at its end (``update_data_docs``, GX's action ``docs_actions``). A failure to build
it never fails a gate.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from retention.gates.results import short_message
from retention.paths import data_docs_dir

log = logging.getLogger(__name__)

DATA_DOCS_SITE = "retention"
# The Data Docs index lists at most this many validation results (newest first): its rebuild
# after each gate reads them, so it must not grow with the history.
DATA_DOCS_INDEX_LIMIT = 300


def with_site(config, docs: Path):
    """A GX project config keeping the validation results and the Data Docs site on disk under
    `docs` (its other stores stay as they are)."""
    config.stores["validation_results_store"] = {
        "class_name": "ValidationResultsStore",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs / "validations")},
    }
    config.data_docs_sites = {
        DATA_DOCS_SITE: {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs / "site")},
            # GX's own views, their compiled templates kept on disk (retention.gates.data_docs_views).
            "site_section_builders": {
                "expectations": {"view": _VIEW},
                "validations": {"view": _VIEW},
            },
            "site_index_builder": {
                "class_name": "DefaultSiteIndexBuilder",
                "validation_results_limit": DATA_DOCS_INDEX_LIMIT,
                "view": _INDEX_VIEW,
            },
        }
    }
    return config


_VIEW = {"module_name": "retention.gates.data_docs_views", "class_name": "CachedPageView"}
_INDEX_VIEW = {"module_name": "retention.gates.data_docs_views", "class_name": "CachedIndexPageView"}


def docs_actions(context) -> list:
    """The Checkpoints' actions: update the Data Docs site (when Data Docs are on)."""
    return (
        [_data_docs_action_class()(name="update_data_docs", site_names=[DATA_DOCS_SITE])] if _docs_on(context) else []
    )


def _docs_on(context) -> bool:
    return DATA_DOCS_SITE in (context.get_config().data_docs_sites or {})


_ACTION_CLASS = None


def _data_docs_action_class():
    """GX's UpdateDataDocsAction, building the site once for all the results of a Checkpoint run
    (GX's rebuilds it once per result), under a file lock (two gates may finish at once), and
    never failing a gate: the gate's verdict does not depend on its documentation."""
    global _ACTION_CLASS
    if _ACTION_CLASS is not None:
        return _ACTION_CLASS
    from typing import Literal

    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    class RetentionDataDocsAction(UpdateDataDocsAction):
        type: Literal["retention_update_data_docs"] = "retention_update_data_docs"

        def run(self, checkpoint_result, action_context=None) -> dict:
            return self.build(checkpoint_result.run_results)

        def build(self, run_results: dict) -> dict:
            """The site's pages of these validation results (and their suites), and its index."""
            identifiers = []
            for identifier, result in run_results.items():
                identifiers += [identifier, ExpectationSuiteIdentifier(name=result.suite_name)]
            if not identifiers:
                return {}
            try:
                with _docs_lock():
                    self._build_data_docs(site_names=self.site_names, resource_identifiers=identifiers)
            except Exception as exc:  # GX raises many classes; the gate's outcome stands
                log.warning("Data Docs not updated: %s", short_message(exc))
            return {}

    RetentionDataDocsAction.update_forward_refs(Literal=Literal)  # this module's annotations are strings
    _ACTION_CLASS = RetentionDataDocsAction
    return _ACTION_CLASS


@contextlib.contextmanager
def _docs_lock():
    import fcntl

    docs = data_docs_dir()
    docs.mkdir(parents=True, exist_ok=True)
    with open(docs / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update_data_docs(context, run_results: dict) -> None:
    """One Data Docs update for the validation results a gate gathered (its Checkpoint runs and
    its archive objects' validations)."""
    if not run_results or not _docs_on(context):
        return
    action = docs_actions(context)[0]
    action._data_context = context
    action.build(run_results)
