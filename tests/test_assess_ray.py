"""`--backend ray`: jobs run as Ray tasks on a local instance (2 CPUs) and give the local backend's findings.

Ray is the optional `ray` extra: without it the test skips locally, but fails in CI (CI=true)."""

from __future__ import annotations

import os

import pytest

from bastion.assess.runner import Runner
from bastion.assess.scoring import finding_key

from .assess_fixtures import cancer_inputs, quick_assessment, quick_plan  # noqa: F401


def _ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Ray is required in CI: install the `ray` extra")
        pytest.skip("Ray is not installed (pip install 'bastion-ml[ray]')")
    return ray


def findings(a):
    return sorted((f.family, finding_key(f.family, x), x.severity, x.title) for f in a.families for x in f.findings)


def test_ray_backend_gives_the_local_findings(cancer_inputs, quick_plan, quick_assessment):  # noqa: F811
    ray = _ray()
    from bastion.assess.ray_backend import RayBackend

    local, _ = quick_assessment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = Runner(backend=RayBackend(), show_progress=False).run(cancer_inputs, quick_plan)
        assert ray.is_initialized()  # the backend leaves a cluster it did not start running
    finally:
        ray.shutdown()
    assert remote.backend == "ray" and remote.complete
    assert findings(remote) == findings(local)
    for fam_local, fam_remote in zip(local.families, remote.families, strict=True):
        assert fam_remote.headline == pytest.approx(fam_local.headline)
