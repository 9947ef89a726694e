"""Fetch a known corpus into a folder, each file checked against a pinned sha256.

A file is streamed to a temporary name beside its destination and renamed only once its hash
matches, so an interrupted or corrupted download never leaves a finished-looking file. A file
already there with the right hash is skipped. `source_dir` copies from a local folder instead of
the network (same checks); `base_url` replaces the registry's URL prefix (a mirror, or a loopback
server in tests). A corpus whose public source cannot be pinned has no URL: `source_dir` only.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pipeline.artifacts import atomic_path, sha256
from pipeline.errors import ConfigError, InputError, PipelineError
from pipeline.progress import log, progress

TIMEOUT_S = 30  # per connection attempt and per read, not for the whole file
CHUNK = 1 << 16


@dataclass(frozen=True)
class Corpus:
    """Where a corpus lives and the sha256 of each of its files."""

    base_url: str | None  # None: no public URL serves these exact files; copy them with --from
    files: dict[str, str]  # file name -> sha256
    about: str = ""
    no_url: str = ""  # why there is no base_url


CORPORA: dict[str, Corpus] = {
    "small_parallel_enja": Corpus(
        base_url="https://raw.githubusercontent.com/odashi/small_parallel_enja/master/",
        files={
            "train.ja": "fc81a1434349ec98a449d7ae9cd2530057f689637684ecfed3501ea6a8a07ecc",
            "train.en": "148b05dcd28638fe20ee84f2b1127001c80982be352007dda241fb759adadc76",
            "dev.ja": "cd534f56b8639dc130f86a365e5ec0aa70042000bdd740a622fbbf8b6be4acca",
            "dev.en": "04a2673449770657fd5e3b963cb856be3130923212b6db8ac7eaeef18f06c041",
            "test.ja": "d37dc460a81b064e4106c8913eb11fa300da05cf3f58a7a5bbfec7e20947ddef",
            "test.en": "45edb380749ec2b49cca7618fc5a7595fc9f791180672ba466b90c873a4aa8bf",
        },
        about="50k/500/500 ja-en pairs from the Tanaka corpus, tokenised (KyTea; Stanford, lower-cased)",
    ),
    "tatoeba_jpn_eng": Corpus(
        base_url=None,
        files={"jpn.txt": "996d3c6c2168e56b5e07a16d84d39c9accb53a1f26f75b7846a0a7d171fd6ee0"},
        about="41,649 raw ja-en pairs, `English<TAB>Japanese`, from tatoeba.org as exported by "
              "manythings.org/anki on 2018-04-07 (CC BY 2.0); no dev/test split (see `python cli.py split`)",
        no_url="its public source, manythings.org/anki's jpn-eng.zip, is a zip regenerated as Tatoeba grows, "
               "so no sha256 can be pinned for it; the copy pinned here is the 2018-04-07 export",
    ),
}


def download(
    corpus: str,
    dest: str | Path,
    base_url: str | None = None,
    source_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Fetch every file of `corpus` into the folder `dest`; return a report of what was done."""
    entry = _lookup(corpus)
    dest = Path(dest)
    if base_url and source_dir:
        raise ConfigError("give either a base URL or a source folder (--from), not both")
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest} is a file; the destination must be a folder")
    if source_dir is not None:
        source_dir = Path(source_dir)
        _check_source_dir(source_dir, corpus, entry)
        origin = str(source_dir)
    elif base_url or entry.base_url:
        origin = (base_url or entry.base_url).rstrip("/") + "/"
    else:
        raise ConfigError(f"{corpus} cannot be downloaded: {entry.no_url}",
                          hint=f"copy a local copy: `python cli.py download {corpus} --from DIR`, "
                               f"DIR holding {', '.join(entry.files)}")

    report: dict[str, Any] = {"corpus": corpus, "dest": str(dest), "from": origin, "files": {}}
    fetched = 0
    for name in progress(list(entry.files), desc=corpus, total=len(entry.files), unit="file"):
        expected = entry.files[name]
        target = dest / name
        if target.is_file() and sha256(target) == expected:
            log.info("%s: already present, hash matches", target)
            status = "present"
        else:
            if target.exists():
                log.warning("%s: hash does not match the pinned one; fetching it again", target)
            if source_dir is not None:
                size = _copy(source_dir / name, target, expected)
                status = "copied"
            else:
                size = _download(origin + name, target, expected)
                status = "downloaded"
            fetched += size
            log.info("%s: %s, %d bytes, sha256 ok", target, status, size)
        report["files"][name] = {"status": status, "bytes": target.stat().st_size, "sha256": expected}

    report["bytes"] = sum(f["bytes"] for f in report["files"].values())
    report["fetched_bytes"] = fetched
    return report


def _lookup(corpus: str) -> Corpus:
    if corpus not in CORPORA:
        raise ConfigError(f"unknown corpus {corpus!r}; known corpora: {', '.join(sorted(CORPORA))}")
    return CORPORA[corpus]


def _check_source_dir(source_dir: Path, corpus: str, entry: Corpus) -> None:
    """Refuse a local copy that lacks a file before copying any."""
    if not source_dir.is_dir():
        raise InputError(f"source folder {source_dir} does not exist or is not a folder")
    missing = [name for name in entry.files if not (source_dir / name).is_file()]
    if missing:
        raise InputError(f"{source_dir} lacks {', '.join(missing)}",
                         hint=f"a copy of {corpus} holds {', '.join(entry.files)}")


def _download(url: str, target: Path, expected: str) -> int:
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise _network_error(url, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _network_error(url, str(e.reason)) from None
    except (OSError, http.client.HTTPException) as e:
        raise _network_error(url, str(e) or type(e).__name__) from None
    with response:
        return _write_verified(_chunks(response, url), target, expected, url)


def _chunks(response: http.client.HTTPResponse, url: str) -> Iterator[bytes]:
    """The response body in blocks; a body that stops short (reset, timeout) is a network error."""
    expected = response.headers.get("Content-Length")
    received = 0
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, http.client.HTTPException) as e:
            raise _network_error(url, f"broke off after {received} bytes: {e or type(e).__name__}") from None
        if not chunk:
            break
        received += len(chunk)
        yield chunk
    # http.client's read(n) returns short, without an error, when the server hangs up early.
    if expected is not None and expected.isdigit() and received < int(expected):
        raise _network_error(url, f"broke off after {received} of {expected} bytes")


def _network_error(url: str, reason: str) -> PipelineError:
    return PipelineError(f"could not download {url}: {reason}",
                         hint="check the network, or copy the files from a local folder with `--from DIR`")


def _copy(source: Path, target: Path, expected: str) -> int:
    with source.open("rb") as f:
        return _write_verified(iter(lambda: f.read(CHUNK), b""), target, expected, str(source))


def _write_verified(chunks: Iterable[bytes], target: Path, expected: str, origin: str) -> int:
    """Write `chunks` to `target` through a temporary file, renamed only if the sha256 matches."""
    digest = hashlib.sha256()
    size = 0
    with atomic_path(target) as tmp:
        with tmp.open("wb") as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        actual = digest.hexdigest()
        if actual != expected:
            raise PipelineError(
                f"checksum mismatch for {target.name}: expected {expected[:12]}..., got {actual[:12]}... "
                f"({size} bytes from {origin})",
                hint="the copy there differs from the pinned one; nothing was written",
            )
    return size
