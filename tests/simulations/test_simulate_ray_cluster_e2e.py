"""User story (researcher): run a federation on a Ray cluster that is already up.

The cluster here is a Ray instance another process holds (``ray.init(address="local")`` in a
subprocess: a multi-node cluster cannot be formed on loopback on this machine, and tests
never run ``ray start``). ``fedrec simulate --ray-address`` joins it and takes the CPUs it is
given; a run without an address starts a private instance and ignores the cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedrec.common.fedconfig import FederationConfig
from fedrec.simulations.runner import ray_backend_config, simulate

pytestmark = pytest.mark.slow

# holds a Ray instance until its stdin closes, then prints how many ClientApp actors ran on it
HOLD = (
    "import ray, sys; import ray._private.state as state;"
    " ray.init(address='local', num_cpus=2, include_dashboard=False, logging_level='ERROR');"
    " print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read();"
    " print(sum(a.get('ActorClassName') == 'ClientAppActor' for a in state.actors().values()),"
    " flush=True); ray.shutdown()"
)
RUN = {"data": "synthetic", "synthetic-users": 60, "synthetic-items": 300, "num-rounds": 2,
       "clients-per-round": 5, "eval-every": 2}  # fmt: skip


class Cluster:
    """A Ray instance held by another process (see the module docstring)."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            [sys.executable, "-c", HOLD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.holder.stdout is not None
        self.address = self.holder.stdout.readline().strip()
        assert self.address, "the Ray instance did not start"

    def close(self) -> int:
        """Stop the instance; returns how many ClientApp actors ran on it."""
        assert self.holder.stdin is not None and self.holder.stdout is not None
        self.holder.stdin.close()
        try:
            actors = int(self.holder.stdout.readline().strip() or -1)
            self.holder.wait(timeout=60)
        finally:
            if self.holder.poll() is None:
                self.holder.kill()
                self.holder.wait()
        return actors


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    held = Cluster()
    try:
        yield held
    finally:
        if held.holder.poll() is None:
            held.close()


def test_a_run_joins_the_cluster_it_is_given(cluster: Cluster, tmp_path: Path) -> None:
    config = FederationConfig.from_mapping(RUN).replace(out_dir=str(tmp_path / "run"))
    metrics = simulate(config, ray_address=cluster.address, client_cpus=1.0)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["final"]["users"] == 60
    assert cluster.close() == 2  # its two CPUs, one ClientApp actor each, ran the nodes


def test_without_an_address_a_run_keeps_to_a_private_instance(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = FederationConfig.from_mapping(RUN).replace(out_dir=str(tmp_path / "run"))
    metrics = simulate(config, num_cpus=1)
    assert metrics["final"]["users"] == 60
    assert cluster.close() == 0  # nothing of the run touched the other instance


def test_the_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    private = ray_backend_config(4, 2, None, None)
    assert private["init_args"]["address"] == "local" and private["init_args"]["num_cpus"] == 4
    assert private["client_resources"]["num_cpus"] == 2.0
    joined = ray_backend_config(4, None, "10.0.0.5:6379", 0.5)
    assert (
        joined["init_args"]["address"] == "10.0.0.5:6379" and "num_cpus" not in joined["init_args"]
    )
    assert joined["client_resources"]["num_cpus"] == 0.5
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.6:6379")
    assert ray_backend_config(4, None, None, None)["init_args"]["address"] == "10.0.0.6:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_backend_config(4, None, None, None)["init_args"]["num_cpus"] == 4
