"""Geometry of editing.py (zoom boxes, regions, paste-back, reference hint) and zoomed_edit's
orchestration with a stand-in pipeline: exact boxes, bit-identity outside the feathered band."""

import argparse
from types import SimpleNamespace

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mimicbrush import editing, imaging
from mimicbrush.editing import MIN_CONTEXT_PX, plan_regions, should_zoom, zoom_box
from mimicbrush.errors import InputError

# ---------------------------------------------------------------------------------------------
# zoom_box


@pytest.mark.parametrize(
    "mask_box, image_size, margin, expected",
    [
        # centre, small region: context is the 16 px floor, side 10 + 32
        ((90, 40, 100, 50), (200, 100), 1.0, (74, 24, 116, 66)),
        # centre, margin-dominated: 60×40 box, context 60, side 180; the short axis gets more
        ((400, 300, 460, 340), (1000, 800), 1.0, (340, 230, 520, 410)),
        # odd surplus (35 - 3 = 32 even in x; 35 - 2 = 33 in y): the extra pixel goes to the bottom
        ((50, 50, 53, 52), (100, 100), 1.0, (34, 34, 69, 69)),
        # fractional margin rounds the context up: ceil(0.5 × 45) = 23, side 91
        ((500, 500, 545, 520), (1000, 1000), 0.5, (477, 465, 568, 556)),
        # margin 0 still keeps the 16 px floor
        ((500, 500, 600, 550), (1000, 1000), 0.0, (484, 459, 616, 591)),
    ],
)
def test_zoom_box_in_the_image(mask_box, image_size, margin, expected):
    assert zoom_box(mask_box, image_size, margin) == expected


# Odd-sized 65×47 image, 5×5 regions touching each border and corner: side 5 + 32 = 37,
# shifted (not shrunk) to stay inside.
@pytest.mark.parametrize(
    "mask_box, expected",
    [
        ((0, 20, 5, 25), (0, 4, 37, 41)),  # left
        ((60, 20, 65, 25), (28, 4, 65, 41)),  # right
        ((30, 0, 35, 5), (14, 0, 51, 37)),  # top
        ((30, 42, 35, 47), (14, 10, 51, 47)),  # bottom
        ((0, 0, 5, 5), (0, 0, 37, 37)),  # top-left
        ((60, 0, 65, 5), (28, 0, 65, 37)),  # top-right
        ((0, 42, 5, 47), (0, 10, 37, 47)),  # bottom-left
        ((60, 42, 65, 47), (28, 10, 65, 47)),  # bottom-right
    ],
)
def test_zoom_box_square_and_clamped_at_borders(mask_box, expected):
    assert zoom_box(mask_box, (65, 47)) == expected


def test_zoom_box_longer_than_the_short_side_takes_the_whole_axis():
    # 40 px long side, side 120 > the 60 px height: the whole height, 120 px wide
    assert zoom_box((100, 10, 140, 50), (300, 60)) == (60, 0, 180, 60)
    # larger than the image both ways: the whole image
    assert zoom_box((10, 10, 90, 90), (100, 100)) == (0, 0, 100, 100)


def test_zoom_box_of_a_single_pixel():
    assert zoom_box((0, 0, 1, 1), (1, 1)) == (0, 0, 1, 1)
    assert zoom_box((40, 40, 41, 41), (81, 81)) == (24, 24, 57, 57)


