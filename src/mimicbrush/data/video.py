"""Video clips: folders of frames or video files (decoded with PyAV), found by scan or manifest."""

from __future__ import annotations

import bisect
import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InputError
from .images import IMAGE_EXTENSIONS, read_rgb

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})


class Clip:
    """A sequence of frames; `key` identifies it in the SSIM cache."""

    key: str

    @property
    def frame_count(self) -> int:
        raise NotImplementedError

    def read_frames(self, indices: list[int]) -> list[np.ndarray]:
        """RGB uint8 frames, in the order of `indices`."""
        raise NotImplementedError

    def label_map_path(self, segments: Path, index: int) -> Path:
        """Where frame `index`'s label map lies under a clips' segments folder."""
        raise NotImplementedError


class FrameFolderClip(Clip):
    def __init__(self, folder: Path, frames: list[Path]):
        self.key = str(folder)
        self.folder = folder
        self.frames = frames

    @property
    def frame_count(self) -> int:
        return len(self.frames)

    def read_frames(self, indices: list[int]) -> list[np.ndarray]:
        return [read_rgb(self.frames[index]) for index in indices]

    def label_map_path(self, segments: Path, index: int) -> Path:
        return segments / self.frames[index].parent.name / f"{self.frames[index].stem}.png"


class VideoFileClip(Clip):
    """Frame i is the i-th frame in presentation order; reads seek to the nearest keyframe."""

    def __init__(self, path: Path):
        self.key = str(path)
        self.path = path
        self._timestamps: list[int] | None = None  # presentation timestamps, sorted
        self._keyframes: list[int] | None = None

    @property
    def frame_count(self) -> int:
        self._index()
        return len(self._timestamps)

    def label_map_path(self, segments: Path, index: int) -> Path:
        return segments / self.path.stem / f"{index:05d}.png"

    def _index(self) -> None:
        # demuxing reads packet headers only, so indexing a clip costs milliseconds
        if self._timestamps is not None:
            return
        av = _import_av()
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None]
        except (av.error.FFmpegError, IndexError) as error:
            raise InputError(f"cannot read video {self.path}: {error}") from error
        self._timestamps = sorted(pts for pts, _ in packets)
        self._keyframes = sorted(pts for pts, is_key in packets if is_key) or self._timestamps[:1]

    def read_frames(self, indices: list[int]) -> list[np.ndarray]:
        av = _import_av()
        self._index()
        wanted = sorted({self._timestamps[index] for index in indices})
        decoded: dict[int, np.ndarray] = {}
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                frames = None
                last_pts = None
                for target in wanted:
                    keyframe = self._keyframes[max(0, bisect.bisect_right(self._keyframes, target) - 1)]
                    if frames is None or last_pts is None or keyframe > last_pts:
                        container.seek(keyframe, stream=stream, backward=True)
                        frames = container.decode(stream)
                    for frame in frames:
                        last_pts = frame.pts
                        if frame.pts == target:
                            decoded[target] = frame.to_ndarray(format="rgb24")
                            break
                        if frame.pts is not None and frame.pts > target:
                            break
        except av.error.FFmpegError as error:
            raise InputError(f"cannot decode video {self.path}: {error}") from error
        missing = [pts for pts in wanted if pts not in decoded]
        if missing:
            raise InputError(f"cannot decode video {self.path}: no frame with timestamp {missing[0]}")
        return [decoded[self._timestamps[index]] for index in indices]


def _import_av():
    # PyAV is an optional dependency: only video files need it, frame folders do not
    try:
        import av
    except ImportError:
        raise InputError("reading video files needs PyAV: pip install 'mimicbrush[video]'") from None
    return av


def list_clips(roots: tuple[Path, ...], manifest: Path | None, where: str) -> list[Clip]:
    """Clips from scanning `roots` and from `manifest`, in a stable order."""
    clips: list[Clip] = []
    for index, root in enumerate(roots):
        if not root.is_dir():
            raise ConfigError(f"{where}.roots[{index}]: folder not found: {root}")
        clips.extend(scan_clips(root))
    if manifest is not None:
        clips.extend(read_manifest(manifest, f"{where}.manifest"))
    return clips


def scan_clips(root: Path) -> list[Clip]:
    """Every folder holding at least two images is a clip, and so is every video file."""
    clips: list[Clip] = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        folder_path = Path(folder)
        clip = _frame_folder_clip(folder_path, sorted(files, key=natural_key))
        if clip is not None:
            clips.append(clip)
        clips.extend(VideoFileClip(folder_path / name) for name in sorted(files)
                     if Path(name).suffix.lower() in VIDEO_EXTENSIONS)
    return clips


def read_manifest(path: Path, where: str) -> list[Clip]:
    """A text file with one clip path per line (`#` starts a comment), or a JSON list of paths;
    relative paths are taken from the manifest's folder."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{where}: cannot read manifest {path}: {error.strerror}") from error
    if path.suffix.lower() == ".json":
        try:
            entries = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{where}: {path} is not valid JSON ({error})") from error
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise ConfigError(f"{where}: {path} must hold a JSON list of paths")
    else:
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    clips: list[Clip] = []
    for entry in filter(None, entries):
        clip_path = (path.parent / Path(entry).expanduser()).resolve()
        if clip_path.is_dir():
            clip = _frame_folder_clip(clip_path, sorted((p.name for p in clip_path.iterdir()), key=natural_key))
            if clip is None:
                raise ConfigError(f"{where}: {clip_path} holds fewer than two frames")
            clips.append(clip)
        elif clip_path.is_file() and clip_path.suffix.lower() in VIDEO_EXTENSIONS:
            clips.append(VideoFileClip(clip_path))
        else:
            raise ConfigError(f"{where}: {entry!r} is neither a frame folder nor a video file ({clip_path})")
    return clips


def _frame_folder_clip(folder: Path, names: list[str]) -> FrameFolderClip | None:
    frames = [folder / name for name in names if Path(name).suffix.lower() in IMAGE_EXTENSIONS]
    return FrameFolderClip(folder, frames) if len(frames) >= 2 else None


def natural_key(name: str) -> list[object]:
    """Sort key that puts frame_9 before frame_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
