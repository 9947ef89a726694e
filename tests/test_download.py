"""Download: a loopback HTTP server serves files this test writes; the registry is patched."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from functools import partial
from pathlib import Path

import pytest

from pipeline import download as dl
from pipeline.errors import ConfigError, InputError, PipelineError

REAL_CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "small_parallel_enja"
TOY = {"a.txt": b"hello world\n", "b.txt": "こんにちは 世界\n".encode() * 50}


def _hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


class _TruncatingHandler(http.server.BaseHTTPRequestHandler):
    """Promises 100000 bytes, sends 10, hangs up: an interrupted download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 10)
        self.close_connection = True

    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Registry with a toy corpus whose own URL is unreachable; no proxy for loopback."""
    monkeypatch.setitem(dl.CORPORA, "toy", dl.Corpus(
        base_url="http://127.0.0.1:9/never-used/", files={name: _hash(data) for name, data in TOY.items()}))
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture
def served(tmp_path):
    """A folder of the toy files and the URL of a server serving it."""
    root = tmp_path / "server"
    root.mkdir()
    for name, data in TOY.items():
        (root / name).write_bytes(data)
    server, url = _serve(partial(_QuietHandler, directory=str(root)))
    yield root, url
    server.shutdown()
    server.server_close()


def test_downloads_and_verifies(served, tmp_path):
    _, url = served
    dest = tmp_path / "data"
    report = dl.download("toy", dest, base_url=url)

    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "b.txt"]  # no temporary leftovers
    for name, data in TOY.items():
        assert (dest / name).read_bytes() == data
        assert report["files"][name] == {"status": "downloaded", "bytes": len(data), "sha256": _hash(data)}
    assert report["bytes"] == report["fetched_bytes"] == sum(map(len, TOY.values()))
    assert report["from"] == url


def test_second_run_skips_files_already_there(served, tmp_path):
    root, url = served
    dl.download("toy", tmp_path / "data", base_url=url)
    for name in TOY:
        (root / name).unlink()  # a second fetch would now fail with 404

    report = dl.download("toy", tmp_path / "data", base_url=url)
    assert {f["status"] for f in report["files"].values()} == {"present"}
    assert report["fetched_bytes"] == 0


def test_corrupted_server_file_is_refused_and_not_written(served, tmp_path):
    root, url = served
    (root / "b.txt").write_bytes(b"tampered\n")
    dest = tmp_path / "data"
    with pytest.raises(PipelineError) as err:
        dl.download("toy", dest, base_url=url)
    assert err.value.message == (
        f"checksum mismatch for b.txt: expected {_hash(TOY['b.txt'])[:12]}..., "
        f"got {_hash(b'tampered' + bytes([10]))[:12]}... (9 bytes from {url}b.txt)"
    )
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt"]  # b.txt and its temp file are gone


def test_a_wrong_file_at_the_destination_is_fetched_again(served, tmp_path):
    _, url = served
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "a.txt").write_bytes(b"stale\n")
    report = dl.download("toy", dest, base_url=url)
    assert report["files"]["a.txt"]["status"] == "downloaded"
    assert (dest / "a.txt").read_bytes() == TOY["a.txt"]


def test_server_down_names_the_url_and_suggests_from(tmp_path):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    with pytest.raises(PipelineError) as err:
        dl.download("toy", tmp_path / "data", base_url=url)
    assert err.value.message.startswith(f"could not download {url}a.txt: ")
    assert "refused" in err.value.message.lower()
    assert "--from DIR" in err.value.hint
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def test_missing_server_file_is_an_http_error(served, tmp_path):
    root, url = served
    (root / "b.txt").unlink()
    with pytest.raises(PipelineError, match=r"^could not download .*/b\.txt: HTTP 404 "):
        dl.download("toy", tmp_path / "data", base_url=url)
    assert not (tmp_path / "data" / "b.txt").exists()


def test_interrupted_download_leaves_nothing(tmp_path):
    server, url = _serve(_TruncatingHandler)
    try:
        with pytest.raises(PipelineError) as err:
            dl.download("toy", tmp_path / "data", base_url=url)
    finally:
        server.shutdown()
        server.server_close()
    assert err.value.message == f"could not download {url}a.txt: broke off after 10 of 100000 bytes"
    assert list((tmp_path / "data").iterdir()) == []


def test_unknown_corpus_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        dl.download("wmt14", tmp_path)
    assert err.value.message == "unknown corpus 'wmt14'; known corpora: small_parallel_enja, tatoeba_jpn_eng, toy"


def test_a_corpus_without_a_pinnable_url_asks_for_a_local_copy(tmp_path):
    with pytest.raises(ConfigError) as err:
        dl.download("tatoeba_jpn_eng", tmp_path / "data")
    assert err.value.message.startswith("tatoeba_jpn_eng cannot be downloaded: its public source, ")
    assert err.value.hint == ("copy a local copy: `python cli.py download tatoeba_jpn_eng --from DIR`, "
                              "DIR holding jpn.txt")
    assert not (tmp_path / "data").exists()


def test_source_dir_copies_and_verifies(served, tmp_path):
    root, _ = served
    report = dl.download("toy", tmp_path / "data", source_dir=root)
    assert {f["status"] for f in report["files"].values()} == {"copied"}
    assert report["from"] == str(root)
    for name, data in TOY.items():
        assert (tmp_path / "data" / name).read_bytes() == data


def test_source_dir_missing_a_file_copies_nothing(served, tmp_path):
    root, _ = served
    (root / "b.txt").unlink()
    with pytest.raises(InputError) as err:
        dl.download("toy", tmp_path / "data", source_dir=root)
    assert err.value.message == f"{root} lacks b.txt"
    assert not (tmp_path / "data").exists()


def test_pinned_hashes_are_sha256_hex():
    files = dl.CORPORA["small_parallel_enja"].files
    assert sorted(files) == ["dev.en", "dev.ja", "test.en", "test.ja", "train.en", "train.ja"]
    assert sorted(dl.CORPORA["tatoeba_jpn_eng"].files) == ["jpn.txt"]
    for corpus in ("small_parallel_enja", "tatoeba_jpn_eng"):
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in dl.CORPORA[corpus].files.values())


@pytest.mark.slow
def test_real_tatoeba_copy_matches_the_pinned_hash(tmp_path):
    source = REAL_CORPUS.parent / "tatoeba_jpn_eng"
    if not (source / "jpn.txt").is_file():
        pytest.skip(f"no local copy of tatoeba_jpn_eng at {source.resolve()}")
    report = dl.download("tatoeba_jpn_eng", tmp_path / "tatoeba", source_dir=source)
    assert report["files"]["jpn.txt"]["status"] == "copied"
    assert sorted(p.name for p in (tmp_path / "tatoeba").iterdir()) == ["jpn.txt"]


@pytest.mark.slow
def test_real_corpus_over_loopback_matches_the_pinned_hashes(tmp_path):
    if not REAL_CORPUS.is_dir():
        pytest.skip(f"no local copy of small_parallel_enja at {REAL_CORPUS.resolve()}")
    server, url = _serve(partial(_QuietHandler, directory=str(REAL_CORPUS)))
    try:
        report = dl.download("small_parallel_enja", tmp_path / "enja", base_url=url)
    finally:
        server.shutdown()
        server.server_close()
    pinned = dl.CORPORA["small_parallel_enja"].files
    assert {name: f["sha256"] for name, f in report["files"].items()} == pinned
    assert {f["status"] for f in report["files"].values()} == {"downloaded"}
    assert sum(1 for _ in (tmp_path / "enja" / "train.en").open(encoding="utf-8")) == 50000
