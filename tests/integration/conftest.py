import pytest

from tests.integration.daemons import Daemon


@pytest.fixture
def daemon(user, user_tmp, varlinkctl):
    d = Daemon(user, user_tmp).start()
    yield d
    d.stop()
