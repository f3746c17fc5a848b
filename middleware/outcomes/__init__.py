"""Closing the loop: the outcome of each journey entry, randomized holdouts and the
statistics of their reports. ``stats`` and ``holdout`` are pure (no database, no
careloop imports), so the arithmetic can be checked against published worked examples."""
