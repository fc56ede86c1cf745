"""Async ledger client for PrescriptionToken over any Ethereum JSON-RPC endpoint (anvil, Besu, GoQuorum).

Transactions are signed locally (legacy, EIP-155) and sent with eth_sendRawTransaction, so no node
needs unlocked accounts. Before sending, each transaction is estimated: a revert there raises the
typed contract error without spending a block slot. A transaction that still fails when mined
(e.g. it lost a race) is replayed with eth_call on the block it was mined in to recover its reason.

Spending: the one-time prescription key (sk_presc) signs the EIP-712 message

    domain  = EIP712Domain(name="ErxPrescriptionToken", version="1", chainId, verifyingContract)
    message = Spend(address token, address dispenser, uint16 remaining)

and the pharmacy's own account sends spend(token, remaining, signature). EIP-712 rather than
EIP-191 personal_sign: the domain binds chain id and contract address in a standard, wallet-
displayable way, and the struct hash keeps fields from being shifted between each other.
"""

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from collections.abc import Awaitable, Callable
from typing import Any, Self

import aiohttp
from eth_abi import decode as abi_decode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from eth_utils.abi import collapse_if_tuple
from pydantic import BaseModel, ConfigDict, Field
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import Web3Exception
from web3.middleware import ExtraDataToPOAMiddleware
from web3.providers.rpc.utils import REQUEST_RETRY_ALLOWLIST, ExceptionRetryConfiguration

from erx_contracts.artifact import load_artifact
from erx_contracts.config import ChainConfig, ChecksumAddress
from erx_contracts.errors import (
    ChainConfigError,
    ChainError,
    ChainUnavailable,
    ContractError,
    ReceiptTimeout,
    RpcError,
    StaleSignature,
    TransactionReverted,
    TransactionDropped,
    decode_revert,
)

LOG = logging.getLogger("erx_contracts.client")

UINT16_MAX = 2**16 - 1
UINT32_MAX = 2**32 - 1
EIP712_NAME = "ErxPrescriptionToken"
EIP712_VERSION = "1"


class PrescriptionKey(BaseModel):
    """The one-time key pair of a prescription: its address is the token id (pk_presc)."""

    model_config = ConfigDict(frozen=True)

    address: ChecksumAddress
    private_key: str = Field(repr=False)  # 0x-prefixed hex; travels only inside the credential


class TokenSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: ChecksumAddress
    redemptions: int = Field(default=1, ge=1, le=UINT16_MAX)
    not_before: int = Field(ge=0, le=UINT32_MAX)  # unix seconds, inclusive
    not_after: int = Field(ge=0, le=UINT32_MAX)  # unix seconds, inclusive


class TokenStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    token: ChecksumAddress
    exists: bool
    issuer: ChecksumAddress | None
    remaining: int
    not_before: int
    not_after: int
    cancelled: bool


class Prescriber(BaseModel):
    """A practice in the on-chain register of trusted prescribers."""

    model_config = ConfigDict(frozen=True)

    did: str  # its unqualified Indy DID: the first segment of its credential definition ids
    account: ChecksumAddress  # the chain account it creates tokens from (its last one, once offboarded)
    since: int  # unix seconds (block time) of its latest admission
    active: bool  # False once offboarded: its prescriptions are to be refused


class TxResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    tx_hash: str
    block_number: int
    gas_used: int


def new_prescription_key() -> PrescriptionKey:
    account = Account.create()
    return PrescriptionKey(address=account.address, private_key=account.key.to_0x_hex())


def spend_typed_data(
    *, chain_id: int, contract_address: str, token: str, dispenser: str, remaining: int
) -> dict[str, Any]:
    """The EIP-712 message a one-time key signs to let `dispenser` spend one redemption."""
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Spend": [
                {"name": "token", "type": "address"},
                {"name": "dispenser", "type": "address"},
                {"name": "remaining", "type": "uint16"},
            ],
        },
        "primaryType": "Spend",
        "domain": {
            "name": EIP712_NAME,
            "version": EIP712_VERSION,
            "chainId": chain_id,
            "verifyingContract": to_checksum_address(contract_address),
        },
        "message": {
            "token": to_checksum_address(token),
            "dispenser": to_checksum_address(dispenser),
            "remaining": remaining,
        },
    }


