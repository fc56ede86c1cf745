"""The raw in-process AnonCreds ceiling on this machine, for comparison with the agent benchmark.

Times the two operations that bound an agent's throughput, directly on the `anoncreds` bindings (no
agent, no wallet, no HTTP, no ledger), with the project's real schema and proof request:

* issuer:   `Credential.create` of an `erx-prescription` credential with revocation (a distinct
  `rev_reg_index` per credential in one registry);
* verifier: `Presentation.verify` of a dispensing presentation (15 revealed attributes, two date
  predicates, a non-revocation proof as of now).

Each is run with a `ThreadPoolExecutor` of 1, 2, ... workers; the bindings release the GIL, so on two
cores two workers reach ~1.6-2x. Objects are passed to the bindings already loaded (ACA-Py passes JSON
that the wrapper parses on every call), so this is an upper bound for what an agent can reach.

The two predicates dominate verification: on a 2-vCPU AMD EPYC VM a dispensing presentation takes
~150-190 ms to verify, against ~85-100 ms for the same one without predicates (15 revealed attributes +
non-revocation) and ~45 ms with neither. Issuing costs ~55-60 ms with or without revocation (the
issuer's random prime search makes single operations vary by about +-30%).

    PYTHONPATH=controllers:schemas:contracts python -m erx_bench.anoncreds_ceiling --samples 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from anoncreds import (Credential, CredentialDefinition, CredentialDefinitionPrivate, CredentialOffer,
                       CredentialRequest, CredentialRevocationConfig, CredentialRevocationState, Presentation,
                       PresentationRequest, PresentCredentials, RevocationRegistryDefinition,
                       RevocationRegistryDefinitionPrivate, RevocationStatusList, Schema, create_link_secret)
from pydantic import SecretStr

from erx_schemas.prescription import (ATTRIBUTES, SCHEMA_NAME, SCHEMA_VERSION, Prescriber, Prescription,
                                      PrescriptionOrder, TokenRef, dispensing_proof_request)

__all__ = ["measure_ceiling", "sample_attributes"]

# Legacy (Indy) identifiers, as the project's agents publish them; any base58 unqualified DID will do.
_ISSUER_DID = "7sHCiCkaQuYJnrM1EMe5b3"
_SCHEMA_ID = f"{_ISSUER_DID}:2:{SCHEMA_NAME}:{SCHEMA_VERSION}"
_CRED_DEF_ID = f"{_ISSUER_DID}:3:CL:1:default"
_REV_REG_ID = f"{_ISSUER_DID}:4:{_CRED_DEF_ID}:CL_ACCUM:0"
_LINK_SECRET_ID = "default"


def sample_attributes() -> dict[str, str]:
    """A realistic prescription's 19 AnonCreds attribute values, valid from today for 28 days."""
    order = PrescriptionOrder.model_validate({
        "patient_name": "Erika Mustermann", "patient_birth_date": "1964-08-12",
        "medication": {"name": "Ibuprofen", "code": "M01AE01", "code_system": "ATC", "strength": "400 mg",
                       "form": "tablet"},
        "dosage_instructions": "1-0-1 after meals", "quantity": 20, "redemptions": 2})
    token = TokenRef(chain_id=1337, contract="0x" + secrets.token_hex(20),
                     secret_key=SecretStr("0x" + secrets.token_hex(32)))
    attrs = Prescription(order=order, prescriber=Prescriber(name="Dr. Anna Schmidt", identifier="123456789"),
                         token=token).to_attributes()
    assert list(attrs) == ATTRIBUTES
    return attrs


@dataclass
class _Issuer:
    """Everything an issuer and a holder have after setup; all objects already loaded."""

    link_secret: str
    schema: Schema
    cred_def: CredentialDefinition
    cred_def_private: CredentialDefinitionPrivate
    rev_reg_def: RevocationRegistryDefinition
    rev_reg_def_private: RevocationRegistryDefinitionPrivate
    rev_list: RevocationStatusList
    offer: CredentialOffer
    request: CredentialRequest
    request_metadata: Any  # CredentialRequestMetadata

    def issue(self, attrs: dict[str, str], rev_reg_index: int) -> Credential:
        """The timed issuer operation: sign one revocable credential (what ACA-Py does per issuance)."""
        revocation = CredentialRevocationConfig(self.rev_reg_def, self.rev_reg_def_private, self.rev_list,
                                                rev_reg_index)
        return Credential.create(self.cred_def, self.cred_def_private, self.offer, self.request, attrs,
                                 revocation_config=revocation)


