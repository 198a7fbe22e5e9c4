from __future__ import annotations

import contextlib
import os
import random
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import X264, ffprobe_json, run_ffmpeg
from transcoder.errors import (
    CorruptMedia,
    EmptyFile,
    HostileInput,
    ImplausibleDuration,
    MediaRejected,
    NoDecodableStream,
    NotMedia,
    TooLarge,
    TooLong,
    TooManyFrames,
    TooManyStreams,
)
from transcoder.ladder import output_fps
from transcoder.limits import MediaLimits
from transcoder.probe import probe

pytestmark = pytest.mark.anyio

LIMITS = MediaLimits()


@pytest.mark.parametrize(
    ("name", "fmt", "size", "has_audio"),
    [
        ("landscape.mp4", "mov", (320, 180), True),
        ("moov_at_end.mp4", "mov", (320, 180), True),
        ("portrait.mp4", "mov", (180, 320), True),
        ("odd.mp4", "mov", (321, 181), False),
        ("no_audio.mp4", "mov", (320, 180), False),
        ("variable_rate.mkv", "matroska", (320, 180), False),
        ("webm.webm", "matroska", (320, 180), True),
        ("mpegts.ts", "mpegts", (320, 180), True),
        ("hd.mp4", "mov", (1920, 1080), True),
    ],
)
async def test_probe_reports_what_is_in_the_file(
    clips: dict[str, Path], name: str, fmt: str, size: tuple[int, int], has_audio: bool
) -> None:
    info = await probe(clips[name], LIMITS)
    assert info.format == fmt
    assert info.has_video
    assert (info.width, info.height) == size
    assert info.has_audio is has_audio
    assert info.duration == pytest.approx(3.0 if "variable" in name else 2.0, abs=0.1)
    assert info.fps > 0
    assert info.video_bitrate and info.video_bitrate > 0
    assert info.size_bytes == clips[name].stat().st_size


async def test_rotated_video_reports_display_dimensions(clips: dict[str, Path]) -> None:
    info = await probe(clips["rotated.mp4"], LIMITS)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (180, 320)


async def test_interlaced_video_is_flagged(clips: dict[str, Path]) -> None:
    assert (await probe(clips["interlaced.mp4"], LIMITS)).interlaced
    assert not (await probe(clips["landscape.mp4"], LIMITS)).interlaced


async def test_the_default_soundtrack_is_chosen(clips: dict[str, Path]) -> None:
    info = await probe(clips["two_soundtracks.mkv"], LIMITS)
    assert (info.video_index, info.audio_index) == (0, 2)
    assert info.audio_map == "0:2"


async def test_audio_only_file_has_no_video(clips: dict[str, Path]) -> None:
    info = await probe(clips["audio_only.mp3"], LIMITS)
    assert (info.format, info.has_video, info.has_audio) == ("mp3", False, True)
    assert info.audio_codec == "mp3"
    assert (info.width, info.height) == (0, 0)


async def test_file_with_only_subtitles_has_no_decodable_stream(clips: dict[str, Path]) -> None:
    with pytest.raises(NoDecodableStream):
        await probe(clips["subtitles_only.mkv"], LIMITS)


async def test_empty_file_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "film.mp4"
    upload.touch()
    with pytest.raises(EmptyFile):
        await probe(upload, LIMITS)


async def test_text_file_is_not_media(tmp_path: Path) -> None:
    upload = tmp_path / "film.mp4"
    upload.write_text("This is my film script, not my film.\n")
    with pytest.raises(NotMedia) as caught:
        await probe(upload, LIMITS)
    assert caught.value.reason == "This is not a video or audio file."


@pytest.mark.parametrize("name", ["landscape.mp4", "moov_at_end.mp4", "webm.webm"])
async def test_truncated_upload_is_corrupt(clip: Callable[[str], Path], name: str) -> None:
    upload = clip(name)
    data = upload.read_bytes()
    upload.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptMedia) as caught:
        await probe(upload, LIMITS)
    assert str(upload.parent) not in caught.value.reason


async def test_a_soundtrack_of_noise_under_an_aac_header_is_refused(
    clip: Callable[[str], Path],
) -> None:
    """The container still says AAC-LC, the kind of sound that is copied into every rendition
    as it came, but every audio packet is noise, which players would be sent. The probe
    decodes the first sound too, and refuses the file naming the sound."""
    upload = clip("landscape.mp4")
    packets = ffprobe_json(upload, "-select_streams", "a:0", "-show_entries", "packet=pos,size")
    data = bytearray(upload.read_bytes())
    noise = random.Random(1)
    for packet in packets["packets"]:
        start, size = int(packet["pos"]), int(packet["size"])
        data[start : start + size] = noise.randbytes(size)
    upload.write_bytes(data)
    (claim,) = ffprobe_json(upload, "-select_streams", "a:0", "-show_entries", "stream")["streams"]
    assert (claim["codec_name"], claim["profile"]) == ("aac", "LC")

    with pytest.raises(NoDecodableStream) as caught:
        await probe(upload, LIMITS)
    assert "sound" in caught.value.reason


