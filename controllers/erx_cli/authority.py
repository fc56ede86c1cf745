"""The health authority as its own deployment: it governs who may issue and dispense.

Its home holds only its own keys: the DID seed it writes to the Indy network with (TRUSTEE, admitted by
the network's governance) and its chain key (the token contract's admin). It

- publishes the national prescription schema and deploys the token contract, then the completed
  network descriptor (`descriptor.json`) organisations join with;
- onboards an organisation from its join request: its DID as ENDORSER on the Indy network, and on the
  chain either the register of prescribers (a practice: trusted by every pharmacy, and allowed to
  create tokens, in one transaction) or the dispenser role (a pharmacy);
- offboards it: a practice leaves the register (its prescriptions are refused `untrusted_issuer`
  everywhere, and it can create no more tokens); a pharmacy loses the dispenser role.

What becomes of an offboarded practice's open tokens: nothing on chain: they stay, unspent, until their
validity ends, and no pharmacy dispenses them because the register no longer lists their issuer (a
pharmacy's own `allow` override could, deliberately). Patients get a new prescription from another
practice. See docs/deployment.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, ConfigDict, Field

from erx_chain.keystore import load_or_create
from erx_cli.launch import SetupError
from erx_contracts.client import PrescriptionTokenClient
from erx_contracts.config import ChecksumAddress
from erx_core.descriptor import AuthorityRef, NetworkDescriptor
from erx_core.ids import IndyDid
from erx_core.progress import SILENT, Progress
from erx_core.secrets import SecretStore
from erx_indy.ledger import IndyLedger, did_from_seed
from erx_schemas.prescription import ATTRIBUTES, SCHEMA_NAME, SCHEMA_VERSION

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"


class JoinRequest(BaseModel):
    """What an organisation hands the authority to be onboarded: public facts only."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["doctor", "pharmacy"]
    name: str = Field(pattern=NAME_PATTERN)
    label: str = Field(min_length=1, max_length=200)
    did: IndyDid
    verkey: str = Field(min_length=32, max_length=64)
    chain_address: ChecksumAddress

    @classmethod
    def load(cls, path: Path) -> JoinRequest:
        return cls.model_validate_json(path.read_text())


class Member(BaseModel):
    """An organisation the authority has onboarded (and perhaps offboarded since)."""

    request: JoinRequest
    active: bool = True


class Deployment(BaseModel):
    """Where the authority deployed the token contract."""

    contract_address: ChecksumAddress
    admin: ChecksumAddress


