"""Device-memory model of lift3d's GPU replicas, computed on the CPU (``benchmarks/memory_model.py``).

Modules: ``tracker`` (live-storage counter for real and fake tensors), ``measure`` (peak of a real CPU run from the
allocator's events), ``budgets`` (cards, replicas' shares from ``serve_config.yaml`` and ``k8s/rayservice.yaml``,
the issue's targets, the margin), ``nerf_sampling`` (the occupancy-grid sampler's data-dependent sizes),
``items`` (what is modelled: the real code paths at full size and at the tiny size).
"""
