"""One local Ray cluster for every test in tests/ray (starting one takes seconds): 2 CPUs, no dashboard, a
small object store, its own temporary directory; shut down after the last test."""

from __future__ import annotations

import os

import pytest

# Autoscaling metrics every half second instead of every 10 s, so a test sees Ray Serve's decision in seconds.
# Set before ray.init: the raylet and every worker it starts inherit them.
RAY_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_USAGE_STATS_ENABLED": "0",
}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="Ray is in the [ray] extra: pip install -e '.[ray]'")
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    from fastml.serving.ray_predict import init_ray

    init_ray(num_cpus=2, object_store_memory=80 * 2**20, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
