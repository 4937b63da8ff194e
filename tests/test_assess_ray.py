"""`--backend ray`: jobs (and reference models) run as Ray tasks on a local instance with 2 CPUs and give the
local backend's findings for the same seed.

Ray is the optional `ray` extra: without it the test skips locally, but fails in CI (CI=true)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from bastion.assess.runner import Runner
from bastion.families.grading import finding_key

from .assess_fixtures import cancer_inputs, quick_plan  # noqa: F401


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


def test_ray_backend_gives_the_local_findings(cancer_inputs, quick_plan):  # noqa: F811
    ray = _ray()
    # the slowest family adds nothing here; availability measures time (not a pure function of the seed)
    plan = quick_plan.merged({"families": {"extraction": False, "availability": False}})
    from bastion.assess.ray_backend import RayBackend
    from bastion.assess.ray_references import references_on_ray
    from bastion.attacks.privacy import reference_attack
    from bastion.attacks.privacy.references import ReferenceSpec, balanced_masks
    from bastion.core.training import Trainer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray workers compute with one thread: same floating-point sums
    try:
        local = Runner(show_progress=False).run(cancer_inputs, plan)
        spec = ReferenceSpec(2, Trainer(epochs=2, device="cpu"), factory=lambda: torch.nn.Linear(30, 2))
        x, y = cancer_inputs.data.x[:40], cancer_inputs.data.y[:40]
        masks = balanced_masks(40, 2, np.random.default_rng(0))
        expected = reference_attack.train_references(spec, x, y, masks, x[:8], seed=5, n_jobs=1)
    finally:
        torch.set_num_threads(threads)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with references_on_ray() as active:
            assert active
            routed = reference_attack.train_references(spec, x, y, masks, x[:8], seed=5, n_jobs=1)
        np.testing.assert_array_equal(routed, expected)
        remote = Runner(backend=RayBackend(), show_progress=False).run(cancer_inputs, plan)
        assert ray.is_initialized()  # the backend leaves a cluster it did not start running
    finally:
        ray.shutdown()
    assert remote.backend == "ray" and remote.complete
    assert findings(remote) == findings(local)
    for fam_local, fam_remote in zip(local.families, remote.families, strict=True):
        assert fam_remote.headline == pytest.approx(fam_local.headline)
