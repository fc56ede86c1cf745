"""The committed contract artifact is reproducible, and the client's typed view of it is complete."""

import hashlib
import shutil

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.abi import collapse_if_tuple

from erx_contracts import errors, load_artifact, new_prescription_key, sign_spend, spend_typed_data
from erx_contracts.artifact import ARTIFACT_PATH
from erx_contracts.compile import SOLCJS_DIR, SOURCE_PATH, compile_artifact, render


@pytest.mark.skipif(
    not SOLCJS_DIR.is_dir() or shutil.which("node") is None,
    reason=f"solc-js is not installed ({SOLCJS_DIR} or node missing): run `npm ci` at the repo root",
)
def test_committed_artifact_matches_a_fresh_compile() -> None:
    assert ARTIFACT_PATH.read_text(encoding="utf-8") == render(compile_artifact()), (
        "stale artifact: run `python -m erx_contracts.compile`"
    )


def test_artifact_was_built_from_the_current_source() -> None:
    artifact = load_artifact()
    assert artifact.sourceSha256 == hashlib.sha256(SOURCE_PATH.read_bytes()).hexdigest()
    assert artifact.settings["evmVersion"] == "london"
    assert artifact.compiler["version"].startswith("0.8.")


def test_every_contract_error_has_a_typed_exception() -> None:
    names = {e["name"] for e in load_artifact().abi if e["type"] == "error"}
    assert names >= {
        "AlreadySpent",
        "Cancelled",
        "NotYetValid",
        "Expired",
        "UnknownToken",
        "TokenExists",
        "NotIssuer",
        "NotDispenser",
        "NotAdmin",
        "BadSignature",
        "StaleSignature",
        "InvalidDid",
        "PrescriberAlreadyActive",
        "AccountInUse",
        "UnknownPrescriber",
        "PrescriberInactive",
        "IndexOutOfRange",
    }
    for name in names:
        assert issubclass(getattr(errors, name), errors.ContractError)


def test_revert_data_decodes_to_typed_errors() -> None:
    token = new_prescription_key().address
    stale = errors.decode_revert(bytes.fromhex("ea49c832") + abi_encode(["address", "uint16"], [token, 2]))
    assert isinstance(stale, errors.StaleSignature) and (stale.token, stale.remaining) == (token, 2)
    reason = errors.decode_revert(bytes.fromhex("08c379a0") + abi_encode(["string"], ["nope"]))
    assert isinstance(reason, errors.RevertedWithReason) and reason.reason == "nope"
    assert errors.decode_revert(b"") is None
    assert errors.decode_revert(bytes.fromhex("deadbeef")) is None
    assert errors.decode_revert(bytes.fromhex("ea49c832") + b"\x01") is None  # truncated payload


def test_register_reverts_decode_with_their_did() -> None:
    did, account = "Th7MpTaRZVRYnPiabds81Y", Account.create().address
    in_use = errors.decode_revert(bytes.fromhex("4db865b7") + abi_encode(["address", "string"], [account, did]))
    assert isinstance(in_use, errors.AccountInUse) and (in_use.account, in_use.did) == (account, did)
    active = errors.decode_revert(bytes.fromhex("53dc9fcf") + abi_encode(["string", "address"], [did, account]))
    assert isinstance(active, errors.PrescriberAlreadyActive) and (active.did, active.account) == (did, account)
    for selector, cls in (("c2b924a3", errors.InvalidDid), ("6d2575e0", errors.UnknownPrescriber),
                          ("13417d14", errors.PrescriberInactive)):
        decoded = errors.decode_revert(bytes.fromhex(selector) + abi_encode(["string"], ["did:sov:x"]))
        assert type(decoded) is cls and decoded.did == "did:sov:x"
    past_end = errors.decode_revert(bytes.fromhex("94666f0d") + abi_encode(["uint256", "uint256"], [7, 7]))
    assert isinstance(past_end, errors.IndexOutOfRange) and (past_end.index, past_end.count) == (7, 7)


def test_register_interface() -> None:
    """What pharmacies, the authority's tools and the client call: changing it breaks deployed readers."""
    abi = load_artifact().abi

    def signature(entry: dict) -> str:
        return f"{entry['name']}({','.join(collapse_if_tuple(i) for i in entry['inputs'])})"

    functions = {signature(e): [collapse_if_tuple(o) for o in e["outputs"]] for e in abi if e["type"] == "function"}
    assert {
        "addPrescriber(string,address)": [],
        "removePrescriber(string)": [],
        "isTrustedPrescriber(string)": ["bool"],
        "prescriber(string)": ["address", "uint32", "bool"],
        "prescriberCount()": ["uint256"],
        "prescriberAt(uint256)": ["string", "address", "uint32", "bool"],
        "prescribers(uint256,uint256)": ["(string,address,uint32,bool)[]"],
        "MAX_DID_LENGTH()": ["uint256"],
    }.items() <= functions.items()
    events = {signature(e): [i["indexed"] for i in e["inputs"]] for e in abi if e["type"] == "event"}
    assert events["PrescriberAdded(string,address)"] == events["PrescriberRemoved(string,address)"] == [False, True]


def test_spend_authorisation_recovers_to_the_token_address() -> None:
    key = new_prescription_key()
    scope = {
        "chain_id": 1337,
        "contract_address": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
        "dispenser": Account.create().address,
        "remaining": 3,
    }
    signature = sign_spend(key.private_key, **scope)
    message = encode_typed_data(full_message=spend_typed_data(token=key.address, **scope))
    assert len(signature) == 65
    assert Account.recover_message(message, signature=signature) == key.address
    assert key.private_key not in repr(key)
