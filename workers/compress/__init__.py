"""Compression methods: profiling, criteria, masks, pruning, low-rank, triage."""
