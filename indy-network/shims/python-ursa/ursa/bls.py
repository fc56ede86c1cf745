"""ursa.bls names, re-exported from indy-bls (same BLS bytes on the wire and on disk)."""

from indy_bls import lib as _lib
from indy_bls.bls import (
    Bls,
    BlsEntity,
    Generator,
    MultiSignature,
    ProofOfPossession,
    Signature,
    SignKey,
    VerKey,
)

# indy-bls installs a native logger at TRACE level on first use, which floods the node log
# with a line per pairing; the library works the same without one.
_lib._set_logger = lambda: None

__all__ = [
    "Bls",
    "BlsEntity",
    "Generator",
    "MultiSignature",
    "ProofOfPossession",
    "Signature",
    "SignKey",
    "VerKey",
]
