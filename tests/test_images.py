"""trainer.tasks.images: sample grids and scatters as uint8 pictures."""

import numpy as np

from trainer.tasks import images


def test_grid_tiles_rows_with_borders_and_scales_values():
  tiles = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.5, 1.0, 2.0)])
  picture = images.grid(tiles, rows=2, scale=2)
  assert picture.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 1) and picture.dtype == np.uint8
  assert picture[1, 1, 0] == 0 and picture[4, 13, 0] == 191  # tile 0 (-1), tile 1 (0.5): its far corner
  assert picture[6, 1, 0] == 255 and picture[9, 13, 0] == 255  # tile 2 (1), tile 3 (2, clipped)
  assert picture[0, 0, 0] == 128 and picture[5, 3, 0] == 128 and picture[2, 7, 0] == 128  # borders: top, middle
  assert picture[10, 3, 0] == 128 and picture[2, 14, 0] == 128  # bottom, right


def test_grid_takes_values_in_zero_one_and_leaves_missing_tiles_grey():
  tiles = np.stack([np.full((1, 1, 3), v, np.float32) for v in (0.0, 0.5, 1.0)])
  picture = images.grid(tiles, rows=2, scale=1, value_range=(0.0, 1.0))
  assert picture.shape == (5, 5, 3)
  assert list(picture[1, 1]) == [0] * 3 and list(picture[1, 3]) == [128] * 3 and list(picture[3, 1]) == [255] * 3
  assert list(picture[3, 3]) == [128] * 3  # the 4th place of a 2 x 2 grid holds no image


def test_scatter_puts_points_where_they_are_and_marks_the_centers():
  picture = images.scatter(np.array([[1.0, 1.0], [5.0, 0.0]]), np.array([[0.0, 0.0]]), extent=2.0, size=101)
  assert picture.shape == (101, 101, 3) and picture.dtype == np.uint8
  assert tuple(picture[100 - 75, 75]) == (20, 40, 160)  # (1, 1) is 3/4 of the way right and up
  assert tuple(picture[50, 50]) == (170, 170, 170) and tuple(picture[50, 54]) == (170, 170, 170)  # the cross
  assert tuple(picture[50, 55]) == (255, 255, 255) and tuple(picture[0, 0]) == (255, 255, 255)
  assert int(np.sum(np.any(picture != 255, axis=2))) == 17 + 1  # the cross and one dot: (5, 0) is off the picture
