"""Shared test setup: 4 logical CPU devices (before TF starts), and a clean gin config for every test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gin  # noqa: E402
import pytest  # noqa: E402

from trainer.strategy import split_cpu  # noqa: E402

split_cpu(4)  # logical devices can only be configured before the TF runtime starts


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()
