"""The doctor's practice: connect a patient, issue a prescription, revoke it, list what was issued.

- `models`: the practice's records, enums, and the REST API's bodies and answers;
- `service`: `DoctorService`, every state transition of a prescription (raising `erx_roles.errors`);
- `api`: `doctor_api(service)`, the REST operations over the service.
The practice's web page is `erx_roles.pages.doctor`.
"""

from erx_roles.doctor.api import doctor_api
from erx_roles.doctor.models import (CredDefMeta, DoctorStatus, FhirIssueRequest, IssuedPrescription, IssueRequest,
                                     PrescriptionState, PrescriptionView)
from erx_roles.doctor.service import ISSUE_TOPIC, UNFINISHED_CREATE_AFTER_S, DoctorService
from erx_roles.doctor.service import _validity_window as _validity_window  # the tests read it

__all__ = ["ISSUE_TOPIC", "UNFINISHED_CREATE_AFTER_S", "CredDefMeta", "DoctorService", "DoctorStatus",
           "FhirIssueRequest", "IssueRequest", "IssuedPrescription", "PrescriptionState", "PrescriptionView",
           "doctor_api"]
