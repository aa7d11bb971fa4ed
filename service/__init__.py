"""The API process: FastAPI app, dashboard, uploads, limits, reconciler, metrics.

It never imports torch or the workers (tests/test_layers.py), so it starts
fast and runs where no GPU is.
"""
