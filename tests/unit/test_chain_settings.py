"""The chain's two processes as `erx up` describes them: the journaling proxy on the chain port every
client uses, anvil behind it on an internal port that the ports check covers."""

from __future__ import annotations

import pytest

from erx_chain.node import port_of
from erx_cli.devnet import DevNetwork as Network
from erx_core.settings import ChainSettings, Settings, TailsSettings


def test_the_node_port_defaults_to_a_free_port_no_other_component_has(tmp_path):
    settings = Settings(home=tmp_path)
    plan = dict((owner, port) for owner, port in settings.port_plan())
    node_port = settings.chain.node_port
    assert node_port is not None and node_port != settings.chain.port
    assert list(plan.values()).count(node_port) == 1
    settings.save(tmp_path / "settings.json")
    assert Settings.load(tmp_path / "settings.json").chain.node_port == node_port, "kept once chosen"


def test_a_node_port_that_collides_is_refused(tmp_path):
    with pytest.raises(ValueError, match="port 6543"):
        Settings(home=tmp_path, chain=ChainSettings(node_port=6543), tails=TailsSettings(port=6543))
    with pytest.raises(ValueError, match="port 8545"):
        Settings(home=tmp_path, chain=ChainSettings(port=8545, node_port=8545))


def test_the_proxy_listens_on_the_chain_port_and_anvil_behind_it(tmp_path):
    network = Network(Settings(home=tmp_path, chain=ChainSettings(port=18545, node_port=18546)))
    node, proxy = network.chain_spec(), network.chain_proxy_spec()
    assert node.name == "chain" and node.ports == [18546] and port_of(node.argv) == 18546
    assert node.argv[node.argv.index("--order") + 1] == "fifo"
    assert node.argv[node.argv.index("--state-interval") + 1] == "1"
    assert proxy.name == "chain-proxy" and proxy.ports == [18545]
    assert proxy.argv[proxy.argv.index("--upstream") + 1] == "http://127.0.0.1:18546"
    assert proxy.argv[proxy.argv.index("--journal") + 1] == str(network.chain_journal_file)
    assert network.rpc_url == "http://127.0.0.1:18545"
    assert network.descriptor().chain.rpc_url == network.rpc_url, "clients talk to the proxy"
