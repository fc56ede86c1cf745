"""`erx`: the project's front door.

The whole system on this machine: up, status, down, reset, demo, test, bench, integrator, staff. Its parts
one by one, as separate deployments would run them: `erx network …` (the dev network), `erx authority …`
(the health authority: publish, onboard, offboard), `erx org …` (one organisation from its own home).

Run through the `./erx` script at the repository root, which first creates the Python environment
and npm packages this module needs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys

from pydantic import ValidationError

from pathlib import Path

from erx_cli.authority import HealthAuthority, JoinRequest
from erx_cli.devnet import DevNetwork
from erx_cli.launch import SetupError, status_json
from erx_cli.org import Organisation, OrgSettings, Storage
from erx_cli.system import LocalSystem
from erx_core.descriptor import NetworkDescriptor
from erx_core.processes import PortInUse, free_port
from erx_core.progress import Progress
from erx_core.settings import REPO_ROOT, Settings


def _network(progress: Progress | None = None) -> LocalSystem:
    return LocalSystem(Settings(), progress or Progress())


def cmd_up(args) -> int:
    net = _network()
    asyncio.run(net.up())
    print("pages (sign in as a staff member; each password is the secret of that name):", *net.page_lines(), sep="\n")
    print(f"state: {net.paths.home}   status: ./erx status   stop: ./erx down")
    return 0


def cmd_status(args) -> int:
    status = asyncio.run(_network().status())
    if args.json:
        print(status_json(status))
    else:
        for name, comp in status.components.items():
            print(f"{'ok ' if comp.healthy else 'DOWN'}  {name:<16} {comp.detail}")
        for name, url in status.api.items():
            print(f"api   {name:<16} {url}")
    return 0 if status.healthy else 1


def cmd_down(args) -> int:
    stopped = _network().down()
    print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def cmd_reset(args) -> int:
    net = _network()
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"refusing to wipe {net.paths.home} without --yes", file=sys.stderr)
            return 2
        if input(f"Wipe all ledgers, wallets and keys under {net.paths.home}? [y/N] ").strip().lower() != "y":
            return 1
    net.reset()
    print(f"wiped {net.paths.home} (installed environments kept)")
    return 0


def cmd_demo(args) -> int:
    from erx_cli.demo import run_demo
    return asyncio.run(run_demo(Settings(), as_json=args.json))


def cmd_test(args) -> int:
    # Setup the tests need that the ./erx script does not do: the Indy node environment.
    from erx_indy.node_venv import ensure_node_venv
    settings = Settings()
    ensure_node_venv(settings.paths.node_venv, settings.pool.base_python, Progress())
    from erx_core.system_packages import POSTGRES_PACKAGES, PackageInstallError, ensure_packages
    try:  # Chromium and zbarimg for the browser tests of the web pages; PostgreSQL for the storage tests
        ensure_packages(Progress())
        ensure_packages(Progress(), POSTGRES_PACKAGES, purpose="PostgreSQL storage tests")
    except PackageInstallError as exc:
        print(f"erx: {exc}", file=sys.stderr)
        return 2
    # the layers (pyproject.toml [tool.importlinter]): nothing imports upward
    lint = Path(sys.executable).parent / "lint-imports"
    if subprocess.call([str(lint), "--no-cache"], cwd=REPO_ROOT) != 0:
        print("erx: the import layers are broken (see above)", file=sys.stderr)
        return 1
    cmd = [sys.executable, "-m", "pytest", *args.pytest_args]
    tests = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        return tests.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: pytest tears its fixtures down (stopping their networks)
        tests.send_signal(signal.SIGINT)
        try:
            return tests.wait(timeout=120)
        except subprocess.TimeoutExpired:
            tests.terminate()
            raise


async def on_system(net: LocalSystem, work):
    """Run `work()` on the system, brought up first. A system that was not running before is stopped
    afterwards, also when the work fails or is interrupted: a bench leaves no processes behind."""
    already = bool(net.supervisor.running())
    try:
        await net.up()
        return await work()
    finally:
        if not already:
            net.down()


POSTGRES_BENCH_PORT = 55432  # `bench --storage postgres`: the agents' clusters on this port and the next ones


def cmd_bench(args) -> int:
    import json

    from erx_bench import agents, flow, ledger

    progress = Progress()

    async def run() -> dict:
        if args.target == "ledger":  # starts its own EVM node: earlier state must not slow it down
            report = await ledger.run_ledger(quick=args.quick, progress=progress)
            if args.caliper or (not args.quick and not args.no_caliper):
                from erx_bench.caliper import run_caliper  # Hyperledger Caliper, as seed 000 measured with
                report["caliper"] = await run_caliper(quick=args.quick, progress=progress)
            return report
        settings = Settings()
        if args.storage == "postgres":  # every agent (and its controller) on its own PostgreSQL cluster
            settings = settings.model_copy(update={"agents": [
                a.model_copy(update={"storage": "postgres", "postgres_port": a.postgres_port or POSTGRES_BENCH_PORT + i})
                for i, a in enumerate(settings.agents)]})
        net = LocalSystem(settings, progress)
        if args.target == "agents":
            return await on_system(net, lambda: agents.run_agents(
                net, quick=args.quick, progress=progress, prefill=args.prefill, levels=args.levels))
        return await on_system(net, lambda: flow.run_flow_bench(net, quick=args.quick, progress=progress))

    report = asyncio.run(run())
    render = {"ledger": ledger.render, "agents": agents.render, "flow": flow.render}[args.target]
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def cmd_integrator(args) -> int:
    """Manage an organisation's integrators through its controller's REST API (operator token)."""
    from erx_roles.client import ControllerApiError, ControllerClient

    net = _network()
    organisations = [a.name for a in net.settings.agents if a.role != "patient"]
    if args.organisation not in organisations:
        print(f"erx: {args.organisation!r} is not an organisation; one of {organisations}", file=sys.stderr)
        return 2
    if args.action != "list" and not args.name:
        print(f"erx: integrator {args.action} needs a {'name' if args.action == 'add' else 'integrator id'}",
              file=sys.stderr)
        return 2

    async def run() -> int:
        async with ControllerClient(net.controller_url(args.organisation),
                                    net.operator_token(args.organisation)) as client:
            if args.action == "add":
                created = await client.post("/api/integrators", {"name": args.name, "scopes": args.scope or []})
                print(f"integrator {created['integrator_id']} ({created['name']})\n"
                      f"token (shown once): {created['token']}\n"
                      f"API: {net.controller_url(args.organisation)}/api/openapi.json")
            elif args.action == "remove":
                await client.request("DELETE", f"/api/integrators/{args.name}")
                print(f"removed integrator {args.name}; its token no longer works")
            else:
                for i in await client.get("/api/integrators"):
                    print(f"{i['integrator_id']}  …{i['token_hint']}  {i['name']}")
        return 0

    try:
        return asyncio.run(run())
    except ControllerApiError as exc:
        print(f"erx: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"erx: the {args.organisation} controller does not answer ({exc}); is the network up?",
              file=sys.stderr)
    return 1


def cmd_staff(args) -> int:
    """Manage an organisation's staff accounts through its controller's REST API (operator token)."""
    from erx_roles.client import ControllerApiError, ControllerClient

    net = _network()
    organisations = [a.name for a in net.settings.agents if a.role != "patient"]
    if args.organisation not in organisations:
        print(f"erx: {args.organisation!r} is not an organisation; one of {organisations}", file=sys.stderr)
        return 2
    from erx_core.staff import is_username
    if args.action != "list" and not is_username(args.username):
        print(f"erx: staff {args.action} needs a username (lower case letters, digits, . _ -; 2-30, a letter "
              "first)", file=sys.stderr)
        return 2
    if args.action == "add" and not (args.role and args.name):
        print("erx: staff add needs --role and --name (and --id for a prescriber)", file=sys.stderr)
        return 2
    user = f"/api/staff/{args.username}"

    async def run() -> int:
        async with ControllerClient(net.controller_url(args.organisation),
                                    net.operator_token(args.organisation)) as client:
            if args.action == "add":
                body = {"username": args.username, "display_name": args.name, "role": args.role}
                if args.id:
                    body["professional_id"] = args.id
                created = await client.post("/api/staff", body)
                print(f"{created['username']} ({created['role']}): {created['display_name']}\n"
                      f"password (shown once): {created['password']}\nsign in at {net.page_url(args.organisation)}")
            elif args.action in ("disable", "enable"):
                member = await client.post(f"{user}/{args.action}")
                print(f"{member['username']}: {'disabled' if member['disabled'] else 'enabled'}")
            elif args.action == "password":
                print(f"new password of {args.username} (shown once; their sessions ended): "
                      f"{(await client.post(f'{user}/password'))['password']}")
            elif args.action == "token":
                print(f"API token of {args.username} (shown once; the previous one stopped working): "
                      f"{(await client.post(f'{user}/token'))['token']}")
            else:
                for m in await client.every_page("/api/staff"):
                    print(f"{m['username']:<20} {m['role']:<11} {'disabled' if m['disabled'] else 'active  '} "
                          f"{m['display_name']}" + (f"  [{m['professional_id']}]" if m.get("professional_id") else ""))
        return 0

    try:
        return asyncio.run(run())
    except ControllerApiError as exc:
        print(f"erx: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"erx: the {args.organisation} controller does not answer ({exc}); is the network up?",
              file=sys.stderr)
    return 1


def _print_components(components: dict) -> None:
    for name, comp in components.items():
        print(f"{'ok ' if comp.healthy else 'DOWN'}  {name:<16} {comp.detail}")


def cmd_network(args) -> int:
    """The dev network alone: pool, chain, tails. `up` writes its descriptor for the authority."""
    net = DevNetwork(Settings(), Progress())
    if args.action == "up":
        asyncio.run(net.up())
        print(f"network descriptor (the network's half): {net.descriptor_file}")
    elif args.action == "down":
        print("stopped: " + (", ".join(net.down()) or "nothing was running"))
    elif args.action == "admit-authority":
        if not args.join_request:
            print("erx: network admit-authority needs the authority's join request file", file=sys.stderr)
            return 2
        request = _authority_request(Path(args.join_request))
        asyncio.run(net.admit_authority(request["did"], request["verkey"], request.get("name", "health-authority")))
    else:
        components = asyncio.run(net.status())
        _print_components(components)
        return 0 if all(c.healthy for c in components.values()) else 1
    return 0


def _authority_request(path: Path) -> dict:
    import json
    data = json.loads(path.read_text())
    if not {"did", "verkey"} <= set(data):
        raise SetupError(f"{path} is not a join request (it names no did and verkey)")
    return data


def _authority(args) -> HealthAuthority:
    home = Path(args.home) if args.home else Settings().paths.authority
    return HealthAuthority(home, progress=Progress())


def cmd_authority(args) -> int:
    authority = _authority(args)
    if args.action == "init":
        if not args.network:
            print("erx: authority init needs --network <descriptor>", file=sys.stderr)
            return 2
        authority.init(NetworkDescriptor.load(Path(args.network)))
        did, verkey = authority.did_and_verkey()
        request = authority.home / "join-request.json"
        import json
        request.write_text(json.dumps({"name": authority.name, "did": did, "verkey": verkey,
                                       "chain_address": authority.chain_key().address}, indent=2))
        print(f"health authority in {authority.home}: DID {did}, chain account {authority.chain_key().address}\n"
              f"hand {request} to the network's trustees (dev: `erx network admit-authority {request}`)")
    elif args.action == "up":
        descriptor = asyncio.run(authority.up())
        print(f"published {authority.descriptor_file}: schema {descriptor.prescription_schema_id}, "
              f"token contract {descriptor.chain.token_contract}")
    elif args.action == "onboard":
        asyncio.run(authority.onboard(JoinRequest.load(Path(args.target))))
    elif args.action == "offboard":
        member = asyncio.run(authority.offboard(args.target))
        print(f"offboarded {member.request.name} ({member.request.did})")
    else:
        for did, m in authority.members().items():
            print(f"{'active ' if m.active else 'offboarded'}  {m.request.role:<9} {m.request.name:<20} {did}")
    return 0


def cmd_org(args) -> int:
    home = Path(args.home)
    org = Organisation(home, Progress())
    if args.action == "init":
        if not (args.role and args.name and args.network):
            print("erx: org init needs <role> <name> --network <descriptor> --home <dir>", file=sys.stderr)
            return 2
        host = Settings().host
        ports = [int(p) for p in args.ports.split(",")] if args.ports else [free_port(host) for _ in range(3)]
        settings = OrgSettings(name=args.name, role=args.role, label=args.label or args.name, host=host,
                               inbound_port=ports[0], admin_port=ports[1], controller_port=ports[2],
                               public_endpoint=args.public_endpoint, public_url=args.public_url,
                               storage=Storage(args.storage), dev_accounts=args.dev_accounts,
                               postgres_port=args.postgres_port or (free_port(host) if args.storage == "postgres"
                                                                    else None))
        request = org.init(settings, NetworkDescriptor.load(Path(args.network)))
        print(f"{args.name} ({args.role}) in {home}"
              + (f"; hand {org.join_request_file} to the health authority" if request else ""))
        for account in org.dev_staff():  # created by the controller at its first start
            print(f"staff account {account.username} ({account.role}): password "
                  f"\"{org.secrets.staff_password_name(args.name, account.username)}\" in {org.secrets.path}")
    elif args.action == "up":
        asyncio.run(org.up())
    elif args.action == "down":
        print("stopped: " + (", ".join(org.down()) or "nothing was running"))
    else:
        components = asyncio.run(org.status())
        _print_components(components)
        return 0 if all(c.healthy for c in components.values()) else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="erx", description="Decentralised e-prescriptions: local network and tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the Indy pool, EVM node, tails server and agents; wait until healthy"
                   ).set_defaults(func=cmd_up)
    p = sub.add_parser("status", help="health of every component")
    p.add_argument("--json", action="store_true", help="stable machine-readable output")
    p.set_defaults(func=cmd_status)
    sub.add_parser("down", help="stop everything that was started (data is kept)").set_defaults(func=cmd_down)
    p = sub.add_parser("reset", help="stop everything and wipe all state")
    p.add_argument("--yes", action="store_true", help="do not ask")
    p.set_defaults(func=cmd_reset)
    p = sub.add_parser("demo", help="bring the network up and run the end-to-end prescription flow")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("bench", help="benchmarks: ledger (own EVM node), agents and flow (on the network)")
    p.add_argument("target", choices=["ledger", "agents", "flow"])
    p.add_argument("--json", action="store_true", help="one JSON object; its `summary` holds the headline figures")
    p.add_argument("--quick", action="store_true", help="a small load")
    p.add_argument("--caliper", action="store_true", help="ledger: also run Hyperledger Caliper (default unless --quick)")
    p.add_argument("--no-caliper", action="store_true", help="ledger: skip Hyperledger Caliper")
    p.add_argument("--prefill", type=int, default=0, help="agents: first issue this many prescriptions, untimed")
    p.add_argument("--levels", type=lambda v: [int(x) for x in v.split(",")], default=None,
                   help="agents: concurrency levels, e.g. 1,4,16,32 (the default)")
    p.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite",
                   help="agents/flow: the agents' and controllers' storage (postgres: a local cluster each, "
                        f"ports from {POSTGRES_BENCH_PORT}; use a fresh ERX_HOME)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("integrator", help="API tokens for integrators: add NAME, list, remove ID")
    p.add_argument("action", choices=["add", "list", "remove"])
    p.add_argument("organisation", help="doctor, pharmacy, …")
    p.add_argument("name", nargs="?", default="", help="add: the integrator's name; remove: its id")
    p.add_argument("--scope", action="append", choices=["trust-list"],
                   help="add: an extra power for the token (trust-list: change the pharmacy's trusted prescribers)")
    p.set_defaults(func=cmd_integrator)
    p = sub.add_parser("staff", help="an organisation's staff accounts: add, list, disable, enable, password, token")
    p.add_argument("action", choices=["add", "list", "disable", "enable", "password", "token"])
    p.add_argument("organisation", help="doctor, pharmacy, …")
    p.add_argument("username", nargs="?", default="", help="the account (lower case letters, digits, . _ -)")
    p.add_argument("--role", choices=["prescriber", "assistant", "pharmacist", "operator"], help="add: the role")
    p.add_argument("--name", help="add: the person's name, as prescriptions name a prescriber")
    p.add_argument("--id", help="add: a prescriber's professional identifier (e.g. the national physician number)")
    p.set_defaults(func=cmd_staff)
    p = sub.add_parser("network", help="the dev network alone (pool, chain, tails): up writes its descriptor")
    p.add_argument("action", choices=["up", "down", "status", "admit-authority"])
    p.add_argument("join_request", nargs="?", help="admit-authority: the authority's join-request.json")
    p.set_defaults(func=cmd_network)
    p = sub.add_parser("authority", help="the health authority: init, up (publish), onboard, offboard, members")
    p.add_argument("action", choices=["init", "up", "onboard", "offboard", "members"])
    p.add_argument("target", nargs="?", default="", help="onboard: a join-request.json; offboard: a name or DID")
    p.add_argument("--home", help="the authority's home (default: <ERX_HOME>/authority)")
    p.add_argument("--network", help="init: the network descriptor to govern")
    p.set_defaults(func=cmd_authority)
    p = sub.add_parser("org", help="one organisation from its own home: init, up, down, status")
    p.add_argument("action", choices=["init", "up", "down", "status"])
    p.add_argument("role", nargs="?", choices=["doctor", "pharmacy", "patient"])
    p.add_argument("name", nargs="?")
    p.add_argument("--home", required=True, help="the organisation's home directory")
    p.add_argument("--network", help="init: the network descriptor the health authority published")
    p.add_argument("--label", help="init: the name people see")
    p.add_argument("--ports", help="init: inbound,admin,controller (default: free ports)")
    p.add_argument("--public-endpoint", help="init: the agent's public DIDComm endpoint (https behind a proxy)")
    p.add_argument("--public-url", help="init: the controller's public URL (pages, short links)")
    p.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--postgres-port", type=int, help="init: the local PostgreSQL cluster's port")
    p.add_argument("--dev-accounts", action="store_true",
                   help="init: also a dev prescriber or pharmacist (default: only the operator, who adds the staff)")
    p.set_defaults(func=cmd_org)
    p = sub.add_parser("test", help="set up and run the test suite (extra arguments go to pytest)")
    p.set_defaults(func=cmd_test)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["test"]:  # everything after `test` belongs to pytest, options included
        args = build_parser().parse_args(["test"])
        args.pytest_args = argv[1:]
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as exc:
        print(f"erx: bad configuration (ERX_* environment variables or arguments):\n{exc}", file=sys.stderr)
    except (SetupError, PortInUse) as exc:
        print(f"erx: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("erx: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    # SIGTERM (a supervisor, `kill`, a CI timeout) ends a command as Ctrl-C does: what it started is
    # stopped on the way out. A background job's Ctrl-C is ignored by its shell, so this is the way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
