"""Reproducibly compile PrescriptionToken.sol into the committed artifact.

    python -m erx_contracts.compile           # rewrite artifacts/PrescriptionToken.json
    python -m erx_contracts.compile --check   # exit 1 if the committed artifact is stale

No native solc is installable offline, so py-solc-x drives solc-js through
contracts/solc-wrapper (needs `npm ci` at the repo root for node_modules/solc).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import solcx

from erx_contracts.artifact import ARTIFACT_PATH

CONTRACTS_DIR = Path(__file__).resolve().parent.parent
REPO_ROOT = CONTRACTS_DIR.parent
SOURCE_PATH = CONTRACTS_DIR / "src" / "PrescriptionToken.sol"
SOLC_WRAPPER = CONTRACTS_DIR / "solc-wrapper"
SOLCJS_DIR = REPO_ROOT / "node_modules" / "solc"
CONTRACT_NAME = "PrescriptionToken"

# london: no PUSH0 or other post-merge opcodes, so the bytecode also runs on GoQuorum and
# on Besu QBFT networks whose genesis pins an older milestone.
SETTINGS: dict[str, Any] = {
    "evmVersion": "london",
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}


def compile_artifact(solc_binary: Path = SOLC_WRAPPER) -> dict[str, Any]:
    source = SOURCE_PATH.read_text(encoding="utf-8")
    # The source unit name is embedded in the metadata hash: keep it path-independent.
    unit = SOURCE_PATH.name
    output = solcx.compile_standard(
        {"language": "Solidity", "sources": {unit: {"content": source}}, "settings": SETTINGS},
        solc_binary=solc_binary,
    )
    contract = output["contracts"][unit][CONTRACT_NAME]
    version = solcx.wrapper.get_solc_version(solc_binary, with_commit_hash=True)
    return {
        "contractName": CONTRACT_NAME,
        "sourcePath": SOURCE_PATH.relative_to(REPO_ROOT).as_posix(),
        "sourceSha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        "compiler": {"name": "solc-js", "version": str(version)},
        "settings": SETTINGS,
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def render(artifact: dict[str, Any]) -> str:
    return json.dumps(artifact, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m erx_contracts.compile", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the committed artifact is up to date")
    args = parser.parse_args(argv)
    rendered = render(compile_artifact())
    if args.check:
        if not ARTIFACT_PATH.exists() or ARTIFACT_PATH.read_text(encoding="utf-8") != rendered:
            print(f"{ARTIFACT_PATH} is stale: run python -m erx_contracts.compile", file=sys.stderr)
            return 1
        print(f"{ARTIFACT_PATH} is up to date")
        return 0
    ARTIFACT_PATH.write_text(rendered, encoding="utf-8")
    print(f"wrote {ARTIFACT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
