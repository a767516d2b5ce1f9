"""Video clips (frame folders, PyAV-decoded files, manifests) and SSIM-band pair sampling."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimicbrush.data import ssim
from mimicbrush.data.config import VideoConfig
from mimicbrush.data.frame_pairs import FramePairSampler
from mimicbrush.data.ssim import SsimCache, frame_ssim
from mimicbrush.data.video import VideoFileClip, list_clips, read_manifest, scan_clips
from mimicbrush.errors import ConfigError

SHARED_MP4 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video_mp4"


def drifting_frames(count, seed=0, size=(48, 64)):
    """A texture that gets noisier frame by frame, so frame pairs span a wide SSIM range."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (*size, 3)).astype(float)
    frames = []
    for index in range(count):
        noise = rng.integers(0, 256, (*size, 3))
        weight = index / (count - 1)
        frames.append((base * (1 - weight) + noise * weight).astype(np.uint8))
    return frames


def write_frame_folder(folder, frames):
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{index}.png")
    return folder


def write_mp4(path, count=20, size=(48, 64)):
    """Each frame a flat grey level 20 + 10·i, so a decoded frame tells its index."""
    av = pytest.importorskip("av")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
        stream.codec_context.gop_size = 6  # several keyframes, so reads must seek
        for index in range(count):
            image = np.full((*size, 3), 20 + 10 * index, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_scan_finds_frame_folders_in_natural_order_and_video_files(tmp_path):
    write_frame_folder(tmp_path / "clips" / "b", drifting_frames(11))
    write_frame_folder(tmp_path / "clips" / "a" / "single", drifting_frames(2)[:1])  # one frame: no clip
    write_mp4(tmp_path / "clips" / "a" / "movie.mp4")
    clips = scan_clips(tmp_path / "clips")
    assert [type(clip).__name__ for clip in clips] == ["VideoFileClip", "FrameFolderClip"]
    assert [p.name for p in clips[1].frames][:3] == ["frame_0.png", "frame_1.png", "frame_2.png"]
    assert clips[1].frames[-1].name == "frame_10.png"
    with pytest.raises(ConfigError, match=r"data.video.roots\[0\]: folder not found"):
        list_clips((tmp_path / "missing",), None, "data.video")


def test_manifest_lists_folders_and_files(tmp_path):
    write_frame_folder(tmp_path / "clip", drifting_frames(3))
    write_mp4(tmp_path / "movie.mp4")
    manifest = tmp_path / "lists" / "train.txt"
    manifest.parent.mkdir()
    manifest.write_text("# clips\n../clip\n\n../movie.mp4  # a file\n")
    clips = read_manifest(manifest, "data.video.manifest")
    assert [clip.frame_count for clip in clips] == [3, 20]
    manifest.write_text("../nothing_here\n")
    with pytest.raises(ConfigError, match=r"data\.video\.manifest: '\.\./nothing_here' is neither"):
        read_manifest(manifest, "data.video.manifest")


def test_pyav_reads_frames_in_any_order_across_keyframes(tmp_path):
    clip = VideoFileClip(write_mp4(tmp_path / "movie.mp4"))
    assert clip.frame_count == 20
    wanted = [13, 2, 7, 19, 0, 2]
    frames = clip.read_frames(wanted)
    assert [frame.shape for frame in frames] == [(48, 64, 3)] * len(wanted)
    for index, frame in zip(wanted, frames, strict=True):
        assert abs(frame.mean() - (20 + 10 * index)) < 4


def test_pyav_matches_sequential_decoding_on_real_mp4():
    path = SHARED_MP4 / "01_dog.mp4"
    if not path.is_file():
        pytest.skip("real mp4 test: ../shared/data not present")
    av = pytest.importorskip("av")
    clip = VideoFileClip(path)
    wanted = [288, 0, 131, 260]
    with av.open(str(path)) as container:
        sequential = {i: frame.to_ndarray(format="rgb24")
                      for i, frame in enumerate(container.decode(video=0)) if i in wanted}
    assert clip.frame_count == 289
    for index, frame in zip(wanted, clip.read_frames(wanted), strict=True):
        assert np.array_equal(frame, sequential[index]), index


def counting_ssim(monkeypatch):
    calls = []

    def counted(first, second, size):
        calls.append(1)
        return frame_ssim(first, second, size)

    monkeypatch.setattr(ssim, "frame_ssim", counted)
    return calls


def test_pairs_stay_inside_the_ssim_band(tmp_path):
    [clip] = scan_clips(write_frame_folder(tmp_path / "clip", drifting_frames(10)))
    config = VideoConfig(weight=1.0, roots=(tmp_path,), ssim_band=(0.3, 0.7), max_tries=50)
    sampler = FramePairSampler([clip], config, SsimCache(None))
    scores = []
    for seed in range(40):
        pair = sampler.sample(np.random.default_rng(seed))
        assert pair is not None and pair.source_index != pair.reference_index
        assert 0.3 <= pair.ssim <= 0.7
        assert pair.ssim == frame_ssim(pair.source, pair.reference, config.ssim_size)
        scores.append(pair.ssim)
    assert max(scores) - min(scores) > 0.1
    impossible = VideoConfig(weight=1.0, roots=(tmp_path,), ssim_band=(0.999, 1.0), max_tries=5)
    assert FramePairSampler([clip], impossible, SsimCache(None)).sample(np.random.default_rng(0)) is None


def test_max_frame_gap_limits_the_distance(tmp_path):
    clip = write_frame_folder(tmp_path / "clip", drifting_frames(12))
    config = VideoConfig(weight=1.0, roots=(tmp_path,), ssim_band=(-1.0, 1.0), max_frame_gap=2)
    sampler = FramePairSampler(scan_clips(clip), config, SsimCache(None))
    gaps = {abs(p.source_index - p.reference_index)
            for p in (sampler.sample(np.random.default_rng(seed)) for seed in range(60))}
    assert gaps == {1, 2}


def test_scores_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    calls = counting_ssim(monkeypatch)
    clip_folder = write_frame_folder(tmp_path / "clip", drifting_frames(6))
    cache_path = tmp_path / "cache" / "ssim.jsonl"
    cache_path.parent.mkdir()
    config = VideoConfig(weight=1.0, roots=(tmp_path,), ssim_band=(0.2, 0.9))

    def first_pass(sampler):
        return [(p.source_index, p.reference_index, p.ssim)
                for p in (sampler.sample(np.random.default_rng(seed)) for seed in range(25)) if p]

    sampler = FramePairSampler(scan_clips(clip_folder), config, SsimCache(cache_path))
    first = first_pass(sampler)
    computed = len(calls)
    assert computed > 0
    assert len(cache_path.read_text().splitlines()) == computed
    assert first_pass(sampler) == first and len(calls) == computed  # second epoch, same process
    fresh = FramePairSampler(scan_clips(clip_folder), config, SsimCache(cache_path))
    assert first_pass(fresh) == first and len(calls) == computed  # new process, same cache file


def test_cache_reads_lines_other_processes_append(tmp_path):
    path = tmp_path / "ssim.jsonl"
    mine, theirs = SsimCache(path), SsimCache(path)
    assert mine.get("clip", 3, 1) is None
    theirs.put("clip", 1, 3, 0.5)
    with open(path, "a") as file:
        file.write('{"clip": "clip", "a": 4')  # a line still being written is skipped
    assert mine.get("clip", 3, 1) == 0.5
    assert mine.get("clip", 4, 5) is None
