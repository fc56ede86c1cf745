"""Connection settings of the ledger client (embedded in the project's global settings)."""

from typing import Annotated

from eth_utils import to_checksum_address
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

ChecksumAddress = Annotated[str, AfterValidator(to_checksum_address)]


class ChainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    rpc_url: str = "http://127.0.0.1:8545"
    # 1337 is the local network's id (erx_chain.CHAIN_ID); the client refuses any other endpoint.
    chain_id: int = Field(default=1337, gt=0)
    # None until PrescriptionTokenClient.deploy has run.
    contract_address: ChecksumAddress | None = None
    # How long to wait for a transaction to be mined, and how often to ask.
    tx_timeout: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=0.1, gt=0)
    request_timeout: float = Field(default=10.0, gt=0)
    # 0 on gas-free permissioned networks; None asks the node (eth_gasPrice) for every transaction.
    gas_price_wei: int | None = Field(default=0, ge=0)
    # Gas limit = estimate * margin: headroom for state that changes between estimate and inclusion.
    gas_margin: float = Field(default=1.25, ge=1.0)
    # QBFT/IBFT blocks carry > 32 bytes of extraData, which web3.py rejects without this middleware.
    poa_extra_data: bool = True