async def test_container_header_followed_by_garbage_is_corrupt(tmp_path: Path) -> None:
    upload = tmp_path / "film.mp4"
    upload.write_bytes(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + os.urandom(4096))
    with pytest.raises(CorruptMedia):
        await probe(upload, LIMITS)


async def test_longer_than_allowed_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(TooLong) as caught:
        await probe(clips["landscape.mp4"], MediaLimits(max_duration=1.0))
    assert "0:00:02" in caught.value.reason


async def test_more_pixels_than_allowed_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(TooLarge) as caught:
        await probe(clips["hd.mp4"], MediaLimits(max_pixels=1280 * 720))
    assert "1920x1080" in caught.value.reason


async def test_bigger_file_than_allowed_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(TooLarge):
        await probe(clips["landscape.mp4"], MediaLimits(max_file_bytes=1000))


async def test_too_many_streams_is_refused(clips: dict[str, Path]) -> None:
    with pytest.raises(TooManyStreams):
        await probe(clips["landscape.mp4"], MediaLimits(max_streams=1))


async def test_every_refusal_is_a_media_rejected_with_a_sentence(tmp_path: Path) -> None:
    upload = tmp_path / "film.mp4"
    upload.write_bytes(b"#EXTM3U\n")
    with pytest.raises(MediaRejected) as caught:
        await probe(upload, LIMITS)
    assert caught.value.reason.endswith(".")
    assert str(tmp_path) not in caught.value.reason


