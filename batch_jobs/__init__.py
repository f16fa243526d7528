"""Batch generation on Ray Data: the stage actor pools and the runner of ``lift3d batch --runner ray``.

Beside ``deployments/`` (Serve), above ``lift3d/``: it imports ``lift3d`` and Ray, and nothing imports it but the
``lift3d.batch_runners`` entry point (``batch_jobs.runner:RayDataRunner``), resolved by name at run time.
"""
