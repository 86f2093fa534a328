"""GPUs and host memory: detection, the GPU catalog, budgets per device."""
