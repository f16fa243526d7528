"""Weighted SDXL prompt encoding through compel (lift3d.stages.sdxl.weighted_prompts), on the tiny SDXL."""

from __future__ import annotations

import pytest
import torch

from lift3d.errors import InvalidInputError
from lift3d.stages.sdxl.text_to_image import TextToImage
from lift3d.stages.sdxl.weighted_prompts import encode_weighted_prompts, plain_text

ROBOT = "a wooden toy robot"
CAT = "a white cat statue"


@pytest.fixture(scope="module")
def pipe(one_thread):
    return TextToImage.tiny(seed=0).pipe


def _diffusers(pipe, prompt: str, negative: str | None = None) -> dict[str, torch.Tensor]:
    """The pipeline's own encoding (what it does with plain ``prompt=``/``negative_prompt=`` strings)."""
    embeds = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                negative_prompt=negative)
    keys = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    return {key: value.detach() for key, value in zip(keys, embeds, strict=True)}


def test_single_unweighted_prompt_equals_the_pipelines_own_encoding(pipe):
    ours = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [])
    theirs = _diffusers(pipe, ROBOT)
    assert tuple(ours["prompt_embeds"].shape) == (1, 77, 64)  # 32 + 32 features of the two tiny encoders
    assert tuple(ours["pooled_prompt_embeds"].shape) == (1, 32)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key
    # no negatives: zeros, as force_zeros_for_empty_prompt gives
    assert not ours["negative_prompt_embeds"].any() and not ours["negative_pooled_prompt_embeds"].any()

    with_negative = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [("blurry", 1.0)])
    for key, value in _diffusers(pipe, ROBOT, "blurry").items():
        assert torch.equal(with_negative[key], value), key


def test_inline_weight_moves_that_token_away_from_the_empty_prompt(pipe):
    plain = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [])
    weighted = encode_weighted_prompts(pipe, [("a wooden (toy)1.5 robot", 1.0)], [])
    empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0].detach()
    # tokens: <start> a wooden toy robot <end> …; only "toy" (index 3) is weighted: e' = e∅ + 1.5 (e − e∅)
    expected = empty[:, 3] + 1.5 * (plain["prompt_embeds"][:, 3] - empty[:, 3])
    torch.testing.assert_close(weighted["prompt_embeds"][:, 3], expected, rtol=1e-5, atol=1e-6)
    assert (weighted["prompt_embeds"][:, 3] - plain["prompt_embeds"][:, 3]).abs().max() > 0.05
    others = [i for i in range(77) if i != 3]
    assert torch.equal(weighted["prompt_embeds"][:, others], plain["prompt_embeds"][:, others])
    # the pooled vector comes from the text without syntax, so it is the plain prompt's
    assert plain_text("a wooden (toy)1.5 robot") == "a wooden toy robot"
    assert torch.equal(weighted["pooled_prompt_embeds"], plain["pooled_prompt_embeds"])
    # word++ is weight 1.1² on that word
    plus = encode_weighted_prompts(pipe, [("a wooden toy++ robot", 1.0)], [])
    torch.testing.assert_close(plus["prompt_embeds"][:, 3],
                               empty[:, 3] + 1.21 * (plain["prompt_embeds"][:, 3] - empty[:, 3]), rtol=1e-5, atol=1e-6)


def test_prompts_are_blended_by_normalised_weights(pipe):
    robot = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [])
    cat = encode_weighted_prompts(pipe, [(CAT, 1.0)], [])
    even = encode_weighted_prompts(pipe, [(ROBOT, 1.0), (CAT, 1.0)], [])
    three_to_one = encode_weighted_prompts(pipe, [(ROBOT, 3.0), (CAT, 1.0)], [])
    for key in ("prompt_embeds", "pooled_prompt_embeds"):
        torch.testing.assert_close(even[key], 0.5 * robot[key] + 0.5 * cat[key])
        torch.testing.assert_close(three_to_one[key], 0.75 * robot[key] + 0.25 * cat[key])
        # 3:1 lies closer to the first prompt than 1:1 does: at half the distance (0.25 vs 0.5 of robot → cat)
        near, far = (three_to_one[key] - robot[key]).norm().item(), (even[key] - robot[key]).norm().item()
        assert near == pytest.approx(0.5 * far, rel=1e-4) and far > 0.1
    # only ratios matter: 6:2 is 3:1, and a lone prompt's weight changes nothing
    for key, value in encode_weighted_prompts(pipe, [(ROBOT, 6.0), (CAT, 2.0)], []).items():
        torch.testing.assert_close(value, three_to_one[key])
    assert torch.equal(encode_weighted_prompts(pipe, [(ROBOT, 2.5)], [])["prompt_embeds"], robot["prompt_embeds"])


def test_negatives_are_blended_and_padded_to_the_positive_length(pipe):
    blurry = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [("blurry", 1.0)])
    dark = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [("dark", 1.0)])
    mixed = encode_weighted_prompts(pipe, [(ROBOT, 1.0)], [("blurry", 1.0), ("dark", 3.0)])
    for key in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        torch.testing.assert_close(mixed[key], 0.25 * blurry[key] + 0.75 * dark[key])
    assert torch.equal(mixed["prompt_embeds"], blurry["prompt_embeds"])

    long = " ".join(["robot"] * 100)  # 100 tokens + start/end: two 77-token chunks, not truncated
    embeds = encode_weighted_prompts(pipe, [(long, 1.0)], [("blurry", 1.0)])
    assert tuple(embeds["prompt_embeds"].shape) == tuple(embeds["negative_prompt_embeds"].shape) == (1, 154, 64)
    empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0].detach()
    assert torch.equal(embeds["negative_prompt_embeds"][:, :77], blurry["negative_prompt_embeds"])
    torch.testing.assert_close(embeds["negative_prompt_embeds"][:, 77:], empty)  # padded with the empty prompt
    assert not torch.equal(embeds["prompt_embeds"][:, 77:], empty)  # the second chunk holds the prompt's tail


def test_device_and_dtype_follow_the_text_encoders():
    pipe = TextToImage.tiny(seed=0).pipe
    pipe.text_encoder.to(torch.float64)
    pipe.text_encoder_2.to(torch.float64)
    embeds = encode_weighted_prompts(pipe, [("a (wooden)1.2 toy", 2.0), (CAT, 1.0)], [("blurry", 1.0)])
    assert {value.dtype for value in embeds.values()} == {torch.float64}
    assert {value.device.type for value in embeds.values()} == {"cpu"}


@pytest.mark.parametrize(("positives", "negatives", "message"), [
    ([], [], "at least one positive prompt"),
    ([(ROBOT, 0.0)], [], "weights must be > 0"),
    ([(ROBOT, 1.0)], [("blurry", -1.0)], "negative prompt weights must be > 0"),
    ([("  ", 1.0)], [], "must be non-empty"),
])
def test_bad_prompts_raise(pipe, positives, negatives, message):
    with pytest.raises(InvalidInputError, match=message):
        encode_weighted_prompts(pipe, positives, negatives)