@settings(max_examples=300, deadline=None)
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    corners=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
    margin=st.sampled_from([0.0, 0.3, 1.0, 2.5]),
)
def test_zoom_box_properties(width, height, corners, margin):
    xa, xb = sorted((int(corners[0] * (width - 1)), int(corners[1] * (width - 1))))
    ya, yb = sorted((int(corners[2] * (height - 1)), int(corners[3] * (height - 1))))
    mask_box = (xa, ya, xb + 1, yb + 1)
    x0, y0, x1, y1 = crop = zoom_box(mask_box, (width, height), margin)
    assert 0 <= x0 <= mask_box[0] and mask_box[2] <= x1 <= width  # inside the image, holds the box
    assert 0 <= y0 <= mask_box[1] and mask_box[3] <= y1 <= height
    long_side = max(editing.box_size(mask_box))
    side = long_side + 2 * max(int(np.ceil(margin * long_side)), MIN_CONTEXT_PX)
    assert editing.box_size(crop) == (min(side, width), min(side, height))  # square unless clamped
    # every side keeps the context floor, or reaches the image's edge
    for gap, edge in ((mask_box[0] - x0, x0), (x1 - mask_box[2], width - x1),
                      (mask_box[1] - y0, y0), (y1 - mask_box[3], height - y1)):
        assert gap >= MIN_CONTEXT_PX or edge == 0


# ---------------------------------------------------------------------------------------------
# should_zoom


def test_zoom_decision_threshold():
    size = (1000, 1000)
    just_under = (300, 300, 616, 616)  # 316² = 9.99% of the image, crop 948 < 1000
    just_over = (300, 300, 617, 617)  # 317² = 10.05%
    assert should_zoom(just_under, zoom_box(just_under, size), size, 0.1)
    assert not should_zoom(just_over, zoom_box(just_over, size), size, 0.1)
    assert not should_zoom(just_under, zoom_box(just_under, size), size, 0.05)  # configurable
    tiny = (500, 500, 510, 510)
    assert should_zoom(tiny, zoom_box(tiny, size), size, 0.1)


def test_no_zoom_when_the_crop_would_be_the_image():
    size = (1000, 1000)
    thin = (100, 500, 600, 510)  # 0.5% of the image, but its 1500 px crop fills the image
    assert not should_zoom(thin, zoom_box(thin, size), size, 0.1)
    small_image = (100, 100)
    box = (40, 40, 60, 60)  # 4%, crop 20 + 2·20 = 60 < 100: zoomed
    assert should_zoom(box, zoom_box(box, small_image), small_image, 0.1)
    box = (35, 35, 70, 70)  # 9.8%, crop 105 → the whole 100 px image: nothing gained
    assert not should_zoom(box, zoom_box(box, small_image), small_image, 0.1)


def test_edit_scale():
    assert editing.edit_scale((0, 0, 128, 64), 512) == 4.0
    assert editing.edit_scale((10, 0, 30, 10), 32) == 1.6


# ---------------------------------------------------------------------------------------------
# plan_regions


def blank(height, width):
    return np.zeros((height, width), np.uint8)


def test_zoom_off_is_one_whole_image_call():
    mask = blank(47, 65)
    mask[3:8, 4:9] = mask[30:40, 50:60] = 1
    (plan,) = plan_regions(mask, zoom="off")
    assert plan.crop_box == (0, 0, 65, 47) and not plan.zoomed and plan.components == 2
    assert plan.mask_box == (4, 3, 60, 40)
    np.testing.assert_array_equal(plan.crop_mask, mask.astype(bool))


def test_one_small_region_is_zoomed_on_its_box():
    mask = blank(480, 641)
    mask[200:230, 300:340] = 1  # 40×30 at the centre
    (plan,) = plan_regions(mask)
    assert plan.zoomed and plan.mask_box == (300, 200, 340, 230)
    assert plan.crop_box == zoom_box((300, 200, 340, 230), (641, 480)) == (260, 155, 380, 275)
    x0, y0, x1, y1 = plan.crop_box
    np.testing.assert_array_equal(plan.crop_mask, mask[y0:y1, x0:x1].astype(bool))


def test_a_large_region_keeps_the_release_edit():
    mask = blank(100, 120)
    mask[10:90, 20:100] = 1
    (plan,) = plan_regions(mask)
    assert not plan.zoomed and plan.crop_box == (0, 0, 120, 100)
    np.testing.assert_array_equal(plan.crop_mask, mask.astype(bool))


