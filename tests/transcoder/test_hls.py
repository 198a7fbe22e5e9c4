from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from tests.helpers import X264, ffprobe_json, live_processes_naming, run_ffmpeg
from transcoder.errors import (
    HostileInput,
    TranscodeFailed,
    TranscodeTimeout,
)
from transcoder.hls import HlsOptions, HlsResult, Progress, Segment, build_command, transcode
from transcoder.ladder import Rendition, build_ladder
from transcoder.limits import MediaLimits
from transcoder.playlists import master_playlist, media_playlist, parse_playlist
from transcoder.probe import MediaInfo, probe

pytestmark = pytest.mark.anyio

FAST = HlsOptions(preset="ultrafast")


def top_level_boxes(data: bytes) -> list[bytes]:
    """ISO-BMFF box types in order; fails unless the sizes tile the whole file exactly."""
    types, offset = [], 0
    while offset < len(data):
        size = int.from_bytes(data[offset : offset + 4], "big")
        assert size >= 8, f"bad box size at {offset}"
        types.append(data[offset + 4 : offset + 8])
        offset += size
    assert offset == len(data), "last box runs past the end of the file"
    return types


class Vault:
    """Stands in for the portal's vault the way the real one behaves: it takes each handed
    segment, keeps a copy elsewhere and deletes the plaintext at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.received: list[Segment] = []
        self.progress: list[Progress] = []
        #: Fraction encoded at the moment each media segment arrived.
        self.arrived_at: list[float] = []

    async def take(self, segment: Segment) -> None:
        assert segment not in self.received, "segment handed over twice"
        boxes = top_level_boxes(segment.path.read_bytes())
        # Complete fMP4 pieces: an init is ftyp+moov; a media segment has its moof and mdat,
        # and the box sizes add up to exactly the file (nothing half-written).
        if segment.kind == "init":
            assert boxes[:2] == [b"ftyp", b"moov"], boxes
        else:
            assert b"moof" in boxes and boxes[-1] == b"mdat", boxes
        target = self.stored(segment)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(segment.path, target)
        segment.path.unlink()
        self.received.append(segment)
        if segment.kind == "media":
            self.arrived_at.append(self.progress[-1].fraction if self.progress else 0.0)

    def on_progress(self, progress: Progress) -> None:
        self.progress.append(progress)

    def stored(self, segment: Segment) -> Path:
        name = "init.mp4" if segment.kind == "init" else f"{segment.index}.m4s"
        return self.root / segment.rendition / name

    def write_playlists(self, result: HlsResult) -> Path:
        for name, segments in result.segments.items():
            (self.root / name / "index.m3u8").write_text(
                media_playlist(
                    [(s.index, s.duration) for s in segments],
                    init_uri="init.mp4",
                    uri_for=lambda i: f"{i}.m4s",
                    ended=True,
                )
            )
        master = self.root / "master.m3u8"
        master.write_text(master_playlist(result.renditions, lambda r: f"{r.name}/index.m3u8"))
        return master

    def joined(self, rendition: str, upto: int | None = None) -> Path:
        """Init plus media segments, as a player appends them to its buffer."""
        out = self.root / f"{rendition}-{upto}.mp4"
        media = sorted(
            (s for s in self.received if s.rendition == rendition and s.kind == "media"),
            key=lambda s: s.index,
        )
        parts = [self.root / rendition / "init.mp4"]
        parts += [self.stored(s) for s in media if upto is None or s.index == upto]
        out.write_bytes(b"".join(p.read_bytes() for p in parts))
        return out


async def run(
    source: Path,
    tmp_path: Path,
    options: HlsOptions = FAST,
    renditions: list[Rendition] | None = None,
) -> tuple[HlsResult, Vault, Path]:
    info = await probe(source, MediaLimits())
    workdir = tmp_path / "work"
    vault = Vault(tmp_path / "vault")
    result = await transcode(
        source,
        info,
        renditions or build_ladder(info),
        workdir,
        options,
        vault.take,
        vault.on_progress,
    )
    return result, vault, workdir


def assert_nothing_left(workdir: Path) -> None:
    assert not workdir.exists() or list(workdir.rglob("*")) == []
    assert live_processes_naming(str(workdir)) == [], "ffmpeg still running"


def play(master: Path) -> subprocess.CompletedProcess[bytes]:
    """Read the whole output as a player would, through the master playlist."""
    return subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-v",
            "error",
            "-protocol_whitelist",
            "file",
            "-i",
            str(master),
            "-map",
            "0",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )


def video_stream(path: Path) -> dict[str, object]:
    streams = ffprobe_json(path, "-show_streams")["streams"]
    return next(s for s in streams if s["codec_type"] == "video")


def stream_span(path: Path, selector: str) -> tuple[float, float]:
    """When a stream's first and last packets start, in seconds."""
    packets = ffprobe_json(path, "-select_streams", selector, "-show_entries", "packet=pts_time")
    starts = [float(p["pts_time"]) for p in packets["packets"]]
    return min(starts), max(starts)


