"""Deterministic development accounts for the local chain.

Public test keys only: never fund them or grant them roles on a shared network.
Each role gets its own BIP-44 account index, so adding doctors never shifts the pharmacies.
"""

from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount

# The widely known Hardhat/Foundry test mnemonic: obviously public.
DEV_MNEMONIC = "test test test test test test test test test test test junk"

_AUTHORITY, _DOCTORS, _PHARMACIES = 0, 1, 2

Account.enable_unaudited_hdwallet_features()


@dataclass(frozen=True)
class DevAccounts:
    authority: LocalAccount  # governance admin and deployer (the health authority)
    doctors: tuple[LocalAccount, ...]
    pharmacies: tuple[LocalAccount, ...]


def _derive(mnemonic: str, role: int, index: int) -> LocalAccount:
    return Account.from_mnemonic(mnemonic, account_path=f"m/44'/60'/{role}'/0/{index}")


def dev_accounts(n_doctors: int = 2, n_pharmacies: int = 2, mnemonic: str = DEV_MNEMONIC) -> DevAccounts:
    return DevAccounts(
        authority=_derive(mnemonic, _AUTHORITY, 0),
        doctors=tuple(_derive(mnemonic, _DOCTORS, i) for i in range(n_doctors)),
        pharmacies=tuple(_derive(mnemonic, _PHARMACIES, i) for i in range(n_pharmacies)),
    )
