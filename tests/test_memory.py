"""service.limits.memory: Pillow's block cache is on, bounded, and changes no pixel."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import SHARED_DIR
from PIL import Image

from servable.images import preprocess_image
from servable.preprocessing import Preprocessing
from service.limits.memory import (
    PILLOW_BLOCK_BYTES,
    PILLOW_BLOCKS_PER_DECODE_THREAD,
    configure_pillow,
    pillow_cache_blocks,
    pillow_cache_bytes,
)

PHOTO = SHARED_DIR / "data" / "photos" / "chelsea.jpg"
IMAGENET = Preprocessing(resize_size=256, crop_size=224)


@pytest.fixture
def pillow_defaults() -> Iterator[None]:
    """The test process's Pillow allocator as it was (the service sets it once, at start)."""
    blocks_max, block_size = Image.core.get_blocks_max(), Image.core.get_block_size()
    try:
        yield
    finally:
        Image.core.set_blocks_max(blocks_max)
        Image.core.set_block_size(block_size)


@pytest.mark.parametrize(("decode_threads", "blocks"), [(0, 8), (1, 8), (2, 16), (16, 128)])
def test_the_cache_is_bounded_by_the_decode_threads(decode_threads: int, blocks: int) -> None:
    assert pillow_cache_blocks(decode_threads) == blocks
    assert pillow_cache_bytes(decode_threads) == blocks * PILLOW_BLOCK_BYTES


@pytest.mark.usefixtures("pillow_defaults")
@pytest.mark.parametrize("size", [(500, 375), (2048, 1536)])
def test_decodes_reuse_freed_blocks_and_give_the_same_pixels(size: tuple[int, int]) -> None:
    if not PHOTO.exists():
        pytest.skip(f"{PHOTO} is absent (../shared)")
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize(size).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    Image.core.set_blocks_max(0)
    exact = preprocess_image(data, IMAGENET)

    kept = configure_pillow(2)
    assert kept == pillow_cache_bytes(2)
    assert Image.core.get_blocks_max() == pillow_cache_blocks(2) == 2 * PILLOW_BLOCKS_PER_DECODE_THREAD
    assert Image.core.get_block_size() == PILLOW_BLOCK_BYTES
    preprocess_image(data, IMAGENET)  # fills the cache
    before = Image.core.get_stats()
    for _ in range(5):
        np.testing.assert_array_equal(preprocess_image(data, IMAGENET), exact)
    after = Image.core.get_stats()
    # Decode, the resize's intermediate, the resized image and the crop: every block came from the cache.
    assert after["reused_blocks"] - before["reused_blocks"] >= 5 * 4
    assert after["allocated_blocks"] == before["allocated_blocks"]
    assert after["blocks_cached"] <= Image.core.get_blocks_max()
