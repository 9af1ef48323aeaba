"""Deterministic synthetic data for the operational schema (DESIGN.md §5), any scale.

    PYTHONPATH=plugins:. python -m tools.seed --dsn postgresql://postgres@127.0.0.1:5432/insurer \\
        --customers 100000 --seed 42 --reference-date 2026-11-25 \\
        [--s3-endpoint http://127.0.0.1:9000 --documents-bucket insurer-documents] [--reset]

What the data looks like: a French pet insurer after ten years of business, seen on the
reference date R, in a database where the retention DAGs already ran every day until
E = R - 45 days:

- long-lived records (customers, running contracts and their claims, hired candidates)
  go back ten years;
- a record that was due at E under include/retention_policy.yaml is gone, unless a record
  that still exists references it (it then waits, as the engine would have left it);
- so the first run at R has about 45 days of backlog for every rule;
- for every rule of the policy there are records first due at R - 1 day, R and R + 1 day
  (the first and last second of each day's window, and 30 minutes in), plus leap-day
  clocks, NULL clocks, converted quotes, hired candidates, and legal holds on a few due
  records of several tables.

Which rows a rule selects and from which clock is mirrored from include/sql in one place per
purpose (the RULE_CLOCKS of the purpose's module); the periods always come from the policy file.

No card security code (CVV/CVC) is ever generated: payment methods hold processor
references only. The same seed and arguments give the same rows, ids and documents.

The modules, from the top (a module imports only from its own line and the lines below it):

- ``__main__``: the command line; ``load``: seed_database (generate, upload the documents, load
  the rows in one transaction); ``documents``, ``copy_writer``, ``report``: the documents bucket,
  COPY, the counts;
- ``generator``: the whole data set in order, legal holds; ``tables``: every table, delete order;
- ``boundaries``: a record at a chosen clock, per rule; ``families``: the random customers,
  prospects and visitors; ``subscription``: a contract signed, with what comes with it;
- one module per purpose of the policy, holding its tables' rows, its rules' clocks, its
  vocabulary, how its records are made and what a customer or prospect leaves in its tables:
  ``quotes``, ``contracts``, ``prospects`` (customers, pets, prospects: the people every other
  purpose refers to), ``call_recordings``, ``aml``, ``fraud``, ``job_applications``,
  ``subscriber_services``, ``marketing``, ``information_requests``, ``rights_requests``,
  ``cookie_consents``;
- ``builder``: what every purpose's functions draw from and add to (the family being built, the
  retention model's verdict on it); ``draws``: random values; ``people``: Faker pools;
  ``dates``: R, E and each rule's cutoffs (RetentionModel); ``rows``: the Row base; ``errors``.

Imported by tools/devstack.py, the bench and the tests only (Faker, psycopg, boto3): never by a DAG.
"""
