"""PrescriptionToken: the on-chain double-redemption check, and its async Python ledger client."""

from erx_contracts.artifact import ContractArtifact, load_artifact
from erx_contracts.client import (
    Prescriber,
    PrescriptionKey,
    PrescriptionTokenClient,
    TokenSpec,
    TokenStatus,
    TxResult,
    new_prescription_key,
    sign_spend,
    spend_typed_data,
)
from erx_contracts.config import ChainConfig

__all__ = [
    "ChainConfig",
    "ContractArtifact",
    "Prescriber",
    "PrescriptionKey",
    "PrescriptionTokenClient",
    "TokenSpec",
    "TokenStatus",
    "TxResult",
    "load_artifact",
    "new_prescription_key",
    "sign_spend",
    "spend_typed_data",
]