class HealthAuthority:
    def __init__(self, home: Path, name: str = "health-authority", progress: Progress = SILENT):
        self.home, self.name, self.progress = home, name, progress
        self.secrets = SecretStore(home / "secrets.json")
        self.network_file = home / "network.json"  # the network's half of the descriptor, as given at init
        self.descriptor_file = home / "descriptor.json"  # the completed descriptor this authority publishes
        self.members_file = home / "members.json"
        self.deployment_file = home / "deployment.json"
        self._chain_key: LocalAccount | None = None

    # -- identity ---------------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        return self.network_file.exists()

    def init(self, network: NetworkDescriptor) -> None:
        """Make this authority's keys (once) and remember which network it governs."""
        self.home.mkdir(parents=True, exist_ok=True)
        network.save(self.network_file)
        self.did_and_verkey()
        self.chain_key()

    def _seed(self) -> str:
        return self.secrets.seed(self.name).get_secret_value()

    def did_and_verkey(self) -> tuple[str, str]:
        return did_from_seed(self._seed())

    def chain_key(self) -> LocalAccount:
        if self._chain_key is None:
            password = self.secrets.get(f"chain-keystore-password:{self.name}").get_secret_value()
            self._chain_key = load_or_create(self.home / "chain-key.json", password)
        return self._chain_key

    def network(self) -> NetworkDescriptor:
        if not self.initialised:
            raise SetupError(f"no health authority in {self.home}: run `erx authority init` first")
        return NetworkDescriptor.load(self.network_file)

    def descriptor(self) -> NetworkDescriptor:
        if not self.descriptor_file.exists():
            raise SetupError(f"the health authority in {self.home} has not published its descriptor: "
                             "run `erx authority up`")
        return NetworkDescriptor.load(self.descriptor_file)

    # -- up: schema, contract, descriptor -------------------------------------------------------------
    async def up(self) -> NetworkDescriptor:
        network = self.network()
        did, _ = self.did_and_verkey()
        async with await IndyLedger.open(network.indy.genesis_file) as ledger:
            nym = await ledger.get_nym(did, require_state_proof=False)
            if nym is None:
                raise SetupError(f"the health authority's DID {did} is not on the Indy network yet: the network's "
                                 "trustees must admit it first (dev: `erx network up` does)")
            schema_id = await self._publish_schema(ledger, did)
        contract = await self._deploy_contract(network)
        descriptor = network.model_copy(update={
            "prescription_schema_id": schema_id,
            "chain": network.chain.model_copy(update={"token_contract": contract}),
            "authority": AuthorityRef(name=self.name, did=did, chain_address=self.chain_key().address)})
        descriptor.save(self.descriptor_file)
        self.progress(f"health authority: descriptor published at {self.descriptor_file}")
        return descriptor

    async def _publish_schema(self, ledger: IndyLedger, did: str) -> str:
        schema_id = f"{did}:2:{SCHEMA_NAME}:{SCHEMA_VERSION}"
        if await ledger.get_schema(schema_id) is None:
            schema_id = await ledger.write_schema(self._seed(), SCHEMA_NAME, SCHEMA_VERSION, ATTRIBUTES)
            self.progress(f"indy pool: health authority published the prescription schema {schema_id}")
        return schema_id

    async def _deploy_contract(self, network: NetworkDescriptor) -> str:
        admin = self.chain_key()
        if self.deployment_file.exists():
            deployment = Deployment.model_validate_json(self.deployment_file.read_text())
            if deployment.admin != admin.address:
                raise SetupError(f"the token contract at {deployment.contract_address} is governed by "
                                 f"{deployment.admin}, not by this authority's key {admin.address}: "
                                 "run `./erx reset --yes`")
            return deployment.contract_address
        client = await PrescriptionTokenClient.deploy(network.chain.client_config(), admin)
        try:
            deployment = Deployment(contract_address=client.contract_address, admin=admin.address)
        finally:
            await client.close()
        self.deployment_file.write_text(deployment.model_dump_json(indent=2))
        self.progress(f"chain: token contract deployed at {deployment.contract_address}")
        return deployment.contract_address

    # -- governance ----------------------------------------------------------------------------------
    def members(self) -> dict[str, Member]:
        if not self.members_file.exists():
            return {}
        raw = json.loads(self.members_file.read_text())
        return {did: Member.model_validate(m) for did, m in raw.items()}

    def _save_members(self, members: dict[str, Member]) -> None:
        tmp = self.members_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({did: m.model_dump(mode="json") for did, m in members.items()}, indent=2))
        tmp.replace(self.members_file)

    def member(self, name_or_did: str) -> Member:
        for did, m in self.members().items():
            if name_or_did in (did, m.request.name):
                return m
        raise SetupError(f"{name_or_did!r} is not an organisation this authority onboarded")

    async def _token_client(self) -> PrescriptionTokenClient:
        return await PrescriptionTokenClient.connect(self.descriptor().chain.client_config(), self.chain_key())

    async def onboard(self, request: JoinRequest) -> None:
        """Idempotent: what is on the ledger and the chain already is left as it is."""
        descriptor = self.descriptor()
        members = self.members()
        known = members.get(request.did)
        if known is not None and known.request.chain_address != request.chain_address and known.active:
            raise SetupError(f"{request.did} is onboarded with chain account {known.request.chain_address}; "
                             "offboard it before onboarding it with another")
        async with await IndyLedger.open(descriptor.indy.genesis_file) as ledger:
            if await ledger.get_nym(request.did) is None:
                await ledger.write_nym(self._seed(), request.did, request.verkey, role="ENDORSER",
                                       alias=request.name)
                self.progress(f"indy pool: {request.name} DID {request.did} written as ENDORSER")
        async with await self._token_client() as chain:
            if request.role == "doctor":
                if not await chain.is_trusted_prescriber(request.did):
                    await chain.add_prescriber(request.did, request.chain_address)
                    self.progress(f"chain: {request.name} ({request.did}) on the register of prescribers")
            elif not await chain.is_dispenser(request.chain_address):
                await chain.add_dispenser(request.chain_address)
                self.progress(f"chain: {request.name} ({request.chain_address}) may dispense")
        members[request.did] = Member(request=request, active=True)
        self._save_members(members)

    async def offboard(self, name_or_did: str) -> Member:
        member = self.member(name_or_did)
        request = member.request
        async with await self._token_client() as chain:
            if request.role == "doctor":
                if await chain.is_trusted_prescriber(request.did):
                    await chain.remove_prescriber(request.did)
            elif await chain.is_dispenser(request.chain_address):
                await chain.remove_dispenser(request.chain_address)
        members = self.members()
        members[request.did] = member = Member(request=request, active=False)
        self._save_members(members)
        self.progress(f"chain: {request.name} ({request.did}) offboarded")
        return member
