"""`python -m tools.seed ...`: the command line of the synthetic-data generator."""

from __future__ import annotations

from tools.seed import main

main()
