"""Clip bytes → the backbone's input tensor, on the server (in a decoder process or a worker thread, never on the
event loop)."""

from __future__ import annotations

import logging

import numpy as np

from vpetl.errors import InvalidVideo, VpetlError
from vpetl.protocol import InputSpec
from vpetl.video import DEFAULT_LIMITS, VideoLimits, load_clip

logger = logging.getLogger(__name__)


def decode_clip(data: bytes, spec: InputSpec, limits: VideoLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode + sample + preprocess exactly as the backbone's InputSpec says: (C, T, H, W) float32.

    ``/predict`` runs this in a decoder process (server/decode_pool.py) with its own tighter ``limits``."""
    if not data:
        raise InvalidVideo("the clip is empty (0 bytes)")
    try:
        return load_clip(data, spec, limits=limits)
    except VpetlError:
        raise
    except (RuntimeError, ValueError, IndexError, EOFError, OSError) as e:
        # load_clip maps decoder failures to InvalidVideo; this is the net for one it did not foresee
        logger.warning("decoder raised %s for an upload; answered invalid_video", type(e).__name__)
        raise InvalidVideo(f"the clip could not be decoded ({type(e).__name__})") from e
