"""Run one validator of a pool made by init_pool.py, in the foreground.

    python start_node.py --dir /path/pool --name Node1

All state stays in the pool folder: ledgers under <dir>/<network>/data/<name>, keys under
<dir>/<network>/keys. The node logs to stdout (INFO), so whoever starts it decides where the log
goes. SIGTERM or SIGINT stops the node's looper cleanly (databases closed), so starting it
again resumes on the same ledgers.
"""

import argparse
import sys
from pathlib import Path

import _pool_config


def avoid_compaction_deadlock() -> None:
    """Open integer-keyed RocksDB stores without compaction.

    Those stores sort keys with a Python comparator. faust-streaming-rocksdb opens a database while
    holding the GIL; if RocksDB schedules a compaction during the open (likely once level-0 files
    pile up over restarts), the compaction thread holds the DB mutex and waits for the GIL while the
    opening thread holds the GIL and waits for the mutex: the node hangs at "Starting ledger...".
    Seen here with py-spy after a few dozen restarts. A manual compact_range deadlocks the same way
    (it, too, runs in a RocksDB thread), so these stores do not compact at all: fine for the small
    ledgers of a development pool, whose level-0 file count limits are raised so writes never stall.
    """
    import rocksdb
    from storage import kv_store_rocksdb_int_keys as int_keys

    def open_(self):
        opts = self._get_db_opts()
        opts.comparator = int_keys.IntegerComparator()
        opts.disable_auto_compactions = True
        opts.level0_slowdown_writes_trigger = 10_000
        opts.level0_stop_writes_trigger = 10_000
        self._db = rocksdb.DB(self._db_path, opts, read_only=self._read_only)

    int_keys.KeyValueStorageRocksdbIntKeys.open = open_


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, type=Path, help="pool folder made by init_pool.py")
    p.add_argument("--name", required=True, help="node name, e.g. Node1")
    args = p.parse_args(argv)
    pool_dir = args.dir.resolve()

    manifest = _pool_config.read_manifest(pool_dir)
    node = next((n for n in manifest["nodes"] if n["name"] == args.name), None)
    if node is None:
        known = ", ".join(n["name"] for n in manifest["nodes"])
        print("error: no node {!r} in {} (has {})".format(args.name, pool_dir, known), file=sys.stderr)
        return 2

    config = _pool_config.load_config(pool_dir)
    avoid_compaction_deadlock()
    from indy_common.config_helper import NodeConfigHelper
    from indy_node.server.node import Node
    from stp_core.common.log import Logger
    from stp_core.loop.looper import Looper
    from stp_core.types import HA

    # What indy_node.utils.node_runner.run_node does, minus its extra log file: one log,
    # on stdout. (It also loads config.ENABLED_PLUGINS, which this pool does not use.)
    Logger().apply_config(config)
    print("{} starting: node port {}, client port {}, pool {}".format(
        args.name, node["node_port"], node["client_port"], pool_dir), flush=True)
    with Looper(debug=config.LOOPER_DEBUG) as looper:
        looper.add(Node(args.name, config_helper=NodeConfigHelper(args.name, config),
                        ha=HA(node["ip"], node["node_port"]), cliha=HA(node["ip"], node["client_port"])))
        looper.run()
    print("{} stopped".format(args.name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
