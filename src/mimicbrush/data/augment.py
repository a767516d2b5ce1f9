"""Strong augmentation of one image onto an S×S canvas, with the geometry as a homography.

Coordinates are pixel centres (OpenCV's convention): pixel (x, y) of the input lands on
`warp_points([[x, y]], homography)` of the output, so keypoints and masks can follow an image
through its augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .config import AugmentConfig

_BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}


@dataclass(frozen=True)
class Augmented:
    image: np.ndarray  # S×S×3 uint8
    homography: np.ndarray  # 3×3, input pixel coordinates -> output pixel coordinates


def augment(image: np.ndarray, size: int, config: AugmentConfig, rng: np.random.Generator, *,
            colour: bool = True) -> Augmented:
    """Geometry, then (unless `colour` is off: the pair shares one jitter) the colour jitter."""
    homography = sample_homography(image.shape[1], image.shape[0], size, config, rng)
    warped = warp_image(image, homography, size, border=config.border)
    if colour and rng.random() < config.color_p:
        warped = jitter_colour(warped, config, rng)
    return Augmented(warped, homography)


def pair_colour(images: list[np.ndarray], config: AugmentConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """The same colour jitter (with `shared_color`) and the same remap (with probability
    `pair_remap_p`) on every image of a pair: both get identical draws."""
    seed = int(rng.integers(2**63))
    jitter = config.shared_color and rng.random() < config.color_p
    remap = rng.random() < config.pair_remap_p
    out = []
    for image in images:
        local = np.random.default_rng(seed)
        if jitter:
            image = jitter_colour(image, config, local)
        if remap:
            image = remap_colours(image, local)
        out.append(image)
    return out


def remap_colours(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random hue turn, then a random channel order, then inversion with probability ¼."""
    hsv = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(0.0, 360.0)) % 360.0
    pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[..., rng.permutation(3)]
    if rng.random() < 0.25:
        pixels = 1.0 - pixels
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def sample_homography(width: int, height: int, size: int, config: AugmentConfig,
                      rng: np.random.Generator) -> np.ndarray:
    """Random resized crop, then horizontal flip, rotation and perspective on the canvas."""
    homography = _crop_to_canvas(width, height, size, config, rng)
    centre = (size - 1) / 2
    if rng.random() < config.flip_p:
        homography = _translate(centre, centre) @ np.diag([-1.0, 1.0, 1.0]) @ _translate(-centre, -centre) @ homography
    angle = rng.uniform(-config.rotation, config.rotation)
    rotation = np.vstack([cv2.getRotationMatrix2D((centre, centre), angle, 1.0), [0.0, 0.0, 1.0]])
    homography = rotation @ homography
    if rng.random() < config.perspective_p:
        homography = _perspective(size, config.perspective, rng) @ homography
    return homography


def _crop_to_canvas(width: int, height: int, size: int, config: AugmentConfig,
                    rng: np.random.Generator) -> np.ndarray:
    # area as a fraction of the image, aspect ratio log-uniform; clamped to fit the image
    area = rng.uniform(*config.crop_scale) * width * height
    ratio = np.exp(rng.uniform(np.log(config.crop_ratio[0]), np.log(config.crop_ratio[1])))
    crop_width = min(float(width), np.sqrt(area * ratio))
    crop_height = min(float(height), np.sqrt(area / ratio))
    left = rng.uniform(0, width - crop_width)
    top = rng.uniform(0, height - crop_height)
    # the crop's outer edges (pixel centre - 0.5) map onto the canvas's outer edges
    return (_translate(-0.5, -0.5) @ np.diag([size / crop_width, size / crop_height, 1.0])
            @ _translate(0.5 - left, 0.5 - top))


def _perspective(size: int, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Move each canvas corner inwards by up to `strength` of half the canvas (as torchvision)."""
    low, high = -0.5, size - 0.5
    corners = np.array([[low, low], [high, low], [high, high], [low, high]], dtype=np.float32)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=np.float32)
    shifts = rng.uniform(0, strength * size / 2, size=(4, 2)).astype(np.float32)
    return cv2.getPerspectiveTransform(corners, corners + inward * shifts).astype(np.float64)


def _translate(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


def warp_image(image: np.ndarray, homography: np.ndarray, size: int, *, border: str = "reflect",
               nearest: bool = False) -> np.ndarray:
    """The image seen through `homography` on an S×S canvas.

    Strong downscaling first goes through an area resize, since bilinear warping alone would
    alias (a 768-px frame onto a 64-px canvas). `nearest` is for masks and label maps.
    """
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    mode = cv2.BORDER_CONSTANT if nearest else _BORDERS[border]
    if not nearest:
        factor = min(1.0, 2.0 / _input_pixels_per_output_pixel(homography, size))
        if factor < 1.0:
            height, width = image.shape[:2]
            small_size = (max(1, round(width * factor)), max(1, round(height * factor)))
            image = cv2.resize(image, small_size, interpolation=cv2.INTER_AREA)
            homography = homography @ np.linalg.inv(resize_homography(small_size[0] / width, small_size[1] / height))
    return cv2.warpPerspective(image, homography, (size, size), flags=flags, borderMode=mode)


def _input_pixels_per_output_pixel(homography: np.ndarray, size: int) -> float:
    centre = (size - 1) / 2
    probes = np.array([[centre, centre], [centre + 1, centre], [centre, centre + 1]])
    back = warp_points(probes, np.linalg.inv(homography))
    return float(np.mean(np.linalg.norm(back[1:] - back[0], axis=1)))


def resize_homography(scale_x: float, scale_y: float) -> np.ndarray:
    """Where cv2.resize by these factors puts pixel centres: x' = (x + 0.5) * scale - 0.5."""
    return _translate(-0.5, -0.5) @ np.diag([scale_x, scale_y, 1.0]) @ _translate(0.5, 0.5)


def shrink(augmented: Augmented, size: int) -> Augmented:
    """The same augmentation on a smaller canvas (area resize, homography updated)."""
    current = augmented.image.shape[0]
    if current == size:
        return augmented
    image = cv2.resize(augmented.image, (size, size), interpolation=cv2.INTER_AREA)
    return Augmented(image, resize_homography(size / current, size / current) @ augmented.homography)


def warp_points(points: np.ndarray, homography: np.ndarray) -> np.ndarray:
    """N×2 points through a 3×3 homography."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    projected = np.hstack([points, np.ones((len(points), 1))]) @ homography.T
    return projected[:, :2] / projected[:, 2:3]


def jitter_colour(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter in random order (torchvision's semantics)."""
    pixels = image.astype(np.float32) / 255.0
    for operation in rng.permutation(4):
        if operation == 0 and config.brightness > 0:
            pixels = pixels * rng.uniform(1 - config.brightness, 1 + config.brightness)
        elif operation == 1 and config.contrast > 0:
            mean = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY).mean()
            pixels = (pixels - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
        elif operation == 2 and config.saturation > 0:
            grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)[..., None]
            pixels = (pixels - grey) * rng.uniform(1 - config.saturation, 1 + config.saturation) + grey
        elif operation == 3 and config.hue > 0:
            hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)  # float input: hue in degrees
            hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-config.hue, config.hue)) % 360.0
            pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        pixels = np.clip(pixels, 0.0, 1.0)
    return np.round(pixels * 255.0).astype(np.uint8)
