# The official Airflow 3 image plus this project's runtime dependencies, at the versions the
# test suite runs with (constraints.txt, resolved together with requirements.txt by `make lock`).
#
# requirements.txt pins apache-airflow to the version of this base image, so pip leaves Airflow
# itself alone and only adds what the image lacks (Great Expectations, the ADBC PostgreSQL
# driver, psycopg 3, the pinned providers...). The project's code is NOT baked in:
# docker-compose.yaml mounts dags/, plugins/, include/ and tools/ so that edits show at once.
#
# Built by `docker compose build` (or `docker compose up --build`); the apache-airflow pin in
# requirements.txt and the tag below must move together (tests/test_docker_compose.py checks).
FROM apache/airflow:3.3.2-python3.11

# The base image runs pip as the `airflow` user (PIP_USER=true: packages go to ~/.local).
COPY requirements.txt constraints.txt /tmp/retention/
# faker: only for tools.seed (synthetic demo data, run by the retention-init service).
RUN pip install --no-cache-dir \
        -r /tmp/retention/requirements.txt \
        -c /tmp/retention/constraints.txt \
        faker \
 && pip check
