"""Shared core of the e-prescription system: settings, process supervision, ports to agents."""
