"""The package's tests run against the installed wheel, in a fresh `SLUICE_HOME` per session, with the
machine's models (`sluice model pull`)."""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLOWS = REPO / "flows"

# Read before the home moves: where `sluice model pull` put the models.
_default_home = Path(os.environ.get("SLUICE_HOME") or Path.home() / ".sluice")
os.environ.setdefault("SLUICE_MODELS_DIR", str(_default_home / "models"))


@pytest.fixture(scope="session", autouse=True)
def home(tmp_path_factory):
    """A run store of the session's own, for the package and the `sluice` command alike."""
    path = tmp_path_factory.mktemp("sluice-home")
    os.environ["SLUICE_HOME"] = str(path)
    return path


@pytest.fixture(scope="session")
def sluice_cmd():
    """The `sluice` console script the wheel installed next to this interpreter."""
    path = Path(sys.executable).parent / "sluice"
    assert path.exists(), "the wheel's `sluice` command is missing from %s" % path.parent
    return str(path)


@pytest.fixture
def flow_copy(tmp_path):
    """A copy of one of the repository's flows, to change."""

    def copy(name):
        target = tmp_path / name
        shutil.copytree(FLOWS / name, target)
        return target

    return copy
