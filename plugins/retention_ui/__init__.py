"""The Retention page of the Airflow UI (a FastAPI app + an external view): see app.py.

Loaded through plugins/retention_ui_plugin.py; plugins/.airflowignore keeps Airflow's plugin
loader from importing this folder's modules a second time as top-level modules."""