def test_disjoint_regions_are_zoomed_each_on_its_own():
    mask = blank(300, 401)
    mask[0:6, 0:9] = 1  # top-left corner
    mask[140:150, 200:212] = 1  # centre
    mask[290:300, 390:401] = 1  # bottom-right corner
    plans = plan_regions(mask)
    assert [plan.zoomed for plan in plans] == [True, True, True]
    assert [plan.crop_box for plan in plans] == [(0, 0, 41, 41), (184, 123, 228, 167), (358, 257, 401, 300)]
    for plan in plans:
        x0, y0, x1, y1 = plan.crop_box
        np.testing.assert_array_equal(plan.crop_mask, mask[y0:y1, x0:x1].astype(bool))


def test_regions_whose_zoom_boxes_overlap_are_merged_until_stable():
    mask = blank(2000, 2000)
    mask[1000:1010, 100:110] = 1  # A: zoom box x 84..126
    mask[1000:1010, 130:140] = 1  # B: zoom box x 114..156, overlaps A's
    mask[1000:1010, 180:190] = 1  # C: zoom box x 164..206, overlaps only the merged A+B box (60..180)
    (plan,) = plan_regions(mask)
    assert plan.zoomed and plan.components == 3 and plan.mask_box == (100, 1000, 190, 1010)
    assert plan.crop_box == (10, 870, 280, 1140)


def test_diagonal_pixels_are_one_component():
    mask = blank(200, 200)
    mask[100, 100] = mask[101, 101] = 1  # 8-connected
    (plan,) = plan_regions(mask)
    assert plan.components == 1 and plan.mask_box == (100, 100, 102, 102)


def test_a_large_region_and_a_far_small_one():
    mask = blank(400, 600)
    mask[0:300, 0:300] = 1  # 37.5%: whole image
    mask[380:390, 580:590] = 1  # small, far away: zoomed
    whole, zoomed = plan_regions(mask)
    assert not whole.zoomed and whole.crop_box == (0, 0, 600, 400) and whole.mask_box == (0, 0, 300, 300)
    assert not whole.crop_mask[380:390, 580:590].any()  # the whole-image call edits only its own region
    assert zoomed.zoomed and zoomed.crop_box == (558, 358, 600, 400)  # shifted into the corner


def test_a_small_region_next_to_a_large_one_joins_it():
    mask = blank(400, 600)
    mask[0:300, 0:300] = 1
    mask[310:315, 310:315] = 1  # its zoom box (294..331) reaches the large one's footprint (..316)
    (plan,) = plan_regions(mask)
    assert not plan.zoomed and plan.components == 2


def boxes_overlap(first, second):
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


