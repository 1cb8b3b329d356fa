"""Pictures without a plotting library: sample grids and 2-D scatters as uint8 arrays (encoded to PNG elsewhere)."""

import numpy as np


def grid(images: np.ndarray, rows: int, scale: int = 4, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
  """Tiles images [n, h, w, c] into `rows` rows with grey 1-px borders, each pixel upscaled to `scale` x `scale`.

  Values in `value_range` ((-1, 1) as the GANs draw them, or (0, 1)) map to 0..255; values outside are clipped.
  Returns uint8 [H, W, c].
  """
  n, h, w, c = images.shape
  cols = -(-n // rows)
  low, high = value_range
  pixels = np.clip(np.round((np.asarray(images, np.float32) - low) / (high - low) * 255), 0, 255).astype(np.uint8)
  pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
  h, w = h * scale, w * scale
  canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 128, np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = pixels[i]
  return canvas


def scatter(points: np.ndarray, centers: np.ndarray, extent: float, size: int = 256) -> np.ndarray:
  """Points [n, 2] as dark dots over grey crosses at `centers` [m, 2], on a white square [-extent, extent]^2.

  Returns uint8 [size, size, 3]; y points up.
  """
  canvas = np.full((size, size, 3), 255, np.uint8)
  to_pixel = lambda xy: np.round((np.asarray(xy) + extent) / (2 * extent) * (size - 1)).astype(int)
  for cx, cy in to_pixel(centers):
    for d in range(-4, 5):
      for x, y in ((cx + d, cy), (cx, cy + d)):
        if 0 <= x < size and 0 <= y < size:
          canvas[size - 1 - y, x] = (170, 170, 170)
  xy = to_pixel(points)
  inside = np.all((xy >= 0) & (xy < size), axis=1)
  canvas[size - 1 - xy[inside, 1], xy[inside, 0]] = (20, 40, 160)
  return canvas
