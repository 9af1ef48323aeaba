"""Benchmark of the archive-and-delete engine (issue 5): ``python -m bench.run``.

Three contestants do the same job on identical fresh copies of N expired quotes rows, each in
its own process: the machine's limit (COPY out, one upload, one DELETE), the hand-written
pandas peer, and the project's engine (the DAGs' code path, every safety on). The report adds
DAG parse times, a full daily run of the seven purposes on generated data, and a profile.
"""