def sign_spend(
    prescription_private_key: str, *, chain_id: int, contract_address: str, dispenser: str, remaining: int
) -> bytes:
    """65-byte (r, s, v) authorisation for one spend of the key's token by `dispenser`."""
    signer = Account.from_key(prescription_private_key)
    message = spend_typed_data(
        chain_id=chain_id,
        contract_address=contract_address,
        token=signer.address,
        dispenser=dispenser,
        remaining=remaining,
    )
    return bytes(signer.sign_message(encode_typed_data(full_message=message)).signature)


# Awaited with (tx_hash, raw signed transaction) before a transaction is sent.
Journal = Callable[[str, str], Awaitable[None]]

# While waiting for a receipt: poll every `poll_interval` for this long, then back off up to MAX_POLL_S.
STEADY_POLL_S = 2.0
MAX_POLL_S = 2.0
# How often a waiting client makes sure the node still has its transaction (a restarted node loses its pool).
PRESENCE_CHECK_S = 1.0


# web3 retries failed requests, eth_sendRawTransaction included: a first attempt that may have reached
# the node would then hide behind a later "connection refused", and a send that may be mined would be
# reported as certainly failed. Sends are retried by this client, which knows what it sent.
_RETRY_READS_ONLY = ExceptionRetryConfiguration(
    errors=(aiohttp.ClientError, TimeoutError),
    method_allowlist=[m for m in REQUEST_RETRY_ALLOWLIST if m not in ("eth_sendRawTransaction", "eth_sign",
                                                                       "eth_signTypedData")])


def _already_known(exc: RpcError) -> bool:
    """The node has this very transaction already (anvil: "already imported", geth/Besu: "already known")."""
    message = exc.message.lower()
    return "already known" in message or "already imported" in message or "known transaction" in message


def _nonce_too_low(exc: RpcError) -> bool:
    return "nonce too low" in exc.message.lower()


def _tx_result(receipt: dict[str, Any]) -> TxResult:
    return TxResult(
        tx_hash=receipt["transactionHash"],
        block_number=int(receipt["blockNumber"], 16),
        gas_used=int(receipt["gasUsed"], 16),
    )


@dataclass
class _NonceSlot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next: int | None = None  # None: ask the node ("pending") before the next send


@dataclass
class _Connection:
    """Shared by all clients made with for_account: one HTTP session, one nonce slot per sender."""

    w3: AsyncWeb3
    nonces: defaultdict[str, _NonceSlot] = field(default_factory=lambda: defaultdict(_NonceSlot))


@cache
def _output_types(fn: str) -> list[str]:
    (entry,) = [e for e in load_artifact().abi if e["type"] == "function" and e["name"] == fn]
    return [collapse_if_tuple(o) for o in entry["outputs"]]


def _revert_data(error_data: Any) -> bytes | None:
    """Revert bytes from a JSON-RPC error's `data`: a hex string on anvil, Besu and geth/GoQuorum;
    some nodes wrap it as {"data": "0x..."}."""
    if isinstance(error_data, dict):
        error_data = error_data.get("data")
    if isinstance(error_data, str) and error_data.startswith("0x") and len(error_data) >= 10:
        try:
            return bytes.fromhex(error_data[2:])
        except ValueError:
            return None
    return None


