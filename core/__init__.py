"""What the API and the workers share: JobSpec, Settings, errors, queue, database.

It stands on ``search`` alone, so that ``service`` (the API process, which
never loads torch) and ``workers`` (the torch side) can both import it and
never each other (docs/architecture.md; tests/test_layers.py).
"""