def keyframe_times(path: Path) -> list[float]:
    packets = ffprobe_json(
        path, "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags"
    )["packets"]
    return [round(float(p["pts_time"]), 3) for p in packets if "K" in p["flags"]]


async def test_1080p_source_is_encoded_into_every_rung_and_plays(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, workdir = await run(clips["hd.mp4"], tmp_path)
    names = [r.name for r in result.renditions]
    assert names == ["240p", "360p", "480p", "720p", "1080p"]
    for r in result.renditions:
        stream = video_stream(vault.joined(r.name))
        assert (stream["width"], stream["height"]) == (r.width, r.height)
        assert r.codecs == declared_codecs(stream, audio=True)
        assert [s.duration for s in result.segments[r.name]] == pytest.approx([1, 1], abs=0.05)
    assert result.duration == pytest.approx(2.0, abs=0.05)
    played = play(vault.write_playlists(result))
    assert played.returncode == 0, played.stderr
    assert_nothing_left(workdir)


#: profile_idc of each profile name ffprobe reports (H.264 Annex A).
PROFILE_IDC = {"Constrained Baseline": 0x42, "Baseline": 0x42, "Main": 0x4D, "High": 0x64}


def declared_codecs(stream: dict[str, object], *, audio: bool) -> str:
    """The CODECS a stream deserves, from ffprobe's reading of its SPS: profile and level.
    Constrained Baseline is Baseline with constraint_set1 (and x264 sets set0 too)."""
    constraints = 0xC0 if stream["profile"] == "Constrained Baseline" else 0x00
    video = f"avc1.{PROFILE_IDC[str(stream['profile'])]:02x}{constraints:02x}"
    video += f"{int(stream['level']):02x}"  # type: ignore[call-overload]
    return f"{video},mp4a.40.2" if audio else video


@pytest.mark.parametrize(
    ("preset", "profile"), [("ultrafast", "Constrained Baseline"), ("veryfast", "High")]
)
async def test_codecs_describe_what_was_encoded_not_what_was_asked(
    clips: dict[str, Path], tmp_path: Path, preset: str, profile: str
) -> None:
    """Asked for High, ultrafast writes Constrained Baseline; CODECS must say so, or a
    player may refuse (or mis-decode) a variant it could play."""
    result, vault, _ = await run(clips["landscape.mp4"], tmp_path, HlsOptions(preset=preset))
    [only] = result.renditions
    stream = video_stream(vault.joined(only.name))
    assert stream["profile"] == profile
    assert only.codecs == declared_codecs(stream, audio=True)
    assert result.inits[only.name].codecs == only.codecs
    [variant] = parse_playlist(vault.write_playlists(result).read_text()).variants
    assert variant.attributes["CODECS"] == only.codecs


async def test_audio_only_codecs_are_read_from_the_init_segment(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, _, _ = await run(clips["audio_only.mp3"], tmp_path)
    assert [r.codecs for r in result.renditions] == ["mp4a.40.2"]


@pytest.mark.parametrize(
    ("first", "length", "durations"),
    [
        # Short opening segments, doubling up to the segment length: playable after ~1 s.
        (1.0, 4.0, [1.0, 1.0, 2.0, 4.0, 1.0]),
        (2.0, 3.0, [2.0, 3.0, 3.0, 1.0]),
        (4.0, 4.0, [4.0, 4.0, 1.0]),
    ],
)
async def test_segments_ramp_up_to_fixed_length_and_start_on_aligned_keyframes(
    clips: dict[str, Path], tmp_path: Path, first: float, length: float, durations: list[float]
) -> None:
    options = HlsOptions(preset="ultrafast", first_segment_seconds=first, segment_seconds=length)
    result, vault, workdir = await run(clips["segmented.mp4"], tmp_path, options)  # 9 s
    assert [r.name for r in result.renditions] == ["240p", "360p"]
    keyframes = {r.name: keyframe_times(vault.joined(r.name)) for r in result.renditions}
    # Keyframes at the segment starts and nowhere else, at the same instants in every
    # rendition (all shifted alike by the AAC priming delay).
    assert keyframes["240p"] == keyframes["360p"]
    origin = keyframes["240p"][0]
    starts = [sum(durations[:i]) for i in range(len(durations))]
    assert [round(t - origin, 2) for t in keyframes["240p"]] == starts
    for r in result.renditions:
        segments = result.segments[r.name]
        assert [s.index for s in segments] == list(range(len(durations)))
        assert [s.duration for s in segments] == pytest.approx(durations, abs=0.05)
        for segment in segments:
            # Each segment on its own (after the init) opens with a keyframe: a player can
            # start or switch rendition at any of them.
            first = ffprobe_json(
                vault.joined(r.name, segment.index),
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=flags",
            )["packets"][0]
            assert "K" in first["flags"]
    assert play(vault.write_playlists(result)).returncode == 0
    assert_nothing_left(workdir)


async def test_each_segment_is_handed_over_once_init_first_while_encoding_goes_on(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    slow = HlsOptions(preset="slow", segment_seconds=1.0, threads=1)
    result, vault, workdir = await run(clips["segmented.mp4"], tmp_path, slow)
    for r in result.renditions:
        mine = [s for s in vault.received if s.rendition == r.name]
        assert mine[0].kind == "init" and mine[0].index == -1
        assert [s.index for s in mine[1:]] == list(range(9))
        assert mine[1:] == result.segments[r.name]
    # The vault had segments long before ffmpeg was done: playable while still encoding.
    assert min(vault.arrived_at) < 0.6
    assert_nothing_left(workdir)


async def test_progress_reports_fraction_speed_and_time(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    _, vault, _ = await run(clips["segmented.mp4"], tmp_path)
    fractions = [p.fraction for p in vault.progress]
    assert fractions == sorted(fractions)
    assert fractions[-1] == 1.0
    assert vault.progress[-1].out_time == pytest.approx(9.0, abs=0.2)
    assert any(p.speed for p in vault.progress)


async def test_rotated_phone_video_comes_out_upright_without_rotation(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, _ = await run(clips["rotated.mp4"], tmp_path)
    [only] = result.renditions
    stream = video_stream(vault.joined(only.name))
    assert (stream["width"], stream["height"]) == (180, 320)
    assert not stream.get("side_data_list")


async def test_portrait_video_gets_portrait_renditions(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, _ = await run(clips["tall_portrait.mp4"], tmp_path)
    sizes = [(r.width, r.height) for r in result.renditions]
    assert sizes == [(240, 426), (360, 640)]
    for r in result.renditions:
        stream = video_stream(vault.joined(r.name))
        assert (stream["width"], stream["height"]) == (r.width, r.height)


async def test_video_without_sound_gives_video_only_segments(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, workdir = await run(clips["no_audio.mp4"], tmp_path)
    [only] = result.renditions
    assert only.codecs == "avc1.42c01e"  # ultrafast: Constrained Baseline, level 3.0
    streams = ffprobe_json(vault.joined(only.name), "-show_streams")["streams"]
    assert [s["codec_type"] for s in streams] == ["video"]
    assert play(vault.write_playlists(result)).returncode == 0
    assert_nothing_left(workdir)


async def test_audio_only_upload_becomes_an_audio_only_stream(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, workdir = await run(clips["audio_only.mp3"], tmp_path)
    assert [r.name for r in result.renditions] == ["audio"]
    streams = ffprobe_json(vault.joined("audio"), "-show_streams")["streams"]
    assert [(s["codec_type"], s["codec_name"], s["channels"]) for s in streams] == [
        ("audio", "aac", 2)
    ]
    assert result.duration == pytest.approx(2.0, abs=0.1)
    master = vault.write_playlists(result)
    assert "RESOLUTION" not in master.read_text()
    assert play(master).returncode == 0
    assert_nothing_left(workdir)


async def test_variable_frame_rate_comes_out_constant(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    result, vault, _ = await run(clips["variable_rate.mkv"], tmp_path)
    [only] = result.renditions
    packets = ffprobe_json(
        vault.joined(only.name), "-select_streams", "v:0", "-show_entries", "packet=pts_time"
    )["packets"]
    times = [float(p["pts_time"]) for p in packets]
    gaps = {round(b - a, 3) for a, b in zip(sorted(times), sorted(times)[1:], strict=False)}
    assert gaps == {round(1 / only.fps, 3)}
    assert len(times) == pytest.approx(3.0 * only.fps, abs=2)


@pytest.mark.parametrize(
    "name",
    [
        "moov_at_end.mp4",
        "webm.webm",
        "mpegts.ts",
        "odd.mp4",
        "landscape.mp4",
        "interlaced.mp4",
        "two_soundtracks.mkv",
    ],
)
async def test_common_containers_transcode_and_play(
    clips: dict[str, Path], tmp_path: Path, name: str
) -> None:
    result, vault, workdir = await run(clips[name], tmp_path)
    for r in result.renditions:
        assert r.width % 2 == 0 and r.height % 2 == 0
        stream = video_stream(vault.joined(r.name))
        assert (stream["width"], stream["height"]) == (r.width, r.height)
    assert sum(s.duration for s in result.segments[result.renditions[0].name]) == (
        pytest.approx(2.0, abs=0.1)
    )
    assert play(vault.write_playlists(result)).returncode == 0
    assert_nothing_left(workdir)


async def test_cancelling_the_callers_scope_kills_ffmpeg_and_leaves_no_segments(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["segmented.mp4"]
    info = await probe(source, MediaLimits())
    workdir = tmp_path / "work"
    vault = Vault(tmp_path / "vault")
    running_at_cancel: list[int] = []

    with anyio.move_on_after(60) as scope:

        async def take_then_cancel(segment: Segment) -> None:
            await vault.take(segment)
            if segment.kind == "media":
                # Mid-way for certain: ffmpeg is still encoding the rest.
                running_at_cancel.extend(live_processes_naming(str(workdir)))
                scope.cancel()

        slow = HlsOptions(preset="veryslow", threads=1, segment_seconds=1.0)
        await transcode(source, info, build_ladder(info), workdir, slow, take_then_cancel)

    assert scope.cancelled_caught
    assert running_at_cancel, "ffmpeg had already finished: nothing was cancelled"
    assert len([s for s in vault.received if s.kind == "media"]) == 1
    assert_nothing_left(workdir)


async def test_wall_time_limit_stops_ffmpeg_and_cleans_up(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(TranscodeTimeout) as caught:
        await run(clips["hd.mp4"], tmp_path, HlsOptions(preset="veryslow", timeout=0.5))
    assert "longer than allowed" in caught.value.reason
    assert_nothing_left(tmp_path / "work")


async def test_ffmpeg_failure_is_reported_without_leaking_paths(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "secret-name" / "film.mp4"
    source.parent.mkdir()
    shutil.copyfile(clips["landscape.mp4"], source)
    info = await probe(source, MediaLimits())
    # The file changes between probe and encode: a damaged disk, or a race in a worker.
    source.write_bytes(source.read_bytes()[:4000])
    workdir = tmp_path / "work"
    with pytest.raises(TranscodeFailed) as caught:
        await transcode(
            source, info, build_ladder(info), workdir, FAST, Vault(tmp_path / "vault").take
        )
    assert "secret-name" not in caught.value.reason
    assert str(tmp_path) not in caught.value.reason
    assert caught.value.reason.startswith("The video could not be converted")
    assert_nothing_left(workdir)


async def test_an_error_in_the_callback_stops_ffmpeg_and_propagates(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["segmented.mp4"]
    info = await probe(source, MediaLimits())
    workdir = tmp_path / "work"

    async def broken_store(segment: Segment) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await transcode(source, info, build_ladder(info), workdir, FAST, broken_store)
    assert_nothing_left(workdir)


async def test_a_hand_made_media_info_cannot_select_the_hls_demuxer(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    info = await probe(clips["landscape.mp4"], MediaLimits())
    hostile: MediaInfo = dataclasses.replace(info, format="hls")
    with pytest.raises(HostileInput):
        await transcode(
            clips["landscape.mp4"],
            hostile,
            build_ladder(info),
            tmp_path / "w",
            FAST,
            Vault(tmp_path / "vault").take,
        )


async def test_an_error_in_the_progress_callback_stops_ffmpeg_and_propagates(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    source = clips["hd.mp4"]
    info = await probe(source, MediaLimits())
    workdir = tmp_path / "work"

    def broken_progress(progress: Progress) -> None:
        raise RuntimeError("progress sink gone")

    with pytest.raises(RuntimeError, match="progress sink gone"):
        await transcode(
            source,
            info,
            build_ladder(info),
            workdir,
            HlsOptions(preset="veryslow", timeout=60),
            Vault(tmp_path / "vault").take,
            broken_progress,
        )
    assert_nothing_left(workdir)


async def test_a_slideshow_below_one_fps_becomes_one_fps_not_thirty(tmp_path: Path) -> None:
    # Five pictures, one every 2 s: 10 s at 0.5 fps. Sub-1-fps rates were once read as
    # "unknown" and encoded at 30 fps: 300 frames for 5 pictures.
    source = tmp_path / "slides.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=1/2", "-frames:v", "5", *X264,
        str(source),
    )  # fmt: skip
    result, vault, workdir = await run(source, tmp_path)
    [only] = result.renditions
    assert only.fps == 1.0
    packets = ffprobe_json(
        vault.joined(only.name), "-select_streams", "v:0", "-show_entries", "packet=pts_time"
    )["packets"]
    assert len(packets) == pytest.approx(10, abs=1)
    assert result.duration == pytest.approx(10.0, abs=1.0)
    assert_nothing_left(workdir)


@pytest.mark.parametrize(
    ("name", "copied"),
    [("landscape.mp4", True), ("mpegts.ts", True), ("webm.webm", False)],
)
async def test_an_aac_lc_soundtrack_is_copied_and_any_other_encoded(
    clips: dict[str, Path], tmp_path: Path, name: str, copied: bool
) -> None:
    """The clips' sound is a 48 kHz mono sine: AAC-LC at 96 kb/s (MP4, and ADTS in MPEG-TS)
    goes out as it came in, mono, in every rendition; Opus is encoded to AAC-LC stereo."""
    info = await probe(clips[name], MediaLimits())
    command = build_command(clips[name], info, build_ladder(info), tmp_path / "cmd", FAST)
    assert command[command.index("-c:a") + 1] == ("copy" if copied else "aac")
    result, vault, workdir = await run(clips[name], tmp_path)
    for r in result.renditions:
        joined = vault.joined(r.name)
        sound = ffprobe_json(joined, "-select_streams", "a:0", "-show_streams")["streams"][0]
        assert (sound["codec_name"], sound["profile"]) == ("aac", "LC")
        assert (int(sound["channels"]), int(sound["sample_rate"])) == (1 if copied else 2, 48_000)
        assert r.codecs.endswith(",mp4a.40.2")
        # The sound lasts as long as the picture: nothing lost or shifted by the copy.
        assert stream_span(joined, "a:0") == pytest.approx(stream_span(joined, "v:0"), abs=0.1)
    assert play(vault.write_playlists(result)).returncode == 0
    assert_nothing_left(workdir)
