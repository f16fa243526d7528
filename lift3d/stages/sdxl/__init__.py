"""The Stable Diffusion XL family: text → image and its controls (see :mod:`lift3d.stages.sdxl.text_to_image`).

Modules:

- ``text_to_image``: the :class:`TextToImage` stage (SDXL pipeline, seeded calls, the tiny preset's components);
- ``generated``: :class:`GeneratedImage`, what the image stages return (one image and its seed);
- ``image_edit``: image-to-image and inpainting on the stage's modules (strengths, masks, pasting back);
- ``schedulers``: canonical sampler × schedule names → a configured diffusers scheduler;
- ``weighted_prompts``: weighted prompts → SDXL conditioning through compel;
- ``region_fusion``: MultiDiffusion's masks, latent fusion and bootstrapping inputs (no pipeline);
- ``regions``: :class:`RegionGenerator`, region-based text → image on SDXL with MultiDiffusion;
- ``pose``: :class:`PoseDetector` (rtmlib, ONNX) and the OpenPose drawing that conditions the pose ControlNet;
- ``pose_to_image``: :class:`PoseToImage`, pose-conditioned SDXL through an OpenPose ControlNet.

Nothing is re-exported: callers import the module they need (``from lift3d.stages.sdxl.text_to_image import
TextToImage``), so importing the light modules (``pose``, ``generated``) does not load diffusers.
"""
