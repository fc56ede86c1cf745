"""Create a new Indy pool in one folder: node keys, BLS keys, pool and domain genesis.

Run with the node venv's Python 3.8, e.g.:
    python init_pool.py --dir /path/pool --nodes 4 --node-ports 9701,9703,9705,9707 \
        --client-ports 9702,9704,9706,9708 --network-name erx [--host 127.0.0.1] \
        [--trustee-seed SEED] [--steward-seeds S1,S2,S3,S4] [--node-seeds N1,N2,N3,N4]

Seeds are 32 characters; the defaults are indy's public development seeds
(000000000000000000000000Trustee1, …Steward1-4, …Node1-4).

The pool genesis (what clients such as indy-vdr and ACA-Py need) is written to
<dir>/pool_transactions_genesis. If <dir> already holds a pool made with the same nodes and
ports, nothing is done; if it holds anything else, the script refuses.
"""

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
from pathlib import Path

import _pool_config

DEV_TRUSTEE_SEED = "000000000000000000000000Trustee1"


def dev_seed(name: str) -> str:
    # The seeds indy's own tooling and sandbox genesis files use: the name left-padded with 0s.
    return name.rjust(32, "0")


def seed_list(text: str) -> list:
    return [s for s in text.split(",") if s] if text else []


def port_list(text: str) -> list:
    return [int(p) for p in text.split(",") if p]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, type=Path, help="pool folder (created if missing)")
    p.add_argument("--nodes", required=True, type=int)
    p.add_argument("--node-ports", required=True, type=port_list, help="comma-separated, one per node")
    p.add_argument("--client-ports", required=True, type=port_list, help="comma-separated, one per node")
    p.add_argument("--network-name", required=True)
    p.add_argument("--host", default="127.0.0.1", help="IP the validators bind to and advertise")
    p.add_argument("--trustee-seed", default=DEV_TRUSTEE_SEED)
    p.add_argument("--steward-seeds", type=seed_list, default=[],
                   help="comma-separated, one per node (default: 000…StewardN)")
    p.add_argument("--node-seeds", type=seed_list, default=[],
                   help="comma-separated, one per node (default: 000…NodeN)")
    args = p.parse_args(argv)
    n = args.nodes
    if n < 1:
        p.error("--nodes must be at least 1")
    for opt in ("node_ports", "client_ports"):
        if len(getattr(args, opt)) != n:
            p.error("--{} needs exactly {} ports".format(opt.replace("_", "-"), n))
    if len(set(args.node_ports + args.client_ports)) != 2 * n:
        p.error("all node and client ports must differ")
    args.steward_seeds = args.steward_seeds or [dev_seed("Steward{}".format(i)) for i in range(1, n + 1)]
    args.node_seeds = args.node_seeds or [dev_seed("Node{}".format(i)) for i in range(1, n + 1)]
    for opt in ("steward_seeds", "node_seeds"):
        if len(getattr(args, opt)) != n:
            p.error("--{} needs exactly {} seeds".format(opt.replace("_", "-"), n))
    for seed in [args.trustee_seed] + args.steward_seeds + args.node_seeds:
        if len(seed.encode()) != 32:
            p.error("every seed must be exactly 32 bytes")
    return args


def wanted_nodes(args) -> list:
    return [
        {"name": "Node{}".format(i + 1), "ip": args.host,
         "node_port": args.node_ports[i], "client_port": args.client_ports[i]}
        for i in range(args.nodes)
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    pool_dir = args.dir.resolve()
    nodes = wanted_nodes(args)

    manifest_path = pool_dir / _pool_config.MANIFEST
    if manifest_path.exists():
        existing = _pool_config.read_manifest(pool_dir)
        if existing["network_name"] == args.network_name and existing["nodes"] == nodes:
            print("pool already initialised in {}".format(pool_dir))
            return 0
        print("error: {} already holds a different pool (network {!r}); remove it first"
              .format(pool_dir, existing["network_name"]), file=sys.stderr)
        return 1
    if pool_dir.exists() and any(pool_dir.iterdir()):
        print("error: {} is not empty and holds no {}; refusing to write into it"
              .format(pool_dir, _pool_config.MANIFEST), file=sys.stderr)
        return 1

    pool_dir.mkdir(parents=True, exist_ok=True)
    (pool_dir / _pool_config.CONFIG_FILE).write_text(
        _pool_config.CONFIG_TEMPLATE.format(network_name=args.network_name, batch_wait=0.2))
    config = _pool_config.load_config(pool_dir)

    from indy_common.config_helper import ConfigHelper, NodeConfigHelper
    from indy_common.txn_util import getTxnOrderedFields
    from ledger.genesis_txn.genesis_txn_file_util import genesis_txn_path
    from plenum.common.signer_did import DidSigner
    from plenum.common.test_network_setup import NodeDef, TestNetworkSetup
    from stp_core.common.util import adict
    from stp_core.crypto.nacl_wrappers import Signer

    def did_def(name: str, seed: str):
        signer = DidSigner(seed=seed.encode())
        return adict(name=name, sigseed=seed.encode(), nym=signer.identifier, verkey=signer.verkey)

    trustee = did_def("Trustee1", args.trustee_seed)
    stewards = [did_def("Steward{}".format(i + 1), s) for i, s in enumerate(args.steward_seeds)]
    node_defs = [
        NodeDef(name=nd["name"], ip=nd["ip"], port=nd["node_port"], client_port=nd["client_port"],
                idx=i + 1, sigseed=args.node_seeds[i].encode(),
                verkey=Signer(args.node_seeds[i].encode()).verhex, steward_nym=stewards[i].nym)
        for i, nd in enumerate(nodes)
    ]

    # Plenum's generator prints every seed it uses and logs key bytes at DEBUG: keep both quiet.
    logging.getLogger().setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):
        TestNetworkSetup.bootstrapTestNodesCore(
            config, args.network_name, False, getTxnOrderedFields(), trustee, stewards, node_defs,
            [], set(range(1, args.nodes + 1)), "indy.env", ConfigHelper, NodeConfigHelper)

    genesis = pool_dir / _pool_config.GENESIS_COPY
    shutil.copyfile(genesis_txn_path(ConfigHelper(config).genesis_dir, config.poolTransactionsFile),
                    str(genesis))

    manifest = {
        "network_name": args.network_name,
        "nodes": nodes,
        "trustee_did": trustee.nym,
        "steward_dids": [s.nym for s in stewards],
        "genesis_file": _pool_config.GENESIS_COPY,
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)  # the manifest marks a complete pool, so it is written last
    print("pool {!r} initialised in {}; genesis: {}".format(args.network_name, pool_dir, genesis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
