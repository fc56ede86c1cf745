"""The patient's wallet stand-in: a holder agent with a small controller.

- `models`: what the wallet keeps and shows, and its API's bodies;
- `service`: `PatientService`, answering offers and proof requests (raising `erx_roles.errors`), and the
  pure functions that say what an answer would disclose;
- `api`: `patient_routes(service)`, the wallet owner's API.
The wallet's web page is `erx_roles.pages.patient`.
"""

from erx_roles.patient.api import patient_routes
from erx_roles.patient.models import (Approve, Attribute, Candidate, HeldCredential, OfferView, OpenedInvitation,
                                      OpenInvitation, PredicateCheck, RequestView, Share)
from erx_roles.patient.service import (ISSUE_TOPIC, MASK, PROOF_TOPIC, TOKEN_KEY, PatientService, credential_title,
                                       disclosed, predicate_statement, readable, requested_names)
from erx_roles.patient.service import _satisfies as _satisfies  # the tests read it

__all__ = ["ISSUE_TOPIC", "MASK", "PROOF_TOPIC", "TOKEN_KEY", "Approve", "Attribute", "Candidate", "HeldCredential",
           "OfferView", "OpenInvitation", "OpenedInvitation", "PatientService", "PredicateCheck", "RequestView",
           "Share", "credential_title", "disclosed", "patient_routes", "predicate_statement", "readable",
           "requested_names"]
