"""The work the service accepts, without HTTP: job records (:mod:`~lift3d.service.jobs.records`) and their store on the
service database (:mod:`~lift3d.service.jobs.store`), the generation service (:mod:`~lift3d.service.jobs.generation`),
artifact URLs (:mod:`~lift3d.service.jobs.artifacts`), live events (:mod:`~lift3d.service.jobs.events`), the views ZIP
(:mod:`~lift3d.service.jobs.uploads`), the synchronous image calls (:mod:`~lift3d.service.jobs.image_service`) and
the synchronous image → GLB calls (:mod:`~lift3d.service.jobs.fast_asset_service`)."""
