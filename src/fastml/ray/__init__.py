"""fastml on Ray: deployments as Ray Serve applications (Ray's autoscaling, fastml's engine in each replica).

Ray is an optional dependency (the ``[ray]`` extra); nothing here imports it until a function needs it, so
``import fastml.ray`` stays cheap. Batch scoring as a Ray Data job lives with the other batch scoring, in
:mod:`fastml.serving.ray_predict` (``fastml predict --engine ray``).
"""

from fastml.ray.serve_app import RayServeOptions, build_app, deploy

__all__ = ["RayServeOptions", "build_app", "deploy"]
