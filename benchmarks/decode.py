"""Decode benchmark: clips/s of decode + sample + preprocess (16-frame clips), decord (vpetl.video) vs PyAV.

    python benchmarks/decode.py [--full] [--json]

Both readers feed the same preprocessing (short side → 256, centre crop 224, normalise; or the training
multi-scale crop), so the ratio isolates decoding. Runs alternate A and B; each figure is the median of the runs
with the spread (min–max). The last rows time the torch data loader (training augmentation) with 0 and 2 workers.
Test clips are synthetic 320×240 mp4 files (libx264), written to a temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vpetl import video as V  # noqa: E402
from vpetl.data.synth import render_clip, write_mp4  # noqa: E402
from vpetl.protocol import InputSpec  # noqa: E402

SPEC = InputSpec(num_frames=16, sampling_rate=4, size=224)


def make_clips(root: Path, count: int, frames: tuple[int, int]) -> list[Path]:
    """``count`` 320×240 clips (HMDB-like size) of a random length in ``frames``."""
    paths = []
    for i in range(count):
        square = render_clip("appearance", i % 8, i, seed=0, size=240, frames=frames)
        video = V.resize(square, 240, 320)  # (T, 240, 320, 3)
        path = root / f"clip_{i:03d}.mp4"
        write_mp4(path, video, fps=30)
        paths.append(path)
    return paths


def pyav_clip(path: Path, spec: InputSpec, train: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
    """PyAV baseline: decode sequentially up to the last needed frame, keep the sampled ones, same preprocessing."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        count = stream.frames
        indices = V.sample_indices(count, spec.num_frames, sampling=spec.sampling, sampling_rate=spec.sampling_rate,
                                   train=train, rng=rng)
        wanted = set(indices.tolist())
        kept: dict[int, np.ndarray] = {}
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
            if i >= indices.max():
                break
    frames = np.stack([kept[i] for i in indices])  # (T, H, W, 3)
    return V.preprocess(frames, spec, train=train, rng=rng)


def clips_per_second(fn: Callable[[Path], np.ndarray], paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return len(paths) / (time.perf_counter() - start)


def alternate(a: Callable[[Path], np.ndarray], b: Callable[[Path], np.ndarray], paths: list[Path],
              runs: int) -> tuple[list[float], list[float]]:
    clips_per_second(a, paths[:2])  # warm-up (imports, codec init)
    clips_per_second(b, paths[:2])
    ra, rb = [], []
    for _ in range(runs):
        ra.append(clips_per_second(a, paths))
        rb.append(clips_per_second(b, paths))
    return ra, rb


def loader_rate(paths: list[Path], workers: int, runs: int) -> list[float]:
    import torch

    from vpetl.data.loader import make_loader
    from vpetl.data.readers import ClipItem, VideoDataset

    torch.set_num_threads(2)
    # 4 passes over the clips per epoch, so forking the workers is not most of what is timed
    items = [ClipItem(p, i % 8) for i, p in enumerate(paths)] * 4
    dataset = VideoDataset(items, [str(i) for i in range(8)])
    loader = make_loader(dataset, SPEC, batch_size=8, train=True, num_workers=workers, seed=0)
    rates = []
    for epoch in range(runs):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        count = sum(len(labels) for _, labels in loader)
        rates.append(count / (time.perf_counter() - start))
    return rates


def summary(name: str, rates: list[float]) -> dict[str, object]:
    return {"name": name, "clips_per_s": round(statistics.median(rates), 2),
            "min": round(min(rates), 2), "max": round(max(rates), 2), "runs": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more and longer clips, more runs")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    count, frames, runs = (32, (90, 150), 7) if args.full else (12, (64, 80), 5)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="vpetl-bench-") as tmp:
        paths = make_clips(Path(tmp), count, frames)
        for train in (False, True):
            mode = "train (multi-scale crop)" if train else "test (resize 256 + centre crop)"
            seeds = iter(range(10**6))
            a, b = alternate(lambda p, t=train, s=seeds: V.load_clip(p, SPEC, train=t, rng=next(s)),
                             lambda p, t=train, s=seeds: pyav_clip(p, SPEC, t, np.random.default_rng(next(s))),
                             paths, runs)
            rows.append(summary(f"decord  {mode}", a))
            rows.append(summary(f"PyAV    {mode}", b))
            rows[-2]["ratio_vs_pyav"] = round(statistics.median(a) / statistics.median(b), 2)
        for workers in (0, 2):
            rows.append(summary(f"loader  train, batch 8, {workers} workers", loader_rate(paths, workers, runs)))
    meta = {"command": "python benchmarks/decode.py" + (" --full" if args.full else ""), "cpus": os.cpu_count(),
            "clips": count, "frames_per_clip": list(frames), "clip_size": "320x240", "spec": SPEC.model_dump()}
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"{meta['command']}  ({meta['cpus']} CPUs; {count} clips of {frames[0]}-{frames[1]} frames, 320x240; "
          f"16 frames at stride 4 -> 3x16x224x224)")
    print(f"{'what':<50} {'clips/s':>9} {'min':>8} {'max':>8} {'vs PyAV':>8}")
    for row in rows:
        ratio = f"{row['ratio_vs_pyav']:.2f}x" if "ratio_vs_pyav" in row else ""
        print(f"{row['name']:<50} {row['clips_per_s']:>9.1f} {row['min']:>8.1f} {row['max']:>8.1f} {ratio:>8}")


if __name__ == "__main__":
    main()
