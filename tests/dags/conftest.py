import os

import pytest


@pytest.fixture(scope="session")
def airflow_db():
    """The session's Airflow home (set in tests/conftest.py) with its metadata DB and the gpu pool."""
    from pipelines.airflow_local import prepare

    prepare(os.environ["AIRFLOW_HOME"])
    return os.environ["AIRFLOW_HOME"]
