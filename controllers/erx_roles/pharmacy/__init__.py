"""The pharmacy: ask for a prescription, check it, dispense by spending its token.

- `models`: the checks and trust overrides it keeps, enums, and the REST API's bodies and answers;
- `service`: `PharmacyService`, every state transition of a check (raising `erx_roles.errors`);
- `api`: `pharmacy_api(service)`, the REST operations over the service.
The decisions themselves are the pure functions of `erx_roles.dispensing`; the pharmacy's web page
is `erx_roles.pages.pharmacy`.
"""

from erx_roles.pharmacy.api import pharmacy_api
from erx_roles.pharmacy.models import (FINAL, CheckState, DispenseCheck, PharmacyStatus, RequestBody, StoredCheck,
                                       TrustedPrescriber, public)
from erx_roles.pharmacy.service import PROOF_TOPIC, RESETTLE_EVERY_S, PharmacyService

__all__ = ["FINAL", "PROOF_TOPIC", "RESETTLE_EVERY_S", "CheckState", "DispenseCheck", "PharmacyService",
           "PharmacyStatus", "RequestBody", "StoredCheck", "TrustedPrescriber", "pharmacy_api", "public"]