class FifoWatch:
    """A named pipe that records whether anyone ever opened it for reading.

    A writer thread blocks in open() until a reader arrives, so "still blocked" proves no
    process opened the file at all, whatever the filesystem's atime policy.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._wait_for_reader, daemon=True)
        self._thread.start()

    def _wait_for_reader(self) -> None:
        fd = os.open(self.path, os.O_WRONLY)  # blocks until a reader opens the FIFO
        self.opened.set()
        try:
            # The reader may already have gone (ffprobe gave up, or release() only opened
            # the FIFO to unblock us): a closed pipe is an expected ending, not a failure.
            # An unbuffered write, so nothing is left to fail later when the fd is closed.
            with contextlib.suppress(BrokenPipeError):
                os.write(fd, b"\x47" + b"\x00" * 187)
        finally:
            os.close(fd)

    def release(self) -> None:
        if not self.opened.is_set():
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.opened.wait(5)
            os.close(fd)
        self._thread.join(5)


@pytest.fixture
def secret_fifo(tmp_path: Path) -> Iterator[FifoWatch]:
    watch = FifoWatch(tmp_path / "secret.ts")
    yield watch
    watch.release()


def _hls_playlist_pointing_at(target: Path) -> bytes:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:10.0,\n{target}\n#EXT-X-ENDLIST\n"
    ).encode()


async def test_hls_playlist_disguised_as_mp4_is_refused_without_opening_what_it_names(
    tmp_path: Path, secret_fifo: FifoWatch
) -> None:
    upload = tmp_path / "holiday.mp4"
    upload.write_bytes(_hls_playlist_pointing_at(secret_fifo.path))
    with pytest.raises(HostileInput):
        await probe(upload, MediaLimits(probe_timeout=5))
    assert not secret_fifo.opened.wait(0.5), "the file named by the playlist was opened"


def test_fifo_watch_catches_ffprobe_autodetecting_the_playlist(
    tmp_path: Path, secret_fifo: FifoWatch, ffprobe: str
) -> None:
    """The control for the test above: without our sniffing, ffprobe guesses `hls` from the
    content (whatever the name) and opens the named file, even with a file-only whitelist."""
    upload = tmp_path / "holiday.mp4"
    upload.write_bytes(_hls_playlist_pointing_at(secret_fifo.path))
    subprocess.run(
        [ffprobe, "-v", "quiet", "-protocol_whitelist", "file", str(upload)],
        timeout=30,
        check=False,
    )
    assert secret_fifo.opened.wait(5)


# Bounding the work a job may cost: hostile files made with real ffmpeg.


def make(folder: Path, name: str, *args: str) -> Path:
    out = folder / name
    run_ffmpeg(*args, str(out))
    return out


async def test_pixel_limit_applies_to_the_stored_frame_not_the_displayed_one(
    tmp_path: Path,
) -> None:
    # 16384x1024 stored, pixels 1:4 wide: shown as 4096x1024, under the limit; decoding it
    # costs 16.8 megapixels a frame.
    wide = make(
        tmp_path, "wide.mp4", "-f", "lavfi", "-i", "color=size=16384x1024:rate=1", "-t", "1",
        "-vf", "setsar=1/4", *X264,
    )  # fmt: skip
    stream = ffprobe_json(wide, "-show_streams")["streams"][0]
    assert (stream["width"], stream["sample_aspect_ratio"]) == (16384, "1:4")
    assert 4096 * 1024 < LIMITS.max_pixels < 16384 * 1024
    with pytest.raises(TooLarge) as caught:
        await probe(wide, LIMITS)
    assert "stored as 16384x1024" in caught.value.reason


async def test_a_few_kilobytes_claiming_hours_is_refused_before_any_decoding(
    tmp_path: Path,
) -> None:
    # Eleven 64x64 frames, one every 1000 s: 1.6 KB that once became 300,000 frames a rung.
    tiny = make(
        tmp_path, "tiny.mp4", "-f", "lavfi", "-i", "color=size=64x64:rate=1/1000", "-t",
        "10001", *X264,
    )  # fmt: skip
    assert tiny.stat().st_size < 4096
    with pytest.raises(ImplausibleDuration) as caught:
        await probe(tiny, LIMITS)
    assert "2:46:40" in caught.value.reason and "KB" in caught.value.reason
    assert caught.value.reason.endswith(".")


async def test_an_edit_list_stretching_a_short_clip_is_refused(tmp_path: Path) -> None:
    short = make(
        tmp_path, "short.mp4", "-f", "lavfi", "-i", "testsrc2=size=64x36:rate=1/2", "-t", "6",
        *X264,
    )  # fmt: skip
    # -itsoffset makes the MP4 muxer write an empty edit: the file claims 10,006 s.
    stretched = make(tmp_path, "stretched.mp4", "-itsoffset", "10000", "-i", str(short), "-c",
                     "copy")  # fmt: skip
    assert float(ffprobe_json(stretched, "-show_format")["format"]["duration"]) > 10000
    with pytest.raises(ImplausibleDuration):
        await probe(stretched, LIMITS)


async def test_output_frames_over_the_budget_are_refused(clips: dict[str, Path]) -> None:
    # 2 s at 24 fps is 48 frames a rendition.
    assert await probe(clips["landscape.mp4"], MediaLimits(max_output_frames=48))
    with pytest.raises(TooManyFrames) as caught:
        await probe(clips["landscape.mp4"], MediaLimits(max_output_frames=47))
    assert "48 frames" in caught.value.reason and "24 frames per second" in caught.value.reason


@settings(max_examples=10, deadline=None)
@given(
    frames=st.integers(min_value=2, max_value=40),
    seconds_per_frame=st.sampled_from([2, 3, 7, 10, 60, 250, 1000, 3600]),
    offset=st.sampled_from([0, 0, 600, 10_000]),
)
def test_slow_and_stretched_files_never_cost_more_than_their_bytes_allow(
    frames: int, seconds_per_frame: int, offset: int
) -> None:
    """Whatever rate and stretch a file declares, it is refused with a typed reason or its
    job is bounded by its size, and its output rate follows its own (never the 30 fps that
    sub-1-fps sources once got)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        made = make(
            folder, "slow.mp4", "-f", "lavfi", "-i",
            f"testsrc2=size=64x36:rate=1/{seconds_per_frame}", "-frames:v", str(frames),
            *X264,
        )  # fmt: skip
        if offset:
            made = make(folder, "offset.mp4", "-itsoffset", str(offset), "-i", str(made), "-c",
                        "copy")  # fmt: skip
        size = made.stat().st_size
        try:
            info = anyio.run(probe, made, LIMITS)
        except (ImplausibleDuration, TooLong, TooManyFrames) as refused:
            assert refused.reason.endswith(".") and tmp not in refused.reason
            return
    assert info.duration * LIMITS.min_bytes_per_second <= size
    assert info.fps == pytest.approx(1 / seconds_per_frame, rel=0.1)
    assert output_fps(info.fps) == 1.0
    # The most frames the job may write: bounded by what was uploaded.
    assert info.duration * output_fps(info.fps) <= size / LIMITS.min_bytes_per_second