class PrescriptionTokenClient:
    """Acts as one account (authority, doctor or pharmacy) on one PrescriptionToken deployment.

    Make one with connect() or deploy(), further actors with for_account(); close() ends the
    connection they share.
    """

    def __init__(self, config: ChainConfig, account: LocalAccount | str, connection: _Connection) -> None:
        self.config = config
        self.account: LocalAccount = Account.from_key(account) if isinstance(account, str) else account
        self._conn = connection
        self._contract = connection.w3.eth.contract(abi=load_artifact().abi)

    # ---- lifecycle --------------------------------------------------------------

    @classmethod
    async def connect(cls, config: ChainConfig, account: LocalAccount | str) -> Self:
        """Checks the endpoint's chain id, and that the configured contract has code."""
        provider = AsyncHTTPProvider(
            config.rpc_url, request_kwargs={"timeout": aiohttp.ClientTimeout(total=config.request_timeout)},
            exception_retry_configuration=_RETRY_READS_ONLY,
        )
        w3 = AsyncWeb3(provider)
        if config.poa_extra_data:
            w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        client = cls(config, account, _Connection(w3))
        try:
            chain_id = int(await client.rpc("eth_chainId", []), 16)
            if chain_id != config.chain_id:
                raise ChainConfigError(f"{config.rpc_url} serves chain {chain_id}, configured {config.chain_id}")
            if config.contract_address is not None:
                code = await client.rpc("eth_getCode", [config.contract_address, "latest"])
                if code in ("0x", "0x0", None):
                    raise ChainConfigError(f"no contract at {config.contract_address} on chain {chain_id}")
        except BaseException:
            await client.close()
            raise
        return client

    @classmethod
    async def deploy(cls, config: ChainConfig, admin: LocalAccount | str) -> Self:
        """Deploys a new PrescriptionToken whose governance admin is `admin`; returns its client."""
        client = await cls.connect(config.model_copy(update={"contract_address": None}), admin)
        try:
            receipt = await client._transact(load_artifact().bytecode, to=None)
        except BaseException:
            await client.close()
            raise
        address = to_checksum_address(receipt["contractAddress"])
        return cls(config.model_copy(update={"contract_address": address}), client.account, client._conn)

    def for_account(self, account: LocalAccount | str) -> "PrescriptionTokenClient":
        """Another actor on the same deployment, sharing this client's connection and nonce tracking."""
        return type(self)(self.config, account, self._conn)

    async def close(self) -> None:
        await self._conn.w3.provider.disconnect()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def contract_address(self) -> str:
        if self.config.contract_address is None:
            raise ChainConfigError("no contract_address configured: deploy first")
        return self.config.contract_address

    # ---- governance (admin) -----------------------------------------------------

    async def add_issuer(self, account: str) -> TxResult:
        return await self._send_call("addIssuer", to_checksum_address(account))

    async def remove_issuer(self, account: str) -> TxResult:
        return await self._send_call("removeIssuer", to_checksum_address(account))

    async def add_dispenser(self, account: str) -> TxResult:
        return await self._send_call("addDispenser", to_checksum_address(account))

    async def remove_dispenser(self, account: str) -> TxResult:
        return await self._send_call("removeDispenser", to_checksum_address(account))

    # ---- register of trusted prescribers (admin) ----------------------------------

    async def add_prescriber(self, did: str, account: str) -> TxResult:
        """Admits (or re-admits) the practice `did` and grants `account` the issuer role, in one transaction.

        Typed refusals: InvalidDid (empty, > 64 bytes or not base58), ZeroAddress, PrescriberAlreadyActive,
        AccountInUse (the account belongs to another active practice), NotAdmin."""
        return await self._send_call("addPrescriber", did, to_checksum_address(account))

    async def remove_prescriber(self, did: str) -> TxResult:
        """Offboards the practice `did` and revokes its account's issuer role, in one transaction. Tokens it
        created stay on chain; pharmacies refuse them because the register says untrusted.

        Typed refusals: UnknownPrescriber, PrescriberInactive (already offboarded), NotAdmin."""
        return await self._send_call("removePrescriber", did)

    async def transfer_admin(self, new_admin: str) -> TxResult:
        """Step 1 of the hand-over; `new_admin` completes it with accept_admin."""
        return await self._send_call("transferAdmin", to_checksum_address(new_admin))

    async def accept_admin(self) -> TxResult:
        return await self._send_call("acceptAdmin")

    # ---- tokens -----------------------------------------------------------------

    async def create(self, token: str, *, redemptions: int = 1, not_before: int, not_after: int,
                     journal: Journal | None = None) -> TxResult:
        spec = TokenSpec(token=token, redemptions=redemptions, not_before=not_before, not_after=not_after)
        return await self._send_call("create", spec.token, spec.redemptions, spec.not_before, spec.not_after,
                                     journal=journal)

    async def create_batch(self, specs: Sequence[TokenSpec], *, journal: Journal | None = None) -> TxResult:
        """All tokens in one transaction; any invalid or existing token reverts the whole batch.

        `journal(tx_hash, raw_tx)` is awaited with the signed transaction before it is sent (as for
        `spend`), so a caller that records it can finish the batch after a crash with `resume()`."""
        rows = [(s.token, s.redemptions, s.not_before, s.not_after) for s in specs]
        return await self._send_call("createBatch", rows, journal=journal)

    async def cancel(self, token: str) -> TxResult:
        return await self._send_call("cancel", to_checksum_address(token))

    async def spend(self, prescription_private_key: str, *, attempts: int = 3,
                    journal: Journal | None = None, expected_remaining: int | None = None) -> TxResult:
        """Redeems one use of the token controlled by the one-time key, as this (pharmacy) account.

        Reads the remaining count, signs the authorisation for it and sends. If a concurrent spend
        changed the count first (StaleSignature), signs again for the new count.

        `journal(tx_hash, raw_tx)` is awaited with the signed transaction before it is sent, so a
        caller that records it durably can finish the spend after a crash with `resume()` instead of
        spending twice or losing it.

        `expected_remaining`: the count the caller has just read (a pharmacy, at verification); the
        first attempt signs for it without reading the chain again. Stale, it costs one estimate.
        """
        token = Account.from_key(prescription_private_key).address
        attempt = 1
        while True:
            if expected_remaining is not None and attempt == 1:
                remaining = expected_remaining
            else:
                remaining = (await self.status(token)).remaining
            signature = sign_spend(
                prescription_private_key,
                chain_id=self.config.chain_id,
                contract_address=self.contract_address,
                dispenser=self.address,
                remaining=remaining,
            )
            try:
                return await self._send_call("spend", token, remaining, signature, journal=journal)
            except StaleSignature:
                if attempt >= attempts:
                    raise
                attempt += 1

    async def spend_with_signature(self, token: str, expected_remaining: int, signature: bytes) -> TxResult:
        """Sends an authorisation made elsewhere (e.g. by the patient's wallet) as this account."""
        return await self._send_call("spend", to_checksum_address(token), expected_remaining, signature)

    # ---- views ------------------------------------------------------------------

    async def status(self, token: str) -> TokenStatus:
        token = to_checksum_address(token)
        ((issuer, remaining, not_before, not_after, cancelled),) = await self._call("getToken", token)
        exists = int(issuer, 16) != 0
        return TokenStatus(
            token=token,
            exists=exists,
            issuer=issuer if exists else None,
            remaining=remaining,
            not_before=not_before,
            not_after=not_after,
            cancelled=cancelled,
        )

    async def is_trusted_prescriber(self, did: str) -> bool:
        """Whether the practice with this DID is currently admitted (False for any unknown string)."""
        return (await self._call("isTrustedPrescriber", did))[0]

    async def prescriber(self, did: str) -> Prescriber | None:
        """The register's entry for `did`, offboarded or not; None if it was never registered."""
        account, since, active = await self._call("prescriber", did)
        if int(account, 16) == 0:
            return None
        return Prescriber(did=did, account=account, since=since, active=active)

    async def prescriber_count(self) -> int:
        """How many DIDs were ever registered (active or not): the bound for paging with prescribers()."""
        return (await self._call("prescriberCount"))[0]

    async def prescriber_at(self, index: int) -> Prescriber:
        """The entry at `index` in order of first registration; IndexOutOfRange past the end."""
        if index < 0:
            raise ValueError(f"index must be >= 0, not {index}")
        did, account, since, active = await self._call("prescriberAt", index)
        return Prescriber(did=did, account=account, since=since, active=active)

    async def prescribers(self, offset: int = 0, limit: int = 100) -> list[Prescriber]:
        """Up to `limit` entries from `offset`, in order of first registration (a re-admitted practice keeps
        its place), active and offboarded alike; empty past the end. One eth_call per page. Entries are only
        ever appended, so offsets stay valid between pages."""
        if offset < 0 or limit < 0:
            raise ValueError(f"offset and limit must be >= 0, not {offset}, {limit}")
        (rows,) = await self._call("prescribers", offset, limit)
        return [Prescriber(did=did, account=account, since=since, active=active)
                for did, account, since, active in rows]

    async def is_issuer(self, account: str) -> bool:
        return (await self._call("isIssuer", to_checksum_address(account)))[0]

    async def is_dispenser(self, account: str) -> bool:
        return (await self._call("isDispenser", to_checksum_address(account)))[0]

    async def admin(self) -> str:
        return to_checksum_address((await self._call("admin"))[0])

    async def pending_admin(self) -> str | None:
        pending = to_checksum_address((await self._call("pendingAdmin"))[0])
        return None if int(pending, 16) == 0 else pending

    async def chain_time(self) -> int:
        """Timestamp of the latest block: validity windows are judged against block time, not the local clock."""
        try:
            block = await self._conn.w3.eth.get_block("latest")
        except (aiohttp.ClientError, TimeoutError, OSError, Web3Exception) as exc:
            raise ChainUnavailable(f"eth_getBlockByNumber at {self.config.rpc_url}: {exc!r}") from exc
        return int(block["timestamp"])

    # ---- JSON-RPC plumbing --------------------------------------------------------

    async def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC request; errors become typed exceptions, contract reverts decoded from their data."""
        try:
            response = await self._conn.w3.provider.make_request(method, params)
        except aiohttp.ClientConnectorError as exc:  # no connection: the request never left
            raise ChainUnavailable(f"{method} at {self.config.rpc_url}: {exc!r}", maybe_delivered=False) from exc
        except aiohttp.ClientResponseError as exc:
            # 503: the endpoint did not take the request (the dev chain's proxy while it reconciles)
            raise ChainUnavailable(f"{method} at {self.config.rpc_url}: HTTP {exc.status} {exc.message}",
                                   maybe_delivered=exc.status not in (429, 503)) from exc
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, Web3Exception) as exc:
            raise ChainUnavailable(f"{method} at {self.config.rpc_url}: {exc!r}") from exc
        if (error := response.get("error")) is not None:
            if not isinstance(error, dict):
                raise RpcError(method, None, str(error))
            data = _revert_data(error.get("data"))
            if data is not None and (decoded := decode_revert(data)) is not None:
                raise decoded
            raise RpcError(method, error.get("code"), str(error.get("message", "")), error.get("data"))
        if "result" not in response:
            raise ChainUnavailable(f"{method} at {self.config.rpc_url}: response without result")
        return response["result"]

    async def _call(self, fn: str, *args: Any) -> tuple[Any, ...]:
        data = self._contract.encode_abi(fn, args=args)
        result = await self.rpc("eth_call", [{"to": self.contract_address, "data": data}, "latest"])
        return tuple(abi_decode(_output_types(fn), bytes.fromhex(result[2:])))

    async def _send_call(self, fn: str, *args: Any, journal: Journal | None = None) -> TxResult:
        receipt = await self._transact(self._contract.encode_abi(fn, args=args), to=self.contract_address,
                                       journal=journal)
        return _tx_result(receipt)

    async def resume(self, tx_hash: str, raw_tx: str) -> TxResult:
        """Finishes a transaction sent earlier (journaled before a crash, or one that raised ReceiptTimeout):
        waits for its receipt, sending it again whenever the node does not have it, and raises its typed
        error if it reverted.

        Raises TransactionDropped if it was never mined and never can be (its nonce is used), so the
        caller knows nothing happened on chain; ReceiptTimeout if it is still not mined (it may be later).
        """
        receipt = await self._wait_for_receipt(tx_hash, raw_tx, check_presence_now=True)
        if int(receipt["status"], 16) != 1:
            tx = await self.rpc("eth_getTransactionByHash", [tx_hash])
            call = {"from": tx["from"], "to": tx["to"], "data": tx["input"], "gas": tx["gas"]}
            await self._raise_revert_reason(call, receipt)
        return _tx_result(receipt)

    async def _transact(self, data: str, *, to: str | None, journal: Journal | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"from": self.address, "data": data}
        if to is not None:
            call["to"] = to
        gas_price = self.config.gas_price_wei
        if gas_price is None:
            gas_price = int(await self.rpc("eth_gasPrice", []), 16)
        if gas_price:
            call["gasPrice"] = hex(gas_price)  # so the estimate also checks the sender can pay
        # The estimate doubles as a preflight: a revert raises its typed error before anything is sent.
        estimate = int(await self.rpc("eth_estimateGas", [call]), 16)
        gas = int(estimate * self.config.gas_margin)
        tx: dict[str, Any] = {
            "chainId": self.config.chain_id,
            "gas": gas,
            "gasPrice": gas_price,
            "value": 0,
            "data": data,
        }
        if to is not None:
            tx["to"] = to
        tx_hash, raw_tx = await self._send_raw(tx, journal)
        receipt = await self._wait_for_receipt(tx_hash, raw_tx)
        if int(receipt["status"], 16) != 1:
            await self._raise_revert_reason(call | {"gas": hex(gas)}, receipt)
        return receipt

    async def _send_raw(self, tx: dict[str, Any], journal: Journal | None = None) -> tuple[str, str]:
        """Assigns the sender's next nonce and sends; serialised per sender so nonces never collide.
        Returns the transaction's hash and its signed bytes.

        Only the send is under the lock, not the wait for mining, so many transactions of one
        account are in flight at once. After any failed send the nonce is re-read from the node
        ("pending") before the next one: the cache may be ahead of a chain that restarted, or another
        process used the account. A send whose answer was lost (the connection broke after sending)
        is not a failure: the node may have it, and the receipt wait sends it again if it does not.
        """
        slot = self._conn.nonces[self.address]
        async with slot.lock:
            retried = False
            while True:
                if slot.next is None:
                    slot.next = int(await self.rpc("eth_getTransactionCount", [self.address, "pending"]), 16)
                signed = self.account.sign_transaction(tx | {"nonce": slot.next})
                tx_hash, raw_tx = signed.hash.to_0x_hex(), signed.raw_transaction.to_0x_hex()
                if journal is not None:
                    await journal(tx_hash, raw_tx)
                try:
                    await self.rpc("eth_sendRawTransaction", [raw_tx])
                except RpcError as exc:
                    if _already_known(exc):  # this very transaction is in the node's pool
                        slot.next += 1
                        return tx_hash, raw_tx
                    # Refused, e.g. "nonce too low/high": re-read the nonce and sign once more.
                    slot.next = None
                    if retried:
                        raise
                    retried = True
                    continue
                except ChainUnavailable as exc:
                    slot.next = None  # unknown how far the node got: re-read before the next send
                    if not exc.maybe_delivered:
                        raise  # certainly not sent
                    LOG.warning("%s: answer to eth_sendRawTransaction lost (%s); waiting for its receipt", tx_hash, exc)
                    return tx_hash, raw_tx
                except ChainError:
                    slot.next = None
                    raise
                slot.next += 1
                return tx_hash, raw_tx

    async def _wait_for_receipt(self, tx_hash: str, raw_tx: str | None = None, *,
                                check_presence_now: bool = False) -> dict[str, Any]:
        """Polls for the receipt until `tx_timeout`, then raises ReceiptTimeout (not a failure: it may
        still be mined). Connection errors and 503s are transient (the node may be restarting): polling
        goes on, with backoff. With `raw_tx`, a node that does not know the transaction (its pool was lost
        in a restart) gets it again; one whose nonce is used by another transaction is TransactionDropped."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.config.tx_timeout
        delay = self.config.poll_interval
        next_presence_check = started if check_presence_now else started + PRESENCE_CHECK_S
        while True:
            try:
                receipt = await self.rpc("eth_getTransactionReceipt", [tx_hash])
                if receipt is not None:
                    return receipt
                if raw_tx is not None and loop.time() >= next_presence_check:
                    next_presence_check = loop.time() + PRESENCE_CHECK_S
                    await self._ensure_known(tx_hash, raw_tx)
                if loop.time() - started > STEADY_POLL_S:
                    delay = min(delay * 1.5, MAX_POLL_S)
            except (ChainUnavailable, RpcError) as exc:  # transient while the chain restarts
                LOG.debug("%s: receipt poll failed (%s); retrying", tx_hash, exc)
                delay = min(max(delay, self.config.poll_interval) * 2, MAX_POLL_S)
            if loop.time() >= deadline:
                # It may still be mined, or it left a nonce gap: re-read the nonce before the next send.
                self._conn.nonces[self.address].next = None
                raise ReceiptTimeout(tx_hash, self.config.tx_timeout, raw_tx)
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.01)))

    async def _ensure_known(self, tx_hash: str, raw_tx: str) -> None:
        if await self.rpc("eth_getTransactionByHash", [tx_hash]) is not None:
            return  # pending or mined
        try:
            await self.rpc("eth_sendRawTransaction", [raw_tx])
            LOG.warning("%s: the node did not have it; sent again", tx_hash)
        except RpcError as exc:
            if _already_known(exc):
                return
            if _nonce_too_low(exc) and await self.rpc("eth_getTransactionReceipt", [tx_hash]) is None:
                self._conn.nonces[self.address].next = None
                raise TransactionDropped(tx_hash) from exc
            LOG.warning("%s: not known to the node, and refused when sent again: %s", tx_hash, exc)

    async def _raise_revert_reason(self, call: dict[str, Any], receipt: dict[str, Any]) -> None:
        # Mined receipts carry no revert data on most nodes: replay on the state the block left
        # behind, which is what the transaction lost against (e.g. another pharmacy's spend).
        try:
            await self.rpc("eth_call", [call, receipt["blockNumber"]])
        except ContractError as exc:
            exc.tx_hash = receipt["transactionHash"]
            raise
        except RpcError as exc:
            raise TransactionReverted(receipt["transactionHash"]) from exc
        raise TransactionReverted(receipt["transactionHash"])
