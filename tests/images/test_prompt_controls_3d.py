"""A text-to-3D job's SDXL image takes the image endpoints' prompt controls: the mapping from job parameters to the
image call, plain prompts unchanged, controls reaching the stage, the HTTP body, the price, and `lift3d image`."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lift3d.cli.main import main
from lift3d.errors import InvalidInputError
from lift3d.io.image_calls import PoseCall, RegionsCall, TextToImageCall
from lift3d.params import GenerationParams
from lift3d.pipeline.image_generation import call_for_3d, uses_prompt_controls
from lift3d.pipeline.providers import InProcessStages
from lift3d.presets import get_preset
from lift3d.service.config import ServiceConfig
from lift3d.service.accounts.credits import estimate_credits
from lift3d.service.metrics import ServiceMetrics
from lift3d.service.server import build_api, build_service
from lift3d.service.state import open_state


def mask_b64() -> str:
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 255).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_job_parameters_become_the_image_call():
    plain = GenerationParams(prompt="a robot", negative_prompt="blurry", guidance_scale=6.0, num_inference_steps=12)
    assert not uses_prompt_controls(plain)
    call = call_for_3d(plain.model_copy(update={"sampler": "euler_a"}), seed=4, size=64)
    assert isinstance(call, TextToImageCall) and call.seed == 4
    assert call.params.positive_prompts() == [("a robot", 1.0)] and call.params.negative_prompts() == [("blurry", 1.0)]
    assert (call.params.cfg_scale, call.params.steps, call.params.height, call.params.sampler) == (6.0, 12, 64, "euler_a")

    weighted = GenerationParams(prompt="a robot",
                                text_prompts=[{"text": "a robot", "weight": 2}, {"text": "dark", "weight": -0.5}])
    assert weighted.prompt == "a robot" and uses_prompt_controls(weighted)
    assert call_for_3d(weighted, seed=1).params.negative_prompts() == [("dark", 0.5)]

    regions = GenerationParams(prompt="a table", num_inference_steps=10,
                               regions={"fg_prompt": ["a cup"], "masks": [mask_b64()], "bootstrapping": 30})
    call = call_for_3d(regions, seed=2, size=64)
    assert isinstance(call, RegionsCall) and call.params.bg_prompt == "a table"
    assert (call.params.ddim_steps, call.params.bootstrapping, call.params.width) == (10, 10, 64)

    pose = GenerationParams(prompt="a knight", pose_image=mask_b64(), num_inference_steps=150, guidance_scale=30)
    call = call_for_3d(pose, seed=3)
    assert isinstance(call, PoseCall) and call.params.width is None  # the model's size
    assert (call.params.num_inference_steps, call.params.guidance_scale) == (100, 20)  # the pose endpoint's caps

    both = GenerationParams(prompt="x", pose_image=mask_b64(), regions={"fg_prompt": ["a"], "masks": [mask_b64()]})
    with pytest.raises(InvalidInputError, match="regions and pose_image"):
        call_for_3d(both, seed=1, size=64)
    with pytest.raises(InvalidInputError, match="size"):
        call_for_3d(regions, seed=1)


def test_plain_prompts_keep_their_image_and_controls_change_it():
    stages = InProcessStages(get_preset("tiny"))
    plain = GenerationParams(prompt="a robot", num_inference_steps=2)
    before = stages.text_to_image(plain, seed=5).value.data
    direct = stages.models.text_to_image()("a robot", num_inference_steps=2, seed=5)
    assert before == stages.text_to_image(plain, seed=5).value.data
    assert Image.open(io.BytesIO(before)).tobytes() == direct.tobytes()  # the stage's own call, as before
    steered = stages.text_to_image(plain.model_copy(update={"sampler": "dpmpp_2m"}), seed=5).value.data
    assert steered != before
    regions = GenerationParams(prompt="a robot", num_inference_steps=2,
                               regions={"fg_prompt": ["a cat"], "masks": [mask_b64()], "bootstrapping": 1})
    image = Image.open(io.BytesIO(stages.text_to_image(regions, seed=5).value.data))
    assert image.size == (64, 64)


def test_text_to_3d_over_http_takes_the_controls_and_prices_them(tmp_path):
    config = ServiceConfig(preset="tiny", store_url=str(tmp_path / "store"), database_url=f"sqlite:///{tmp_path / 'db'}",
                           gpu_type="A10G", default_rate_limit_per_min=1000)
    state = open_state(config)
    try:
        service = build_service(config, state, lambda j: None)
        client = TestClient(build_api(config, state, service, ServiceMetrics()))
        key = state.keys.create(name="a", credits=100)
        body = {"prompt": "a table", "sampler": "K_EULER", "scheduler": "karras", "video": True,
                "camera_path": "spiral", "regions": {"fg_prompt": ["a cup", "a robot"], "masks": [mask_b64()] * 2}}
        response = client.post("/v1/generation/text-to-3d", json=body, headers={"Authorization": f"Bearer {key.key}"})
        assert response.status_code == 202, response.text
        record = state.jobs.get(response.json()["id"])
        assert record.params.sampler == "euler" and record.params.regions.fg_prompt == ["a cup", "a robot"]
        assert record.params.video is True and record.params.camera_path == "spiral"
        # the price grows with the regions' UNet passes and the video's frames
        plain = estimate_credits("text-to-3d", GenerationParams(prompt="a table"), "default", 1.006)
        steered = estimate_credits("text-to-3d", GenerationParams(**body), "default", 1.006)
        extra_gpu_s = 2 * 0.45 * 30 + (0.5 + 0.05 * 48 * 0.25)  # two regions × 30 steps; 48 frames at 256²
        assert steered - plain == pytest.approx(extra_gpu_s * 1.006 / 36 * 1.25, abs=2e-3)
        bad = client.post("/v1/generation/text-to-3d", json={**body, "regions": {"fg_prompt": ["a"], "masks": []}},
                          headers={"Authorization": f"Bearer {key.key}"})
        assert bad.status_code == 422 and "regions" in bad.text
        # Stability's weighted prompts alone: the first positive, non-blank text names the job; 8.0 is an integer
        weighted = {"text_prompts": [{"text": "blurry", "weight": -1}, {"text": "  ", "weight": 2},
                                     {"text": " a wooden toy robot ", "weight": 1.5}],
                    "regions": {"fg_prompt": ["a cup"], "masks": [mask_b64()], "bootstrapping": 8.0}}
        response = client.post("/v1/generation/text-to-3d", json=weighted, headers={"Authorization": f"Bearer {key.key}"})
        assert response.status_code == 202, response.text
        record = state.jobs.get(response.json()["id"])
        assert (record.params.prompt, record.params.regions.bootstrapping) == ("a wooden toy robot", 8)
        assert [p.text for p in record.params.text_prompts] == ["blurry", "  ", " a wooden toy robot "]
        for unnamed in ({"text_prompts": [{"text": " ", "weight": 1}]}, {"text_prompts": [{"text": "a robot"}],
                                                                          "prompt": None}):
            refused = client.post("/v1/generation/text-to-3d", json=unnamed,
                                  headers={"Authorization": f"Bearer {key.key}"})
            assert refused.status_code == 422 and "prompt" in refused.json()["errors"][0], refused.text
        rule = client.get("/openapi.json").json()["paths"]["/v1/generation/text-to-3d"]["post"]["requestBody"]
        assert rule["content"]["application/json"]["schema"]["anyOf"][1]["required"] == ["text_prompts"]
    finally:
        state.close()


def test_lift3d_image_writes_the_samples(tmp_path, capsys):
    args = ["image", "--preset", "tiny", "--prompt", "a robot::1.5", "--negative-prompt", "blurry", "--steps", "2",
            "--height", "64", "--width", "128", "--samples", "2", "--seed", "9", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "image_0_seed9.png"), str(tmp_path / "image_1_seed10.png")]
    assert Image.open(printed[1]).size == (128, 64)
    assert main([*args[:-2], "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "image_1_seed10.png").read_bytes() == (tmp_path / "image_1_seed10.png").read_bytes()
    assert main(["image", "--preset", "tiny", "--prompt", "a", "--height", "100", "--out", str(tmp_path)]) == 2
    assert "height" in capsys.readouterr().err


def test_concurrent_calls_on_one_sdxl_give_the_sequential_images():
    """The deployment runs two calls at once (max_ongoing_requests=2): without the stage's lock, the shared fast
    tokenizers' padding state garbled concurrent prompts."""
    import threading

    from lift3d.io.image_calls import TextToImageCall
    from lift3d.params.images import TextToImageParams
    from lift3d.pipeline.image_generation import ImageModels
    from lift3d.stages.sdxl.text_to_image import TextToImage

    models = ImageModels(TextToImage.tiny(seed=0))
    calls = [TextToImageCall(TextToImageParams(text_prompts=[{"text": text}], steps=2, height=64, width=64), 3)
             for text in ("a robot", "a wooden toy robot on a white background, a photo of a 3d render " * 3)]
    sequential = [models(call)[0].image.data for call in calls] + [models.sdxl("a cat", num_inference_steps=2, seed=3)]
    results: dict[int, object] = {}

    def run(index: int) -> None:
        results[index] = (models(calls[index])[0].image.data if index < 2
                          else models.sdxl("a cat", num_inference_steps=2, seed=3))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[0] == sequential[0] and results[1] == sequential[1]
    assert results[2].tobytes() == sequential[2].tobytes()
