"""The queue side: one delivery of a job id, leases and the sweep (:mod:`~lift3d.service.worker.consumer`), and one
attempt of a job in the trainer replica (:mod:`~lift3d.service.worker.runner`). Never imports the HTTP API."""