@pytest.mark.parametrize("seed", range(12))
def test_random_masks_are_partitioned_into_disjoint_calls(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(40, 400, size=2)
    mask = blank(height, width)
    for _ in range(rng.integers(1, 12)):
        x, y = rng.integers(0, width), rng.integers(0, height)
        mask[y : y + rng.integers(1, 30), x : x + rng.integers(1, 30)] = 1
    plans = plan_regions(mask, margin=float(rng.choice([0.0, 0.5, 1.0])), threshold=float(rng.choice([0.05, 0.1, 0.5])))
    assert sum(not plan.zoomed for plan in plans) <= 1 and (plans[0].zoomed or plans[0].crop_box == (0, 0, width, height))
    covered = np.zeros((height, width), np.int32)
    for plan in plans:
        x0, y0, x1, y1 = plan.crop_box
        covered[y0:y1, x0:x1] += plan.crop_mask
        assert editing.tight_box(plan.crop_mask) == (
            plan.mask_box[0] - x0, plan.mask_box[1] - y0, plan.mask_box[2] - x0, plan.mask_box[3] - y0
        )
    np.testing.assert_array_equal(covered, mask)  # every masked pixel in exactly one call
    zoomed = [plan for plan in plans if plan.zoomed]
    whole_band = np.zeros((height, width), bool)
    if not plans[0].zoomed:
        whole_band = editing.feather_band(plans[0].crop_mask)
    for index, plan in enumerate(zoomed):
        for other in zoomed[index + 1 :]:
            assert not boxes_overlap(plan.crop_box, other.crop_box)
        # a zoomed crop holds no other call's masked pixels or feathered band
        x0, y0, x1, y1 = plan.crop_box
        assert not (mask[y0:y1, x0:x1].astype(bool) & ~plan.crop_mask).any()
        assert not whole_band[y0:y1, x0:x1].any()
        # no mask pixel within MIN_CONTEXT_PX of a crop edge that lies inside the image
        inner = np.zeros_like(plan.crop_mask)
        inner[MIN_CONTEXT_PX if y0 else 0 : -MIN_CONTEXT_PX if y1 < height else None,
              MIN_CONTEXT_PX if x0 else 0 : -MIN_CONTEXT_PX if x1 < width else None] = True
        assert not (plan.crop_mask & ~inner).any()


def test_many_specks():
    mask = blank(600, 800)
    mask[::30, ::40] = 1  # 20 × 20 = 400 isolated pixels: more than MAX_ZOOM_COMPONENTS
    with pytest.warns(UserWarning, match="400 separate parts"):
        (plan,) = plan_regions(mask)
    assert not plan.zoomed and plan.components == 400
    mask[300:, :] = 0  # 200 specks: zoom boxes (33 px) overlap down each column, then the columns' span the image
    (plan,) = plan_regions(mask)
    assert plan.components == 200 and plan.mask_box == (0, 0, 761, 271)


# ---------------------------------------------------------------------------------------------
# Feathering and paste-back


@pytest.mark.parametrize("seed", range(6))
def test_feather_stays_inside_the_band(seed):
    rng = np.random.default_rng(seed)
    mask = (rng.random((37, 53)) > 0.995).astype(np.uint8)
    mask[0, rng.integers(53)] = mask[rng.integers(37), -1] = 1  # touching borders
    alpha = imaging.feather_mask(mask)[:, :, 0]
    assert not alpha[~editing.feather_band(mask)].any()


@pytest.mark.parametrize(
    "crop_box",
    [(13, 7, 50, 44), (0, 0, 37, 37), (68, 36, 101, 73), (0, 40, 101, 73)],  # centre, corners, full width
)
def test_paste_back_is_bit_identical_outside_the_feathered_band(crop_box):
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, (73, 101, 3), dtype=np.uint8)  # odd sizes
    model_image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    x0, y0, x1, y1 = crop_box
    crop_mask = np.zeros((y1 - y0, x1 - x0), bool)
    crop_mask[:5, :6] = True  # touches the crop's top-left (an image corner for some boxes)
    crop_mask[-9:-3, -7:] = True
    pasted = editing.paste_edit(canvas, model_image, crop_box, crop_mask)
    full_mask = np.zeros(canvas.shape[:2], np.uint8)
    full_mask[y0:y1, x0:x1] = crop_mask
    outside = ~editing.feather_band(full_mask)
    assert np.array_equal(pasted[outside], canvas[outside])
    expected_crop = imaging.paste_back(model_image, canvas[y0:y1, x0:x1], crop_mask.astype(np.uint8))
    assert np.array_equal(pasted[y0:y1, x0:x1], expected_crop)
    assert (pasted[full_mask.astype(bool)] != canvas[full_mask.astype(bool)]).any()


# ---------------------------------------------------------------------------------------------
# Reference hint


def test_hint_box_forms():
    size = (100, 80)
    assert editing.hint_box((10, 20, 30, 60), size) == (10, 20, 30, 60)
    assert editing.hint_box("10,20,30,60", size) == (10, 20, 30, 60)
    hint_mask = np.zeros((80, 100), bool)
    hint_mask[25:31, 40:47] = True
    assert editing.hint_box(hint_mask, size) == (40, 25, 47, 31)
    assert editing.hint_box(PIL.Image.fromarray(hint_mask.astype(np.uint8) * 255), size) == (40, 25, 47, 31)
    with pytest.raises(InputError, match="outside"):
        editing.hint_box("10,20,130,60", size)
    with pytest.raises(InputError, match="empty"):
        editing.hint_box(np.zeros((80, 100), bool), size)


