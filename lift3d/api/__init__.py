"""The service's API layer without Ray: request/response models, job records, cost model and metrics."""
