"""The network descriptor: the one file that says which shared network an organisation joins.

The health authority publishes it (in development `erx network up` writes its first half and the
authority's deployment completes it). It names only public things: where the Indy network's genesis
is, the national prescription schema, the EVM chain and its token contract (which also keeps the
national register of trusted prescribers), and the public tails server. Nothing in it is secret, so
it can be served over HTTPS, mailed, or checked into an organisation's configuration repository.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from erx_contracts.config import ChainConfig, ChecksumAddress
from erx_core.ids import IndyDid, SchemaId


class IndyNetworkRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$",
                      description="the network's name, as wallets list it (e.g. bcovrin-test, erx-dev)")
    genesis_file: Path | None = Field(default=None, description="the pool's genesis transactions, on this machine")
    genesis_url: str | None = Field(default=None, pattern=r"^https?://", max_length=2000,
                                    description="or where they are published")

    @model_validator(mode="after")
    def _one_genesis(self) -> IndyNetworkRef:
        if (self.genesis_file is None) == (self.genesis_url is None):
            raise ValueError("name exactly one of genesis_file and genesis_url")
        return self

    def genesis_text(self, timeout_s: float = 30) -> str:
        """The genesis transactions, read from the file or fetched from the URL."""
        if self.genesis_file is not None:
            return self.genesis_file.read_text()
        with urllib.request.urlopen(self.genesis_url, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only)
            return resp.read(4 * 1024 * 1024).decode()


class EvmChainRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpc_url: str = Field(pattern=r"^https?://", max_length=2000)
    chain_id: int = Field(gt=0)
    # the PrescriptionToken contract; None until the authority has deployed it
    token_contract: ChecksumAddress | None = None

    def client_config(self, **overrides) -> ChainConfig:
        return ChainConfig(rpc_url=self.rpc_url, chain_id=self.chain_id, contract_address=self.token_contract,
                           **overrides)


class TrustRegistryRef(BaseModel):
    """Where pharmacies read which practices may prescribe: the token contract's register of prescribers
    (their Indy DIDs), governed by the authority on the permissioned chain."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["token-contract"] = "token-contract"


class AuthorityRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    did: IndyDid
    chain_address: ChecksumAddress


class NetworkDescriptor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    indy: IndyNetworkRef
    chain: EvmChainRef
    tails_server_url: str = Field(pattern=r"^https?://", max_length=2000,
                                  description="public: wallets download tails files from it")
    # filled in by the health authority once it has published them
    prescription_schema_id: SchemaId | None = None
    trust_registry: TrustRegistryRef = TrustRegistryRef()
    authority: AuthorityRef | None = None

    @property
    def complete(self) -> bool:
        """Ready for organisations to join: the authority has published schema and contract."""
        return (self.prescription_schema_id is not None and self.chain.token_contract is not None
                and self.authority is not None)

    def require_complete(self) -> NetworkDescriptor:
        if not self.complete:
            raise ValueError("this network descriptor is not complete yet: the health authority has not published "
                             "the prescription schema and token contract (run `erx authority up`)")
        return self

    @classmethod
    def load(cls, path: Path) -> NetworkDescriptor:
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2, exclude_none=True))
        tmp.replace(path)
