"""How Great Expectations runs the gates' checks: an ephemeral context, suites, checkpoints, counts.

Each gate opens an ephemeral GX context (suites, validation definitions and checkpoints in
memory, rebuilt from ``retention.gates.checks`` every time; validation results and the Data
Docs on disk when they are on) with the source database as a Postgres data source. A gate's
checks become one ``ExpectationSuite`` per table (``contracts.before.app.contracts``) validated
on a whole-table batch, with row conditions, so every metric is an SQL aggregate computed by
PostgreSQL; one ``ValidationDefinition`` per table, all run by one ``Checkpoint`` per gate. The
id columns of a table's archive objects read back (one dataframe) are validated the same way,
one ValidationDefinition per table (run directly). Every validation result of a gate is
gathered (``CheckpointRuns``) and the Data Docs are updated once, at the end of the gate: each
update re-reads the site's index, so one per Checkpoint run cost more than the validations
themselves.

Results are counts only (``partial_unexpected_count`` 0: no unexpected value is fetched, stored
or rendered), each reduced to a result line of ``retention.gates.results``. GX takes 5 s to
import: it is imported inside the functions, never with this module.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from retention.gates.checks import Check
from retention.gates.data_docs import with_site
from retention.gates.results import gate_result, short_message
from retention.paths import data_docs_dir

# Counts only: GX never fetches the unexpected values themselves (they may be personal data).
RESULT_COUNTS = {"result_format": "BASIC", "partial_unexpected_count": 0}
RESULT_IDENTIFIERS = {"result_format": "BASIC", "partial_unexpected_count": 20}


def _project_config(docs: Path | None):
    """In-memory stores (suites, validation definitions, checkpoints: rebuilt from the
    declarations at each gate), except the validation results and the Data Docs site, kept on
    disk under `docs` when Data Docs are on."""
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults())
    if docs is None:
        return config
    return with_site(config, docs)


@contextlib.contextmanager
def gx_sources(dsn: str):
    """An ephemeral GX context (suites and checkpoints in memory; validation results and Data
    Docs on disk when on) with the source database as a Postgres data source; its SQLAlchemy
    engine is closed on exit."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in ("great_expectations", "great_expectations.data_context.types.base"):  # GX sets the 2nd to INFO
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO lines are GX internals
    context = gx.get_context(project_config=_project_config(data_docs_dir()), mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    from retention.connections import sqlalchemy_url

    source = context.data_sources.add_postgres("source", connection_string=sqlalchemy_url(dsn))
    try:
        yield context, source
    finally:
        source.get_execution_engine().close()


def frame_batch_definition(context):
    frames = context.data_sources.add_pandas("archive_objects")
    return frames.add_dataframe_asset("archive_object").add_batch_definition_whole_dataframe("whole_object")


def _checkpoint(context, name: str, definitions: list, result_format: dict):
    """A Checkpoint without actions: the gate updates the Data Docs once for all its runs."""
    import great_expectations as gx

    return context.checkpoints.add(
        gx.Checkpoint(name=name, validation_definitions=definitions, actions=[], result_format=result_format)
    )


def _definition(context, batch_definition, suite_name: str, checks: list[Check]):
    import great_expectations as gx

    suite = context.suites.add(
        gx.ExpectationSuite(name=suite_name, expectations=[_expectation(c, i) for i, c in enumerate(checks)])
    )
    return context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch_definition, suite=suite)
    )


def _result_format(checks: list[Check]) -> dict:
    return RESULT_IDENTIFIERS if any(c.values_are_identifiers for c in checks) else RESULT_COUNTS


@dataclass
class CheckpointRuns:
    """The validation results of one gate, by their identifier, for one Data Docs update at its
    end (``retention.gates.data_docs.update_data_docs``)."""

    run_results: dict = field(default_factory=dict)


