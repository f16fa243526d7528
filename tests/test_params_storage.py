"""Generation parameters (ranges, seeds, view azimuths) and the local artifact store."""

import pytest

from lift3d.errors import InvalidInputError
from lift3d.params import GenerationParams, SeededParams, parse_params
from lift3d.io.storage import LocalStore, StoredObjectNotFound


def test_defaults_match_the_cog_wrapper():
    p = GenerationParams()
    assert (p.num_views, p.guidance_scale, p.num_inference_steps) == (8, 7.5, 30)
    assert (p.num_multiview_steps, p.multiview_guidance_scale) == (50, 3.0)
    assert p.remove_background and p.return_3d and p.seed is None


@pytest.mark.parametrize(
    "field, value",
    [("num_views", 3), ("num_views", 13), ("guidance_scale", 0.5), ("num_inference_steps", 201),
     ("num_multiview_steps", 0), ("multiview_guidance_scale", 21), ("num_3d_max_steps", 9),
     ("num_3d_max_steps", 1001), ("seed", -1), ("seed", 2**32), ("prompt", "x" * 1001), ("nonsense", 1)],
)
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(InvalidInputError) as info:
        parse_params({field: value})
    assert field in str(info.value)
    assert info.value.errors and field in info.value.errors[0]


def test_view_azimuths_are_evenly_spaced_without_repeating_360():
    assert GenerationParams(num_views=4).view_azimuths() == [0.0, 90.0, 180.0, 270.0]
    azimuths = GenerationParams(num_views=12).view_azimuths()
    assert len(azimuths) == 12 and azimuths[1] == 30.0 and 360.0 not in azimuths


def test_with_seed_draws_once_and_keeps_explicit_seed():
    assert GenerationParams(seed=7).with_seed().seed == 7
    drawn = GenerationParams().with_seed().seed
    assert 0 <= drawn <= 2**32 - 1


def test_seeded_params_hold_an_int_seed_and_everything_else_unchanged():
    given = GenerationParams(num_views=5, texture=False, camera_path=[{"azimuth_deg": 0}, {"azimuth_deg": 90}])
    seeded = given.with_seed()
    assert type(seeded) is SeededParams and type(seeded.seed) is int
    assert seeded.model_dump(exclude={"seed"}) == given.model_dump(exclude={"seed"})
    assert seeded.model_fields_set == {"num_views", "texture", "camera_path", "seed"}  # what the user set, and the seed
    assert seeded.with_seed() is seeded  # drawn once
    assert SeededParams.model_validate_json(seeded.model_dump_json()) == seeded  # a job record's round trip
    with pytest.raises(ValueError, match="seed"):
        SeededParams(num_views=5)  # a seeded form without a seed does not exist


def test_local_store_round_trip_and_atomic_layout(tmp_path):
    store = LocalStore(tmp_path)
    store.put("generations/a/model.glb", b"abc")
    store.put("generations/a/views/000.png", b"png")
    assert store.get("generations/a/model.glb") == b"abc"
    assert store.list("generations/a/") == ["generations/a/model.glb", "generations/a/views/000.png"]
    store.put("generations/a/model.glb", b"new")
    assert store.get("generations/a/model.glb") == b"new"
    assert not [p for p in tmp_path.rglob("*.tmp")]
    with pytest.raises(StoredObjectNotFound):
        store.get("generations/missing")
    with pytest.raises(ValueError):
        store.put("../escape", b"x")
    assert store.url("generations/a/model.glb").startswith("file://")
