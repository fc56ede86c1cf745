"""Local stand-in for the project's permissioned EVM network (anvil configured like a gas-free QBFT chain)."""

from erx_chain.accounts import DEV_MNEMONIC, DevAccounts, dev_accounts
from erx_chain.node import (
    CHAIN_ID,
    NodeProcess,
    anvil_argv,
    anvil_process,
    find_anvil,
    prepare_state_file,
    wait_for_rpc,
)

__all__ = [
    "CHAIN_ID",
    "DEV_MNEMONIC",
    "DevAccounts",
    "NodeProcess",
    "anvil_argv",
    "anvil_process",
    "dev_accounts",
    "find_anvil",
    "prepare_state_file",
    "wait_for_rpc",
]
