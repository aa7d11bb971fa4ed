"""The ``prunesearch`` command and the local mode: the one layer that sees every other.

``search``, ``serve`` and ``worker`` start the API or the worker side; the
local mode runs the workers' own task functions in-process on SQLite, which
is why this package, and only this one, may import both sides.
"""
