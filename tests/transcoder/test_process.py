"""Every ffmpeg command line we build, whoever builds it, carries the hardening."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from transcoder.errors import HostileInput
from transcoder.formats import ALLOWED_DEMUXERS
from transcoder.hls import HlsOptions, build_command
from transcoder.images import (
    pictures_command,
    poster_command,
    storyboard_command,
    storyboard_layout,
)
from transcoder.ladder import build_ladder
from transcoder.limits import MediaLimits
from transcoder.probe import MediaInfo, probe

pytestmark = pytest.mark.anyio


def assert_hardened(args: list[str]) -> None:
    """-nostdin first; each input preceded, within its own options, by the file-only
    protocol whitelist and a forced demuxer from the allowlist; each input named `file:`."""
    assert args[1:5] == ["-nostdin", "-hide_banner", "-v", "error"]
    inputs = [i for i, arg in enumerate(args) if arg == "-i"]
    assert inputs, "no input"
    previous = 0
    for at in inputs:
        options = args[previous:at]
        assert args[at + 1].startswith("file:/"), args[at + 1]
        whitelist = options.index("-protocol_whitelist")
        assert options[whitelist + 1] == "file"
        demuxer = options.index("-f")
        assert options[demuxer + 1] in ALLOWED_DEMUXERS
        previous = at + 2


@pytest.fixture
async def infos(clips: dict[str, Path]) -> dict[str, MediaInfo]:
    names = ("hd.mp4", "interlaced.mp4", "audio_only.mp3", "two_soundtracks.mkv")
    return {name: await probe(clips[name], MediaLimits()) for name in names}


async def test_transcode_poster_and_storyboard_commands_are_hardened(
    clips: dict[str, Path], infos: dict[str, MediaInfo], tmp_path: Path
) -> None:
    for name, info in infos.items():
        source = clips[name]
        command = build_command(source, info, build_ladder(info), tmp_path, HlsOptions())
        assert_hardened(command)
        assert command[command.index("-t") + 1] == f"{info.duration + 1:.3f}"
        if info.has_video:
            assert_hardened(poster_command(source, info, tmp_path, ".jpg"))
            board = storyboard_layout(info, None, 160)
            assert_hardened(
                pictures_command(source, info, tmp_path, tmp_path / "s.jpg", board, ".jpg")
            )
            for keyframes_only in (True, False):
                assert_hardened(
                    storyboard_command(
                        source, info, tmp_path / "s.jpg", 1.0, (160, 90), (2, 1),
                        keyframes_only=keyframes_only,
                    )
                )  # fmt: skip


async def test_a_hand_made_media_info_cannot_select_a_demuxer_outside_the_allowlist(
    clips: dict[str, Path], infos: dict[str, MediaInfo], tmp_path: Path
) -> None:
    source = clips["hd.mp4"]
    hostile = dataclasses.replace(infos["hd.mp4"], format="hls")
    with pytest.raises(HostileInput):
        poster_command(source, hostile, tmp_path, ".jpg")
    with pytest.raises(HostileInput):
        storyboard_command(
            source, hostile, tmp_path / "s.jpg", 1.0, (160, 90), (2, 1), keyframes_only=True
        )
    with pytest.raises(HostileInput):
        build_command(source, hostile, build_ladder(hostile), tmp_path, HlsOptions())


async def test_the_top_rung_keeps_the_preset_and_lower_rungs_go_faster(
    clips: dict[str, Path], infos: dict[str, MediaInfo], tmp_path: Path
) -> None:
    info = infos["hd.mp4"]
    ladder = build_ladder(info)  # 240p .. 1080p, smallest first
    command = build_command(clips["hd.mp4"], info, ladder, tmp_path, HlsOptions())
    presets = [command[command.index(f"-preset:v:{i}") + 1] for i in range(len(ladder))]
    assert presets == ["superfast"] * 4 + ["veryfast"]
    assert command[command.index("-x264-params:v:4") + 1] == HlsOptions.top_x264_params
    assert "-x264-params:v:3" not in command
    graph = command[command.index("-filter_complex") + 1]
    assert "scale=1280:720:flags=area" in graph and "scale=1920:1080[" in graph
    # A lower preset slower than the top one is never used: ultrafast everywhere.
    fast = build_command(clips["hd.mp4"], info, ladder, tmp_path, HlsOptions(preset="ultrafast"))
    assert {fast[fast.index(f"-preset:v:{i}") + 1] for i in range(len(ladder))} == {"ultrafast"}