@pytest.mark.parametrize(
    "hint, margin, expected",
    [
        ((10, 20, 30, 60), 0.1, (6, 16, 34, 64)),  # context ceil(0.1 × 40) = 4
        ((10, 20, 30, 60), 0.0, (10, 20, 30, 60)),  # exactly the box
        ((0, 0, 10, 10), 0.1, (0, 0, 11, 11)),  # clipped at the top-left
        ((90, 70, 100, 80), 0.1, (89, 69, 100, 80)),  # clipped at the bottom-right
        ((45, 35, 55, 45), 3.0, (15, 5, 85, 75)),
    ],
)
def test_reference_crop_box(hint, margin, expected):
    assert editing.reference_crop_box(hint, (100, 80), margin) == expected


# ---------------------------------------------------------------------------------------------
# zoomed_edit with a stand-in pipeline


class SolidColourPipeline:
    """Returns a solid model image per call (colours 10, 20, ...) and records each call."""

    resolution = 32

    def __init__(self):
        self.calls = []

    def __call__(self, source_image, mask_image, reference_image=None, generator=None, **kwargs):
        colour = 10 * (len(self.calls) + 1)
        first_draw = None if generator is None else torch.rand(1, generator=generator).item()
        self.calls.append(dict(source=source_image, mask=mask_image, reference=reference_image,
                               first_draw=first_draw, **kwargs))
        model_image = PIL.Image.new("RGB", (self.resolution, self.resolution), (colour,) * 3)
        return SimpleNamespace(images=[None], model_images=[model_image], depth_images=[None])


@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, (241, 317, 3), dtype=np.uint8)
    reference = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    mask = np.zeros((241, 317), bool)  # (a uint8 mask array is read as 0..255)
    mask[0:24, 0:26] = True  # top-left corner
    mask[110:134, 150:176] = True  # centre
    mask[215:241, 290:317] = True  # bottom-right corner
    return source, mask, reference


def test_zoomed_edit_composes_each_region_at_the_source_size(scene):
    source, mask, reference = scene
    pipe = SolidColourPipeline()
    output = editing.zoomed_edit(pipe, source, mask, reference, num_inference_steps=3,
                                 generator=torch.Generator().manual_seed(0))
    edited = np.asarray(output.images[0])
    assert edited.shape == source.shape
    outside = ~editing.feather_band(mask)
    assert np.array_equal(edited[outside], source[outside])
    assert all(region.zoomed for region in output.regions)
    assert [region.crop_box for region in output.regions] == [(0, 0, 78, 78), (124, 83, 202, 161), (236, 160, 317, 241)]
    for index, (region, call) in enumerate(zip(output.regions, pipe.calls)):
        x0, y0, x1, y1 = region.crop_box
        assert np.array_equal(call["source"], source[y0:y1, x0:x1])
        assert np.array_equal(call["mask"], mask[y0:y1, x0:x1])
        assert call["zoom"] == "off" and call["num_inference_steps"] == 3
        assert call["reference"] is not None and call["reference"].shape == reference.shape
        assert region.model_resolution == 32 and region.scale == 32 / max(x1 - x0, y1 - y0)
        assert region.release_scale == 32 / 317
        # deep inside the region the blend weight is 1: the model's colour exactly
        region_mask = np.zeros(mask.shape, np.uint8)
        region_mask[y0:y1, x0:x1] = mask[y0:y1, x0:x1]
        core = cv2.erode(region_mask, np.ones((21, 21), np.uint8), borderType=cv2.BORDER_REPLICATE).astype(bool)
        assert core.any() and (edited[core] == 10 * (index + 1)).all()
    # each call starts from the same generator state: regions do not depend on each other
    assert len({call["first_draw"] for call in pipe.calls}) == 1
    assert len(output.model_images) == len(output.depth_images) == 3 and output.reference_box is None


