"""ursa.indy_error.IndyCryptoError is the error indy-bls raises."""

from indy_bls.error import IndyBlsError as IndyCryptoError

__all__ = ["IndyCryptoError"]
