"""Typed exceptions for everything the ledger client can fail with.

Contract reverts are decoded from the revert data (custom-error selector + ABI-encoded
fields), never from the node's message text, so they read the same on anvil, Besu and GoQuorum.
"""

from typing import Any, ClassVar

from eth_abi import decode as abi_decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from eth_utils.abi import collapse_if_tuple

from erx_contracts.artifact import load_artifact


class ChainError(Exception):
    """Base class of every error the ledger client raises."""


class ChainUnavailable(ChainError):
    """The JSON-RPC endpoint could not be reached or answered garbage.

    `maybe_delivered` is False when the request certainly did not reach the node (no connection, or
    the endpoint answered with HTTP 503, as the dev chain's journaling proxy does for a transaction it
    did not accept), True when it may have (the connection broke or timed out after sending)."""

    def __init__(self, message: str, *, maybe_delivered: bool = True) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class ChainConfigError(ChainError):
    """The endpoint does not match the configuration (chain id, missing contract)."""


class RpcError(ChainError):
    """The node rejected a request (e.g. an underpriced or malformed transaction)."""

    def __init__(self, method: str, code: int | None, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class TransactionTimeout(ChainError):
    def __init__(self, tx_hash: str, timeout: float) -> None:
        super().__init__(f"transaction {tx_hash} not mined within {timeout}s")
        self.tx_hash = tx_hash


class ReceiptTimeout(TransactionTimeout):
    """The transaction was sent (or may have been) but no receipt came within the timeout: it may
    still be mined, so it is NOT a failure. Not a revert either (those are ContractError).

    Keep `tx_hash` and `raw_tx` and call `PrescriptionTokenClient.resume(tx_hash, raw_tx)` later: it
    returns the result once mined, raises the typed revert, or TransactionDropped if it never can be."""

    def __init__(self, tx_hash: str, timeout: float, raw_tx: str | None = None) -> None:
        super().__init__(tx_hash, timeout)
        self.args = (f"no receipt for transaction {tx_hash} within {timeout}s; it may still be mined",)
        self.timeout = timeout
        self.raw_tx = raw_tx


class TransactionDropped(ChainError):
    """A journaled transaction was never mined and can no longer be (its nonce was used by another)."""

    def __init__(self, tx_hash: str) -> None:
        super().__init__(f"transaction {tx_hash} was dropped: its nonce is taken and it was never mined")
        self.tx_hash = tx_hash


class TransactionReverted(ChainError):
    """A mined transaction failed and replaying it yields no decodable reason (e.g. out of gas)."""

    def __init__(self, tx_hash: str) -> None:
        super().__init__(f"transaction {tx_hash} reverted without a decodable reason")
        self.tx_hash = tx_hash


class ContractError(ChainError):
    """A revert of PrescriptionToken; subclasses mirror the contract's custom errors.

    The error's fields are available as attributes (e.g. `err.token`) and in `err.fields`.
    `tx_hash` is set when the transaction was mined and failed there (it lost a race after
    passing the preflight estimate), None when the estimate already refused it.
    """

    signature: ClassVar[str] = ""
    tx_hash: str | None = None

    def __init__(self, **fields: Any) -> None:
        super().__init__(f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in fields.items())})")
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)


# fmt: off
class NotAdmin(ContractError): ...
class NotPendingAdmin(ContractError): ...
class NotIssuer(ContractError): ...
class NotDispenser(ContractError): ...
class NotTokenIssuer(ContractError): ...
class ZeroAddress(ContractError): ...
class InvalidRedemptions(ContractError): ...
class InvalidValidity(ContractError): ...
class TokenExists(ContractError): ...
class UnknownToken(ContractError): ...
class Cancelled(ContractError): ...
class NotYetValid(ContractError): ...
class Expired(ContractError): ...
class AlreadySpent(ContractError): ...
# fmt: on


class StaleSignature(ContractError):
    """The authorisation was signed for another remaining count (a replay, or a concurrent spend won)."""


class BadSignature(ContractError):
    """Not signed by the token's one-time key for this pharmacy, chain and contract."""


class InvalidDid(ContractError):
    """Not a DID the register takes: empty, longer than MAX_DID_LENGTH bytes, or not base58."""


class PrescriberAlreadyActive(ContractError):
    """The DID is already an active prescriber (with `account`); offboard it first to change its account."""


class AccountInUse(ContractError):
    """The account already belongs to another active prescriber, `did`."""


class UnknownPrescriber(ContractError):
    """The DID was never registered."""


class PrescriberInactive(ContractError):
    """The DID is registered but already offboarded."""


class IndexOutOfRange(ContractError):
    """prescriberAt(index) past the end of the register (`count` entries)."""


class RevertedWithReason(ContractError):
    """Solidity `Error(string)`: not raised by PrescriptionToken itself."""


class Panic(ContractError):
    """Solidity `Panic(uint256)` (assertion, overflow...): a contract bug."""


def _error_table() -> dict[bytes, tuple[type[ContractError], list[str], list[str]]]:
    table: dict[bytes, tuple[type[ContractError], list[str], list[str]]] = {}
    entries = [e for e in load_artifact().abi if e["type"] == "error"]
    entries += [
        {"name": "RevertedWithReason", "sig": "Error", "inputs": [{"name": "reason", "type": "string"}]},
        {"name": "Panic", "inputs": [{"name": "code", "type": "uint256"}]},
    ]
    for entry in entries:
        cls = globals().get(entry["name"])
        if not (isinstance(cls, type) and issubclass(cls, ContractError)):
            raise RuntimeError(f"errors.py lacks a class for contract error {entry['name']}")
        types = [collapse_if_tuple(i) for i in entry["inputs"]]
        signature = f"{entry.get('sig', entry['name'])}({','.join(types)})"
        cls.signature = signature
        table[function_signature_to_4byte_selector(signature)] = (cls, [i["name"] for i in entry["inputs"]], types)
    return table


_ERRORS = _error_table()


def decode_revert(data: bytes) -> ContractError | None:
    """The typed error for raw revert data, or None if it is empty or unknown."""
    entry = _ERRORS.get(bytes(data[:4]))
    if entry is None:
        return None
    cls, names, types = entry
    try:
        values = abi_decode(types, bytes(data[4:]))
    except Exception:  # malformed payload behind a known selector: treat as undecodable
        return None
    values = [to_checksum_address(v) if t == "address" else v for t, v in zip(types, values, strict=True)]
    return cls(**dict(zip(names, values, strict=True)))
