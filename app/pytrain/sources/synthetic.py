"""Make small, real H.264 mp4 datasets whose classes a tiny model can tell apart.

Used by ``pytrain demo`` (when no ``--sources`` is given) and by the tests. Each class has its own
colour and motion direction (a bright square moving across a tinted, noisy background); subclasses
of a class share both and differ in speed and square size, so merging subclasses by the text before
the first underscore gives a learnable class.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# class -> (background RGB, direction (dy, dx) of the moving square)
_CLASS_LOOKS: dict[str, tuple[tuple[int, int, int], tuple[int, int]]] = {
    "cooking": ((200, 60, 40), (0, 1)),
    "drinking": ((40, 90, 210), (1, 0)),
    "eating": ((50, 180, 60), (0, -1)),
    "pouring": ((200, 190, 40), (-1, 0)),
    "walking": ((150, 60, 180), (1, 1)),
    "sleeping": ((90, 90, 90), (1, -1)),
}

DEMO_FOLDERS = (
    "cooking_cuttingbread",
    "cooking_peelingpotatoes",
    "drinking_water",
    "drinking_coffee",
    "eating_soup",
    "walking_dog",
)


@dataclass(frozen=True)
class ClipStyle:
    """How one synthetic clip looks.

    Attributes:
        background: RGB uint8 background tint.
        direction: ``(dy, dx)`` unit steps of the moving square per frame.
        speed: pixels moved per frame.
        square: side of the square, pixels.
    """

    background: tuple[int, int, int]
    direction: tuple[int, int]
    speed: int
    square: int


def style_for(folder: str, variant: int) -> ClipStyle:
    """The style of clip ``variant`` of folder ``<class>_<subclass>`` (unknown classes get a hashed look)."""
    cls, _, sub = folder.partition("_")
    if cls in _CLASS_LOOKS:
        background, direction = _CLASS_LOOKS[cls]
    else:
        seed = sum(ord(c) for c in cls)
        r = np.random.default_rng(seed)
        background = tuple(int(v) for v in r.integers(30, 225, size=3))
        direction = ((seed % 3) - 1, ((seed // 3) % 3) - 1) if seed % 9 != 4 else (1, 1)
    sub_seed = sum(ord(c) for c in sub)
    return ClipStyle(background, direction, speed=2 + (sub_seed + variant) % 3, square=8 + (sub_seed % 3) * 2)


def render_frames(style: ClipStyle, *, num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Render a clip.

    Returns:
        ``(num_frames, height, width, 3)`` uint8 RGB.
    """
    rng = np.random.default_rng(seed)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    y = int(rng.integers(0, max(1, height - style.square)))
    x = int(rng.integers(0, max(1, width - style.square)))
    background = np.array(style.background, dtype=np.int16)
    for t in range(num_frames):
        noise = rng.integers(-20, 21, size=(height, width, 3), dtype=np.int16)
        frame = np.clip(background + noise, 0, 255).astype(np.uint8)
        yy = (y + t * style.speed * style.direction[0]) % max(1, height - style.square)
        xx = (x + t * style.speed * style.direction[1]) % max(1, width - style.square)
        frame[yy : yy + style.square, xx : xx + style.square] = 255
        frames[t] = frame
    return frames


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = 15) -> Path:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames as H.264 (yuv420p) mp4 with PyAV.

    Height and width must be even (yuv420p). The file is written to a temporary name first and
    renamed, so a half-written mp4 never appears under its final name.
    """
    import av  # PyAV bundles FFmpeg: no system ffmpeg needed

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial.mp4")
    t, h, w, _ = frames.shape
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return path


def make_dataset(
    root: Path,
    *,
    folders: tuple[str, ...] = DEMO_FOLDERS,
    clips_per_folder: int = 10,
    height: int = 64,
    width: int = 64,
    frame_counts: tuple[int, ...] = (24, 30, 36),
    fps_choices: tuple[int, ...] = (12, 15, 25),
    seed: int = 0,
) -> Path:
    """Write ``root/<folder>/clip_XXX.mp4`` for every folder; existing files are kept.

    Args:
        root: the dataset folder (``sources/<dataset>``).
        folders: ``<class>_<subclass>`` folder names.
        clips_per_folder: mp4 files per folder.
        height, width: frame size in pixels (even).
        frame_counts: clip lengths to cycle through, in frames.
        fps_choices: frame rates to cycle through.
        seed: makes the dataset reproducible.

    Returns:
        ``root``.
    """
    root = Path(root)
    for f_index, folder in enumerate(folders):
        for i in range(clips_per_folder):
            path = root / folder / f"clip_{i:03d}.mp4"
            if path.exists():
                continue
            frames = render_frames(
                style_for(folder, i),
                num_frames=frame_counts[i % len(frame_counts)],
                height=height,
                width=width,
                seed=seed * 100_003 + f_index * 1009 + i,
            )
            write_mp4(path, frames, fps=fps_choices[(i + f_index) % len(fps_choices)])
    return root
