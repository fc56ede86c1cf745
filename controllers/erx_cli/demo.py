"""`erx demo`: bring the network up if needed, then run the prescription flow end to end.

onboarding → connect → issue (2 redemptions) → redeem at pharmacy A → redeem at pharmacy B →
third attempt refused (already redeemed) → issue another → revoke it → presentation refused (revoked) →
a therapy in 3 parts: part 1 redeemed, part 3 refused (not valid yet) → a paper prescription printed
(PDF), its QR code read back and redeemed, the second attempt refused (already redeemed).

Everything goes through the controllers' APIs, as a practice system, a pharmacy system and a
wallet would. Exit code 0 only if every step ended as the scenario expects.
"""

from __future__ import annotations

import json
import sys

from erx_cli.system import LocalSystem
from erx_core.documents import codes_in_upload
from erx_core.progress import Progress
from erx_core.settings import Settings

# (step name, expected outcome, expected refusal reason)
EXPECTED = [
    ("onboarding", "ok", None),
    ("connect", "ok", None),
    ("issue prescription (2 redemptions)", "ok", None),
    ("redeem at pharmacy A", "ok", None),
    ("redeem at pharmacy B", "ok", None),
    ("third redemption attempt at pharmacy A", "refused", "already_redeemed"),
    ("issue another prescription", "ok", None),
    ("revoke it", "ok", None),
    ("present the revoked prescription", "refused", "revoked"),
    ("issue a therapy in 3 parts (every 28 days)", "ok", None),
    ("redeem part 1 at pharmacy B", "ok", None),
    ("present part 3 (not valid yet)", "refused", "not_yet_valid"),
    ("print a paper prescription", "ok", None),
    ("redeem the paper at pharmacy A", "ok", None),
    ("present the paper again at pharmacy B", "refused", "already_redeemed"),
]


async def run_flow(network: LocalSystem, log=print) -> list:
    from erx_roles.scenario import Scenario, check_outcome, sample_order, timed

    names = {a.role: [] for a in network.settings.agents}
    for a in network.settings.agents:
        names[a.role].append(a.name)
    doctor, patient = names["doctor"][0], names["patient"][0]
    pharmacy_a, pharmacy_b = names["pharmacy"][0], names["pharmacy"][-1]
    s = Scenario(network)
    steps = []

    def record(step) -> None:
        steps.append(step)
        mark = "ok " if step.outcome == "ok" else step.outcome.upper()
        extra = f" reason={step.reason}" if step.reason else ""
        extra += f" tx={step.tx_hash}" if step.tx_hash else ""
        log(f"{len(steps)}. {step.name:<42} {mark}{extra}  ({step.seconds:.2f} s) {step.detail}".rstrip())

    try:
        step, cred_def_id = await timed("onboarding", s.onboard(doctor, [pharmacy_a, pharmacy_b]),
                                        lambda r: ("ok", None, None, f"{r}: trusted by every pharmacy through the national register"))
        record(step)
        step, (connection_id, _) = await timed("connect", s.connect(doctor, patient),
                                               lambda r: ("ok", None, None, f"connection {r[0]}"))
        record(step)

        def issued(p):
            return ("ok" if p["state"] == "issued" else p["state"], None, p.get("token_tx"),
                    f"prescription {p['prescription_id']}, token {p['token_address']}")

        step, first = await timed("issue prescription (2 redemptions)",
                                  s.issue(doctor, connection_id, sample_order(redemptions=2)), issued)
        record(step)
        first_cred = await s.credential_for(patient, first["prescription_id"])
        for name, pharmacy in [("redeem at pharmacy A", pharmacy_a), ("redeem at pharmacy B", pharmacy_b),
                               ("third redemption attempt at pharmacy A", pharmacy_a)]:
            step, _ = await timed(name, s.redeem(pharmacy, patient, first_cred), check_outcome)
            record(step)

        step, second = await timed("issue another prescription",
                                   s.issue(doctor, connection_id, sample_order(
                                       redemptions=1, medication={"name": "Amoxicillin", "code": "J01CA04",
                                                                  "code_system": "ATC", "strength": "500 mg",
                                                                  "form": "capsule"})), issued)
        record(step)
        second_cred = await s.credential_for(patient, second["prescription_id"])
        step, _ = await timed("revoke it", s.revoke(doctor, second["prescription_id"]),
                              lambda p: ("ok" if p["state"] == "revoked" else p["state"], None, p.get("revoke_tx"),
                                         "credential revoked, token cancelled"))
        record(step)
        step, _ = await timed("present the revoked prescription", s.redeem(pharmacy_a, patient, second_cred),
                              check_outcome)
        record(step)

        def therapy_issued(t):
            states = [p["state"] for p in t["parts"]]
            return ("ok" if states == ["issued"] * 3 else ",".join(states), None, None,
                    "; ".join(f"part {p['part']}: {p['status']}" for p in t["parts"]))

        step, therapy = await timed("issue a therapy in 3 parts (every 28 days)", s.issue_therapy(
            doctor, connection_id, sample_order(medication={"name": "Metformin", "code": "A10BA02", "code_system": "ATC",
                                                            "strength": "500 mg", "form": "tablet"}),
            parts=3, interval_days=28), therapy_issued)
        record(step)
        parts = [await s.credential_for(patient, p["prescription_id"]) for p in therapy["parts"]]
        step, _ = await timed("redeem part 1 at pharmacy B", s.redeem(pharmacy_b, patient, parts[0]), check_outcome)
        record(step)
        step, _ = await timed("present part 3 (not valid yet)", s.redeem(pharmacy_a, patient, parts[2]), check_outcome)
        record(step)

        paper_file = network.settings.home / "demo" / "paper-prescription.pdf"
        step, (_, pdf) = await timed("print a paper prescription", s.print_paper(doctor, sample_order(
            patient_name="Max Mustermann", patient_birth_date="1950-02-03")),
            lambda printed: ("ok", None, None, f"{len(printed[1]) // 1024} KiB PDF at {paper_file}"))
        record(step)
        paper_file.parent.mkdir(parents=True, exist_ok=True)
        paper_file.write_bytes(pdf)  # holds the token key, like the printed page: only in the demo's own home
        paper_file.chmod(0o600)
        (code,) = codes_in_upload(pdf, "application/pdf")  # as the pharmacy's scanner reads the page
        for name, pharmacy in [("redeem the paper at pharmacy A", pharmacy_a),
                               ("present the paper again at pharmacy B", pharmacy_b)]:
            step, _ = await timed(name, s.redeem_pickup_code(pharmacy, code), check_outcome)
            record(step)
    finally:
        await s.close()
    return steps


def as_expected(steps) -> bool:
    got = [(st.name, st.outcome, st.reason) for st in steps]
    return got == EXPECTED


async def run_demo(settings: Settings, as_json: bool = False) -> int:
    progress = Progress()
    net = LocalSystem(settings, progress)
    await net.up()
    log = (lambda line: print(line, file=sys.stderr)) if as_json else print
    log("\nThe prescription flow:")
    steps = await run_flow(net, log)
    ok = as_expected(steps)
    if as_json:
        print(json.dumps({"ok": ok, "steps": [st.model_dump(exclude={"detail"}) | {"detail": st.detail}
                                              for st in steps]}, indent=2))
    else:
        total = sum(st.seconds for st in steps)
        print(f"\n{'every step ended as expected' if ok else 'UNEXPECTED OUTCOME'}; flow took {total:.1f} s")
    return 0 if ok else 1
