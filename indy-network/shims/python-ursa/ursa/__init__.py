"""The subset of python-ursa that indy-plenum uses, backed by indy-bls."""
