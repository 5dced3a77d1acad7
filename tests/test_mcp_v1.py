"""The official SDK 1.x (low-level Server and its FastMCP) and fastmcp 2.x, instrumented and driven like the 2.x
servers: the servers run under `.venv-mcp1`, a virtualenv with `mcp` 1.x, since 1.x and 2.x cannot share one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_mcp_instrument import exercise_and_check

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv-mcp1"
# What scripts/setup installs there too; the fixture builds it when a checkout has none.
REQUIREMENTS = ["mcp>=1.30,<2", "fastmcp>=2.14,<3"]


@pytest.fixture(scope="session")
def mcp1_python() -> str:
    """The interpreter of a virtualenv holding interactionlog with the 1.x SDK and fastmcp 2.x."""
    python = VENV / "bin" / "python"  # not resolved: the symlink is what selects the virtualenv
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # Installed again when the checkout's dependencies moved on since the virtualenv was built (a new
    # dependency would otherwise fail every server at import, far from its cause).
    if subprocess.run([str(python), "-c", "import interactionlog.mcp, interactionlog.worker.decode"],
                      capture_output=True, check=False).returncode != 0:  # fmt: skip
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO), *REQUIREMENTS], check=True)
    return str(python)


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("flavour", ["lowlevel1", "fastmcp1", "fastmcp2"])
def test_every_call_of_a_server_on_the_1x_sdk_is_stored_with_its_facts_and_without_secrets(
    flavour: str, transport: str, *, mcp1_python: str, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """The same calls and checks as for 2.x: each lands once in PostgreSQL with its facts, secrets scrubbed."""
    exercise_and_check(flavour, transport, redis_url=redis_url, database_url=database_url, tmp_path=tmp_path,
                       python=mcp1_python, module="tests.mcp_servers_v1")  # fmt: skip
