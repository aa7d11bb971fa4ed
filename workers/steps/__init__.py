"""A job's steps (prepare, trial, finalize) and what only they use."""
