"""Local stand-in for the project's permissioned EVM network (anvil configured like a gas-free QBFT chain)."""

from erx_chain.accounts import DEV_MNEMONIC, DevAccounts, dev_accounts
from erx_chain.node import (
    CHAIN_ID,
    NodeProcess,
    anvil_argv,
    anvil_process,
    find_anvil,
    port_of,
    prepare_state_file,
    proxy_process,
    wait_for_rpc,
)
from erx_chain.journal import Journal, JournalEntry, tx_hash_of

__all__ = [
    "CHAIN_ID",
    "DEV_MNEMONIC",
    "DevAccounts",
    "NodeProcess",
    "anvil_argv",
    "anvil_process",
    "dev_accounts",
    "find_anvil",
    "Journal",
    "JournalEntry",
    "port_of",
    "prepare_state_file",
    "proxy_process",
    "tx_hash_of",
    "wait_for_rpc",
]
