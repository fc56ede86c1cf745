"""Shared by init_pool.py and start_node.py: point indy-node at one pool folder.

indy-plenum and indy-node default to /etc/indy and /var/lib/indy. Everything here lives in the
pool folder instead: an ``indy_config.py`` there names the data, key, genesis and log folders,
and ``pool.json`` records which nodes the pool has and on which ports.
"""

import json
import os
from pathlib import Path

MANIFEST = "pool.json"
CONFIG_FILE = "indy_config.py"
GENESIS_COPY = "pool_transactions_genesis"

# Written into the pool folder. Paths are relative to the file so the folder can be moved.
CONFIG_TEMPLATE = '''\
# Written by init_pool.py: indy-node configuration for this pool folder only.
import logging
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

NETWORK_NAME = {network_name!r}
# Same layout as /var/lib/indy on a packaged node: <dir>/<network>/{{keys,data,...}}.
LEDGER_DIR = _HERE
KEYS_DIR = _HERE
GENESIS_DIR = _HERE
NODE_INFO_DIR = _HERE
BACKUP_DIR = os.path.join(_HERE, "backup")
PLUGINS_DIR = os.path.join(_HERE, "plugins")
LOG_DIR = os.path.join(_HERE, "log")

# Development pace: order a batch after 0.2 s instead of 3 s.
Max3PCBatchWait = {batch_wait!r}
# start_node.py logs to stdout only; the process supervisor keeps the file.
logLevel = logging.INFO
enableStdOutLogging = True

# RocksDB preallocates 1.1 x write_buffer_size (64 MB by default) per database, about 1.2 GB
# of disk per node for a few kB of data. 4 MB buffers keep a dev node near 50 MB. Every
# db_*_config of plenum and indy-node is a copy of rocksdb_default_config, so set it in each.
import indy_common.config as _indy_config
import plenum.config as _plenum_config

for _module in (_plenum_config, _indy_config):
    for _db_config in vars(_module).values():
        if isinstance(_db_config, dict) and "write_buffer_size" in _db_config:
            _db_config["write_buffer_size"] = 4 * 1024 * 1024
'''


def load_config(pool_dir: Path):
    """Return indy-node's config for ``pool_dir``; call before importing other plenum modules."""
    # Four nodes start at once and plenum creates these with an exists-then-makedirs race
    # (FileExistsError on a fresh pool): create them first, race-free.
    for sub in ("plugins", "backup", "log"):
        os.makedirs(str(pool_dir / sub), exist_ok=True)
    # stp_core.config takes its baseDir (the user config folder) from the cwd at import time.
    os.chdir(str(pool_dir))
    import indy_common.config
    import plenum.config

    # Both modules carry GENERAL_CONFIG_DIR and both are merged on every getConfig/getConfigOnce;
    # setting only one is undone later and the node then looks for keys under /etc/indy.
    plenum.config.GENERAL_CONFIG_DIR = str(pool_dir)
    indy_common.config.GENERAL_CONFIG_DIR = str(pool_dir)
    from indy_common.config_util import getConfig

    return getConfig()


def read_manifest(pool_dir: Path) -> dict:
    with open(str(pool_dir / MANIFEST)) as f:
        return json.load(f)