def validate_tables(context, source, suite_prefix: str, checks: list[Check], runs: CheckpointRuns) -> list[dict]:
    """One ValidationDefinition per table (a whole-table batch: metrics are computed in SQL), run
    by the gate's Checkpoint (one per result format: column names may be listed, values never);
    the runs are gathered in ``runs`` for the gate's Data Docs update."""
    by_table: dict[str, list[Check]] = defaultdict(list)
    for check in checks:
        by_table[check.table].append(check)
    results: dict[str, list[dict]] = {}
    by_format: dict[int, list] = defaultdict(list)  # by partial_unexpected_count
    for table, table_checks in by_table.items():
        schema, name = table.split(".", 1)
        try:
            asset = source.add_table_asset(table, table_name=name, schema_name=schema)
            batch_definition = asset.add_batch_definition_whole_table("whole_table")
            batch_definition.get_batch()  # a missing table or a connection error: reported per check
        except Exception as exc:  # GX wraps a missing table or a connection error in several classes
            results[table] = [_result_of(check, None, error=short_message(exc)) for check in table_checks]
            continue
        format_ = _result_format(table_checks)
        by_format[format_["partial_unexpected_count"]].append(
            (table, _definition(context, batch_definition, f"{suite_prefix}.{table}", table_checks), format_)
        )
    for count, definitions in by_format.items():
        name = suite_prefix if count == RESULT_COUNTS["partial_unexpected_count"] else f"{suite_prefix}.identifiers"
        checkpoint = _checkpoint(context, name, [d for _, d, _ in definitions], definitions[0][2])
        checkpoint_result = checkpoint.run()
        runs.run_results.update(checkpoint_result.run_results)
        by_suite = {r.suite_name: r for r in checkpoint_result.run_results.values()}
        for table, _, _ in definitions:
            results[table] = _results_by_check(by_table[table], by_suite.get(f"{suite_prefix}.{table}"))
    return [r for table in by_table for r in results[table]]


def validate_frame(
    context, batch_definition, suite_name: str, checks: list[Check], frame, runs: CheckpointRuns
) -> list[dict]:
    """The archive objects of one table read back (their id columns, one frame): its suite as a
    ValidationDefinition on the dataframe batch, run as such (its result stored, gathered in
    ``runs`` for the Data Docs). Not through a Checkpoint of its own: with no action to run, a
    Checkpoint only re-serialized and re-checked the definition."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    definition = _definition(context, batch_definition, suite_name, checks)
    result = definition.run(batch_parameters={"dataframe": frame}, result_format=_result_format(checks))
    identifier = ValidationResultIdentifier(
        expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
        run_id=result.meta["run_id"],
        batch_identifier=result.batch_id,
    )
    runs.run_results[identifier] = result
    return _results_by_check(checks, result)


def _results_by_check(checks: list[Check], validation) -> list[dict]:
    by_index = {r.expectation_config.meta["check"]: r for r in (validation.results if validation else [])}
    return [_result_of(check, by_index.get(i)) for i, check in enumerate(checks)]


def _expectation(check: Check, index: int):
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    expectation_class = getattr(gxe, "".join(word.capitalize() for word in check.expectation.split("_")))
    kwargs = dict(check.params, meta={"check": index})
    if check.column:
        kwargs["column"] = check.column
    if check.where:
        column = Column(check.where.column)
        kwargs["row_condition"] = (
            column.is_in(check.where.value) if check.where.op == "in" else column <= check.where.value
        )
    return expectation_class(**kwargs)


def _result_of(check: Check, validation_result, error: str | None = None) -> dict:
    """A GX result reduced to counts (and column names where they are what failed)."""
    raw = (validation_result.result if validation_result else None) or {}
    observed = {key: raw[key] for key in ("element_count", "unexpected_count", "missing_count") if key in raw}
    value = raw.get("observed_value")
    if isinstance(value, (int, float, str)):  # a count or a type name (GX returns a str subclass)
        observed["observed_value"] = value if isinstance(value, (int, float)) else str(value)
    if check.values_are_identifiers and raw.get("partial_unexpected_list"):
        observed["unexpected_values"] = [str(value) for value in raw["partial_unexpected_list"]]
    error = error or _exception_message(validation_result)
    if error:
        observed["error"] = error
    success = bool(validation_result.success) if validation_result and not error else False
    return gate_result(
        check.expectation,
        check.table,
        success,
        column=check.column,
        where=str(check.where) if check.where else None,
        **observed,
        **check.reported,
    )


def _exception_message(validation_result) -> str | None:
    info = getattr(validation_result, "exception_info", None) or {}
    entries = [info] if "raised_exception" in info else list(info.values())
    messages = [e.get("exception_message") for e in entries if isinstance(e, dict) and e.get("raised_exception")]
    return short_message(messages[0]) if messages else None
