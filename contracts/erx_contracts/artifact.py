"""The committed compiler output of PrescriptionToken.sol (regenerate with `python -m erx_contracts.compile`)."""

from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

ARTIFACT_PATH = Path(__file__).parent / "artifacts" / "PrescriptionToken.json"


class ContractArtifact(BaseModel):
    model_config = ConfigDict(frozen=True)

    contractName: str
    sourcePath: str
    sourceSha256: str
    compiler: dict[str, str]
    settings: dict[str, Any]
    abi: list[dict[str, Any]]
    bytecode: str
    deployedBytecode: str


@cache
def load_artifact() -> ContractArtifact:
    return ContractArtifact.model_validate_json(ARTIFACT_PATH.read_bytes())
