"""The torch side: how a candidate is built and scored, and the queued tasks.

Three wings, public names only across modules: ``compress`` (the methods),
``nets`` (networks, data, training, measurement) and ``steps`` (the job's
prepare / trial / finalize). ``tasks`` keeps the names RQ queues; ``export``
is the hand-back format.
"""