def _setup_issuer(max_cred_num: int, tails_dir: str) -> _Issuer:
    link_secret = create_link_secret()
    schema = Schema.create(SCHEMA_NAME, SCHEMA_VERSION, _ISSUER_DID, ATTRIBUTES)
    cred_def, cred_def_private, key_proof = CredentialDefinition.create(
        _SCHEMA_ID, schema, _ISSUER_DID, "default", "CL", support_revocation=True)
    rev_reg_def, rev_reg_def_private = RevocationRegistryDefinition.create(
        _CRED_DEF_ID, cred_def, _ISSUER_DID, "0", "CL_ACCUM", max_cred_num, tails_dir_path=tails_dir)
    # Issued by default, as ACA-Py creates its lists; a timestamp a little in the past so that the
    # proof request's non_revoked {"to": now} covers it.
    rev_list = RevocationStatusList.create(cred_def, _REV_REG_ID, rev_reg_def, rev_reg_def_private, _ISSUER_DID,
                                           issuance_by_default=True, timestamp=int(time.time()) - 10)
    offer = CredentialOffer.create(_SCHEMA_ID, _CRED_DEF_ID, key_proof)
    # Legacy identifiers need a prover DID or entropy in the request (ACA-Py passes its DID).
    request, request_metadata = CredentialRequest.create(secrets.token_hex(16), None, cred_def, link_secret,
                                                         _LINK_SECRET_ID, offer)
    return _Issuer(link_secret, schema, cred_def, cred_def_private, rev_reg_def, rev_reg_def_private, rev_list,
                   offer, request, request_metadata)


@dataclass
class _HolderCosts:
    """CPU seconds of the holder's two operations: storing a credential and proving from it."""

    process_cpu: list[float]
    prove_cpu: list[float]


def _presentations(iss: _Issuer, count: int, rev_reg_index: int
                   ) -> tuple[list[tuple[Presentation, PresentationRequest]], _HolderCosts]:
    """`count` dispensing presentations (each to its own proof request and nonce) of one held credential,
    and what the holder's side of it cost: processing received credentials, building each proof (with
    the revocation state the holder computes from the tails file, as a wallet does per proof)."""
    process_cpu: list[float] = []
    for i in range(count):  # the holder's work per issuance, timed on credentials it could receive
        raw = iss.issue(sample_attributes(), rev_reg_index)
        c0 = time.thread_time()
        cred = raw.process(iss.request_metadata, iss.link_secret, iss.cred_def, iss.rev_reg_def)
        process_cpu.append(time.thread_time() - c0)
    timestamp = iss.rev_list.to_dict()["timestamp"]
    out, prove_cpu = [], []
    for _ in range(count):
        request = PresentationRequest.load(dispensing_proof_request(_SCHEMA_ID))
        c0 = time.thread_time()
        rev_state = CredentialRevocationState.create(iss.rev_reg_def, iss.rev_list, rev_reg_index,
                                                     iss.rev_reg_def.tails_location)
        creds = PresentCredentials()
        creds.add_attributes(cred, "prescription", reveal=True, timestamp=timestamp, rev_state=rev_state)
        creds.add_predicates(cred, "valid_until", "valid_from", timestamp=timestamp, rev_state=rev_state)
        pres = Presentation.create(request, creds, {}, iss.link_secret, {_SCHEMA_ID: iss.schema},
                                   {_CRED_DEF_ID: iss.cred_def})
        prove_cpu.append(time.thread_time() - c0)
        out.append((pres, request))
    return out, _HolderCosts(process_cpu, prove_cpu)


def _run(op: Callable[[int], Any], n: int, workers: int) -> tuple[float, list[float], list[float]]:
    """Run op(0..n-1) on `workers` threads; return (operations per second, per-operation wall seconds,
    per-operation CPU seconds of the calling thread)."""

    def timed(i: int) -> tuple[float, float]:
        c0, t0 = time.thread_time(), time.perf_counter()
        op(i)
        return time.perf_counter() - t0, time.thread_time() - c0

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pool.submit(lambda: None).result()  # start a thread outside the timed window
        t0 = time.perf_counter()
        times = list(pool.map(timed, range(n)))
        wall = time.perf_counter() - t0
    return n / wall, [w for w, _ in times], [c for _, c in times]


