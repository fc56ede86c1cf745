"""A local Hyperledger Indy pool (indy-node 1.13.2 validators as native processes) and a typed
async client for it.

- ``erx_indy.node_venv``: builds the Python 3.8 venv the validators run in.
- ``erx_indy.pool``: creates a pool folder and describes the validator processes to run.
- ``erx_indy.ledger``: ``IndyLedger``, reads and writes through indy-vdr.

Submodules are imported explicitly so that ``node_venv`` and ``pool`` need only the standard
library and pydantic, and ``ledger`` is the only one that loads indy-vdr.
"""