def test_zoom_off_without_hint_is_the_plain_pipeline_call(scene):
    source, mask, reference = scene
    pipe = SolidColourPipeline()
    output = editing.zoomed_edit(pipe, source, mask, reference, zoom="off")
    (call,) = pipe.calls
    assert np.array_equal(call["source"], source) and np.array_equal(call["mask"], mask)
    assert np.array_equal(call["reference"], reference)
    assert np.array_equal(np.asarray(output.images[0]), imaging.paste_back(
        np.full((32, 32, 3), 10, np.uint8), source, mask.astype(np.uint8)))
    assert not output.regions[0].zoomed and output.regions[0].crop_box == (0, 0, 317, 241)


def test_reference_hint_crops_the_reference(scene):
    source, mask, reference = scene
    pipe = SolidColourPipeline()
    output = editing.zoomed_edit(pipe, source, mask, reference, "20,10,60,40", zoom="off")
    assert output.reference_box == (16, 6, 64, 44)  # context ceil(0.1 × 40) = 4
    assert np.array_equal(pipe.calls[0]["reference"], reference[6:44, 16:64])
    pipe = SolidColourPipeline()
    editing.zoomed_edit(pipe, source, mask, reference, (20, 10, 60, 40), reference_margin=0.0)
    assert all(np.array_equal(call["reference"], reference[10:40, 20:60]) for call in pipe.calls)


def test_mask_as_a_box_string_and_no_reference(scene):
    source, _, _ = scene
    pipe = SolidColourPipeline()
    output = editing.zoomed_edit(pipe, source, "90,60,110,80")
    (region,) = output.regions
    assert region.zoomed and region.mask_box == (90, 60, 110, 80) and pipe.calls[0]["reference"] is None


def test_input_errors(scene):
    source, mask, reference = scene
    pipe = SolidColourPipeline()
    with pytest.raises(InputError, match="needs a reference"):
        editing.zoomed_edit(pipe, source, mask, None, "1,1,5,5")
    with pytest.raises(InputError, match="zoom must be"):
        editing.zoomed_edit(pipe, source, mask, reference, zoom="on")
    with pytest.raises(InputError, match="margin"):
        editing.zoomed_edit(pipe, source, mask, reference, margin=-1)
    with pytest.raises(InputError, match="threshold"):
        editing.zoomed_edit(pipe, source, mask, reference, threshold=0)
    with pytest.raises(InputError, match="empty"):
        editing.zoomed_edit(pipe, source, np.zeros_like(mask), reference)
    assert pipe.calls == []


def test_describe_regions(scene):
    source, mask, reference = scene
    output = editing.zoomed_edit(SolidColourPipeline(), source, mask, reference, "20,10,60,40")
    lines = editing.describe_regions(output)
    assert len(lines) == 4
    assert lines[0] == ("region 1 (1 part, mask box 0,0,26,24): zoomed on 0,0,78,78 (78×78 px) edited at "
                        "32×32, 0.41 model px per source px (without zoom 0.10)")
    assert lines[-1] == "reference: cropped to 16,6,64,44 (hint plus context)"


def test_cli_options():
    from mimicbrush.cli import options

    parser = argparse.ArgumentParser()
    options.add_editing_arguments(parser)
    defaults = options.editing_options(parser.parse_args([]))
    assert defaults == {"zoom": "off", "margin": editing.DEFAULT_ZOOM_MARGIN,
                        "threshold": editing.DEFAULT_ZOOM_THRESHOLD, "reference_box": None}
    args = parser.parse_args(["--zoom", "auto", "--zoom-margin", "0.5", "--zoom-threshold", "0.2",
                              "--reference-box", "1,2,3,4"])
    assert options.editing_options(args) == {"zoom": "auto", "margin": 0.5, "threshold": 0.2, "reference_box": "1,2,3,4"}
