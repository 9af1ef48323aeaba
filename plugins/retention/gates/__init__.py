"""The quality gates run before and after a purpose's run (Great Expectations, pushed down to SQL).

Imported by tasks only: never at DAG-parse time.
"""
