from __future__ import annotations

from pathlib import Path

import pytest

from transcoder.errors import EmptyFile, HostileInput, NotMedia
from transcoder.formats import detect_demuxer, sniff_format


@pytest.mark.parametrize(
    ("head", "demuxer"),
    [
        (b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00", "mov"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "mov"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01", "matroska"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "wav"),
        ((b"\x47" + b"\x00" * 187) * 3, "mpegts"),
        ((b"\x00\x00\x00\x00\x47" + b"\x00" * 187) * 3, "mpegts"),
        (b"FLV\x01\x05\x00\x00\x00\x09", "flv"),
        (b"OggS\x00\x02", "ogg"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"\x00\x00\x01\xba\x44", "mpeg"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x00", "mp3"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xf1\x50\x80", "aac"),
        (b"\xff\xf1\x50\x80\x02\x1f\xfc", "aac"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),
        (bytes.fromhex("3026B2758E66CF11A6D900AA0062CE6C") + b"\x00" * 8, "asf"),
    ],
)
def test_magic_numbers_map_to_allowed_demuxers(head: bytes, demuxer: str) -> None:
    assert detect_demuxer(head) == demuxer


@pytest.mark.parametrize(
    "text",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:///etc/passwd\n",
        b"\xef\xbb\xbf#EXTM3U\n#EXTINF:1,\nsecret.ts\n",
        b"  \n#EXTM3U\n",
        b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        b"<?xml version='1.0'?><MPD></MPD>",
        b"[playlist]\nFile1=http://example.com/stream\n",
        b"v=0\no=- 0 0 IN IP4 127.0.0.1\nm=video 5004 RTP/AVP 96\n",
    ],
)
def test_playlists_and_scripts_are_hostile(tmp_path: Path, text: bytes) -> None:
    upload = tmp_path / "film.mp4"
    upload.write_bytes(text)
    with pytest.raises(HostileInput):
        sniff_format(upload)


@pytest.mark.parametrize(
    "data",
    [
        b"Dear diary, today I uploaded a text file.",
        b"%PDF-1.7\n",
        b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
        bytes(range(256)),
    ],
)
def test_other_files_are_not_media(tmp_path: Path, data: bytes) -> None:
    upload = tmp_path / "film.mp4"
    upload.write_bytes(data)
    with pytest.raises(NotMedia):
        sniff_format(upload)


def test_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    upload = tmp_path / "film.mp4"
    upload.touch()
    with pytest.raises(EmptyFile):
        sniff_format(upload)
