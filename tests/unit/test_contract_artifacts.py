"""The committed contract artifact is reproducible, and the client's typed view of it is complete."""

import hashlib
import shutil

import pytest
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.messages import encode_typed_data

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