def measure_ceiling(samples: int = 20, threads: tuple[int, ...] = (1, 2), registry_size: int = 1000) -> dict:
    """Measure AnonCreds issue and verify throughput in this process.

    For each thread count t, `samples * t` operations are run by a ThreadPoolExecutor(max_workers=t);
    the rate is operations / wall time. Medians are per-operation latencies from the smallest thread
    count (1 if measured). Every credential gets its own index in one revocation registry of
    max(registry_size, samples * sum(threads) + 2) entries; every verification must succeed.

    Returns {"sign_ms_median", "verify_ms_median", "sign_per_s": {"1": ..., "2": ...},
    "verify_per_s": {...}, "ceiling_sign_per_s", "ceiling_verify_per_s", "setup_s",
    "presentation_bytes", "samples", ...} plus descriptive keys: per-operation CPU medians
    ("sign_cpu_ms_median", "verify_cpu_ms_median", and the holder's "process_cpu_ms_median" and
    "prove_cpu_ms_median"); what the cryptography of both sides allows when issuer, holder and verifier
    share this machine's cores ("machine_crypto_issue_per_s" = cpus / (sign + process),
    "machine_crypto_verify_per_s" = cpus / (prove + verify)); the 1-minute load average before and after the timed
    runs ("loadavg_1m"; the rates mean little if other processes kept the cores busy), "cpus",
    "attributes", "registry_size", "latency_threads", "date".
    """
    if samples < 1 or not threads or min(threads) < 1:
        raise ValueError("samples and thread counts must be >= 1")
    threads = tuple(sorted(set(threads)))
    sign_ops = samples * sum(threads)
    # Usable indexes are 1 .. max_cred_num - 1 (anoncreds 0.2.3 refuses index max_cred_num: "Revocation
    # status list does not have the index"); one more for the holder's credential used in verification.
    max_cred_num = max(registry_size, sign_ops + 2)

    with tempfile.TemporaryDirectory(prefix="erx-tails-") as tails_dir:
        t0 = time.perf_counter()
        iss = _setup_issuer(max_cred_num, tails_dir)
        presentations, holder = _presentations(iss, samples, rev_reg_index=max_cred_num - 1)
        setup_s = time.perf_counter() - t0
        attrs = [sample_attributes() | {"prescription_id": str(uuid.uuid4())} for _ in range(sign_ops)]

        rev_reg_defs = {_REV_REG_ID: iss.rev_reg_def}
        schemas, cred_defs = {_SCHEMA_ID: iss.schema}, {_CRED_DEF_ID: iss.cred_def}

        def verify(i: int) -> None:
            pres, request = presentations[i % samples]
            if not pres.verify(request, schemas, cred_defs, rev_reg_defs, [iss.rev_list]):
                raise AssertionError(f"presentation {i % samples} did not verify")

        verify(0)  # warm-up, untimed (issuing is warmed up by the holder's credential in setup)
        sign_per_s: dict[str, float] = {}
        verify_per_s: dict[str, float] = {}
        sign_lat: dict[int, list[float]] = {}
        verify_lat: dict[int, list[float]] = {}
        sign_cpu: dict[int, list[float]] = {}
        verify_cpu: dict[int, list[float]] = {}
        load_before = os.getloadavg()[0]
        next_index = 1  # rev_reg_index is 1-based and must be unique per credential in the registry
        for t in threads:
            n, base = samples * t, next_index
            sign_per_s[str(t)], sign_lat[t], sign_cpu[t] = _run(
                lambda i, base=base: iss.issue(attrs[base - 1 + i], base + i), n, t)
            next_index += n
            verify_per_s[str(t)], verify_lat[t], verify_cpu[t] = _run(verify, n, t)
        load_after = os.getloadavg()[0]

    t_min = threads[0]
    sign_cpu_ms = statistics.median(sign_cpu[t_min]) * 1000
    verify_cpu_ms = statistics.median(verify_cpu[t_min]) * 1000
    process_cpu_ms = statistics.median(holder.process_cpu) * 1000
    prove_cpu_ms = statistics.median(holder.prove_cpu) * 1000
    cpus = os.cpu_count() or 1
    return {
        "sign_ms_median": round(statistics.median(sign_lat[t_min]) * 1000, 2),
        "verify_ms_median": round(statistics.median(verify_lat[t_min]) * 1000, 2),
        "sign_per_s": {k: round(v, 2) for k, v in sign_per_s.items()},
        "verify_per_s": {k: round(v, 2) for k, v in verify_per_s.items()},
        "ceiling_sign_per_s": round(max(sign_per_s.values()), 2),
        "ceiling_verify_per_s": round(max(verify_per_s.values()), 2),
        # CPU time of the operating thread excludes time it waited for a core; wall medians well above
        # these mean other processes were busy (then the rates are too low; see loadavg_1m).
        "sign_cpu_ms_median": round(sign_cpu_ms, 2),
        "verify_cpu_ms_median": round(verify_cpu_ms, 2),
        "process_cpu_ms_median": round(process_cpu_ms, 2),
        "prove_cpu_ms_median": round(prove_cpu_ms, 2),
        "machine_crypto_issue_per_s": round(cpus * 1000 / (sign_cpu_ms + process_cpu_ms), 2),
        "machine_crypto_verify_per_s": round(cpus * 1000 / (prove_cpu_ms + verify_cpu_ms), 2),
        "loadavg_1m": [round(load_before, 2), round(load_after, 2)],
        "cpus": cpus,
        "setup_s": round(setup_s, 2),
        "presentation_bytes": len(presentations[0][0].to_json().encode()),
        "samples": samples,
        "attributes": len(ATTRIBUTES),
        "registry_size": max_cred_num,
        "latency_threads": t_min,
        "date": dt.date.today().isoformat(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20, help="operations per thread count and thread")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts to measure")
    parser.add_argument("--registry-size", type=int, default=1000,
                        help="revocation registry size (at least; a practice's is 1000)")
    args = parser.parse_args(argv)
    print(json.dumps(measure_ceiling(args.samples, tuple(args.threads), args.registry_size), indent=2))


if __name__ == "__main__":
    main()
