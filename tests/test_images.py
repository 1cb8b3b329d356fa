"""trainer.images: sample grids and scatters as uint8 pictures."""

import numpy as np

from trainer import images


def test_grid_tiles_rows_with_borders_and_scales_values():
  tiles = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0, 1.0)])
  picture = images.grid(tiles, rows=2, scale=2)
  assert picture.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 1) and picture.dtype == np.uint8
  assert picture[1, 1, 0] == 0 and picture[1, 8, 0] == 127 and picture[6, 1, 0] == 255  # tiles 0, 1, 2
  assert picture[0, 0, 0] == 128 and picture[5, 3, 0] == 128  # borders


def test_scatter_puts_points_where_they_are_and_marks_the_centers():
  picture = images.scatter(np.array([[1.0, 1.0]]), np.array([[0.0, 0.0]]), extent=2.0, size=101)
  assert picture.shape == (101, 101, 3) and picture.dtype == np.uint8
  assert tuple(picture[100 - 75, 75]) == (20, 40, 160)  # (1, 1) is 3/4 of the way right and up
  assert tuple(picture[50, 50]) == (170, 170, 170)  # the centre's cross
  assert tuple(picture[0, 0]) == (255, 255, 255)
