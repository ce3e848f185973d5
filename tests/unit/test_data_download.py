"""Downloads for real, from a local HTTP server on 127.0.0.1 (a thread) serving archives built here:
a good one, a corrupted one, one with a bad member CRC, a wrong checksum, and a server that drops the
connection mid-body or before answering. A failure keeps nothing in the cache."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import pytest

from recforge.data.datamodule import RecDataModule
from recforge.data.download import download
from recforge.data.sources.lightgcn import LightGCNData
from recforge.data.sources.movielens import MovieLens
from recforge.data.split import RandomSplit
from recforge.errors import RecForgeError

RATINGS = "userId,movieId,rating,timestamp\r\n" + "".join(f"{u},{i},{(u + i) % 5 + 1}.0,{u * 10 + i}\r\n"
                                                          for u in range(1, 9) for i in range(1, 9))


def archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ml-latest-small/ratings.csv", RATINGS)
        zf.writestr("ml-latest-small/movies.csv", "movieId,title,genres\r\n" +
                    "".join(f"{i},Movie {i},Drama\r\n" for i in range(1, 9)))
    return buffer.getvalue()


GOOD = archive()
BAD_CRC = bytearray(GOOD)
BAD_CRC[60] ^= 0xFF  # inside the first member's compressed data


class Handler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        Handler.hits.append(self.path)
        name = self.path.strip("/").split("/")[0]
        body = {"good": GOOD, "garbage": b"this is not a zip archive" * 10, "crc": bytes(BAD_CRC),
                "drop": GOOD, "test.txt": b"0 1\n1 0\n", "train.txt": b"0 0 2\n1 1 2\n"}.get(name)
        if name == "reset":
            self.close_connection = True
            self.connection.close()  # no response at all
            return
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name == "drop":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()) if cache.exists() else []


def source(url: str, cache: Path, verify: bool = False) -> MovieLens:
    return MovieLens("ml-latest-small", data_dir=None, cache_dir=str(cache), url=url, verify=verify)


def test_download_extract_load_and_reuse(server, tmp_path):
    cache = tmp_path / "cache"
    dm = RecDataModule(source(f"{server}/good/ml-latest-small.zip", cache), RandomSplit(0.2, 0.2), cache_dir=str(cache))
    dm.setup()
    assert dm.n_users == 8 and dm.n_items == 8
    recorded = cache / "downloads" / "ml-latest-small.zip.sha256"
    assert recorded.is_file() and len(recorded.read_text().split()[0]) == 64  # observed checksum recorded
    hits = len(Handler.hits)
    source(f"{server}/good/ml-latest-small.zip", cache).load()  # second time: from the cache, no request
    assert len(Handler.hits) == hits


def test_known_checksum_of_an_extracted_file_is_verified(server, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(RecForgeError, match=r"ratings.csv: checksum mismatch .* download it again"):
        source(f"{server}/good/ml-latest-small.zip", cache, verify=True).load()
    assert not (cache / "raw").exists() or not leftovers(cache / "raw")
    assert not (cache / "downloads" / "ml-latest-small.zip").exists()


@pytest.mark.parametrize("name, message", [
    ("garbage", r"not a valid zip archive .* removed, try again"),
    ("crc", r"not a valid zip archive .* removed, try again"),
    ("drop", r"was cut off"),
    ("reset", r"could not download .* paths.data_dir"),
    ("missing", r"could not download .*404"),
])
def test_broken_downloads_leave_nothing_behind(server, tmp_path, name, message):
    cache = tmp_path / "cache"
    with pytest.raises(RecForgeError, match=message):
        source(f"{server}/{name}/ml-latest-small.zip", cache).load()
    assert [f for f in leftovers(cache) if not f.endswith("file_digests.json")] == []


def test_a_wrong_checksum_keeps_nothing(server, tmp_path):
    dest = tmp_path / "f.zip"
    with pytest.raises(RecForgeError, match="checksum mismatch for .*nothing was kept"):
        download(f"{server}/good/x.zip", dest, sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []
    # a known checksum checked during a single-file download (Gowalla's test.txt is known)
    src = LightGCNData("gowalla", cache_dir=str(tmp_path / "c"), url=server + "/{file}")
    with pytest.raises(RecForgeError, match="checksum mismatch"):
        src.load()
    assert not (tmp_path / "c" / "raw" / "gowalla-lightgcn" / "test.txt").exists()
    assert len(LightGCNData("gowalla", cache_dir=str(tmp_path / "c"), url=server + "/{file}", verify=False).load()
               .interactions) == 6


def test_a_local_folder_without_the_files_is_named_with_what_it_lacks(server, tmp_path):
    """RECFORGE_DATA_DIR set to a folder without the release: the error names the folders searched and the file."""
    empty = tmp_path / "datasets"
    empty.mkdir()
    src = MovieLens("ml-latest-small", data_dir=str(empty), cache_dir=str(tmp_path / "cache"),
                    url=f"{server}/missing/ml-latest-small.zip")
    with pytest.raises(RecForgeError) as info:
        src.load()
    assert str(info.value).startswith(f"paths.data_dir={empty} (RECFORGE_DATA_DIR) has no ratings.csv in "
                                      f"{empty / 'ml-latest-small'} or {empty}, so RecForge tried to download it")
    assert "404" in str(info.value)
