import pytest

from tests.integration.daemons import Daemon, PodmanNode, wait_for


@pytest.fixture
def daemon(user, user_tmp, varlinkctl):
    d = Daemon(user, user_tmp).start()
    yield d
    d.stop()


@pytest.fixture
def node(user, user_tmp, varlinkctl):
    """One beemeshd with its own Podman store, its runtime connected."""
    n = PodmanNode(user, user_tmp).prepare()
    n.start()
    wait_for(lambda: n.call("GetInfo").json["info"]["runtime"]["available"], what="runtime available")
    yield n
    n.stop()
    n.cleanup()
