"""Benchmarks comparable to the papers: ledger, agents, whole flow (`erx bench`)."""
