"""mrcnn.io.download against a real HTTP server on 127.0.0.1 serving files made in tmp_path."""
import functools
import hashlib
import http.server
import socket
import threading

import h5py
import numpy as np
import pytest

from mrcnn import utils
from mrcnn.io import download
from mrcnn.io.download import DownloadError


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and counts GET requests per path."""

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/truncated":
            # promises 1000 bytes, sends 500, then closes the connection
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 500)
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base_url, served folder, list of requested paths)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(CountingHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, httpd.requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def serve_bytes(root, name, size, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    (root / name).write_bytes(data)
    return data


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_good_download(server, tmp_path):
    base, root, requests = server
    data = serve_bytes(root, "w.h5", 3 * (1 << 20) + 17)   # several chunks
    dest = tmp_path / "out" / "w.h5"
    got = download.download_file(f"{base}/w.h5", dest, sha256=hashlib.sha256(data).hexdigest(),
                                 md5=hashlib.md5(data).hexdigest(), expected_size=len(data),
                                 progress=False)
    assert got == dest
    assert dest.read_bytes() == data
    assert leftovers(dest.parent) == ["w.h5"]
    assert requests == ["/w.h5"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, root, _ = server
    serve_bytes(root, "w.h5", 5000)
    dest = tmp_path / "out" / "w.h5"
    with pytest.raises(DownloadError, match="sha256") as err:
        download.download_file(f"{base}/w.h5", dest, sha256="0" * 64, progress=False)
    assert "\n" not in str(err.value)
    assert leftovers(dest.parent) == []
    with pytest.raises(DownloadError, match="md5"):
        download.download_file(f"{base}/w.h5", dest, md5="0" * 32, progress=False)
    assert leftovers(dest.parent) == []


def test_size_mismatch_keeps_old_file(server, tmp_path):
    base, root, _ = server
    serve_bytes(root, "w.h5", 5000)
    dest = tmp_path / "out" / "w.h5"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    with pytest.raises(DownloadError, match="5000 bytes, expected 4999"):
        download.download_file(f"{base}/w.h5", dest, expected_size=4999, progress=False)
    assert dest.read_bytes() == b"old"
    assert leftovers(dest.parent) == ["w.h5"]


def test_truncated_transfer(server, tmp_path):
    base, _, _ = server
    dest = tmp_path / "out" / "w.h5"
    with pytest.raises(DownloadError) as err:
        download.download_file(f"{base}/truncated", dest, progress=True, timeout=5)
    assert "500" in str(err.value)
    assert leftovers(dest.parent) == []


def test_http_404(server, tmp_path):
    base, _, _ = server
    dest = tmp_path / "out" / "missing.h5"
    with pytest.raises(DownloadError, match="HTTP 404") as err:
        download.download_file(f"{base}/missing.h5", dest, progress=False)
    assert str(dest) in str(err.value)
    assert leftovers(dest.parent) == []


def test_refused_port_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the socket is closed: nothing listens on the port
    dest = tmp_path / "out" / "w.h5"
    url = f"http://127.0.0.1:{port}/w.h5"
    with pytest.raises(DownloadError, match="could not reach") as err:
        download.download_file(url, dest, progress=False, timeout=5)
    message = str(err.value)
    assert url in message and str(dest) in message and "\n" not in message
    assert leftovers(dest.parent) == []


def test_cached_download_reuses_valid_file(server, tmp_path, monkeypatch):
    base, root, requests = server
    data = serve_bytes(root, "w.h5", 2048)
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setenv("MRCNN_CACHE_DIR", str(tmp_path / "cache"))
    first = download.cached_download(f"{base}/w.h5", "w.h5", sha256=sha, progress=False)
    assert first == tmp_path / "cache" / "w.h5"
    second = download.cached_download(f"{base}/w.h5", "w.h5", sha256=sha, progress=False)
    assert second == first and first.read_bytes() == data
    assert requests == ["/w.h5"]
    # a corrupted cached copy fails verification and is fetched again
    first.write_bytes(b"x" * 2048)
    download.cached_download(f"{base}/w.h5", "w.h5", sha256=sha, progress=False)
    assert first.read_bytes() == data and len(requests) == 2


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MRCNN_CACHE_DIR", str(tmp_path / "c"))
    assert download.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MRCNN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert download.default_cache_dir() == tmp_path / ".cache" / "isic-mrcnn"


def test_coco_weights_checked_by_size_and_keras_layout(server, tmp_path):
    base, root, requests = server
    with h5py.File(root / "mask_rcnn_coco.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"conv1"])
        f.create_group("conv1")
    serve_bytes(root, "not_keras.h5", 4096)
    size = (root / "mask_rcnn_coco.h5").stat().st_size
    dest = tmp_path / "weights" / "mask_rcnn_coco.h5"
    got = download.download_coco_weights(dest, progress=False, url=f"{base}/mask_rcnn_coco.h5",
                                         expected_size=size)
    assert got == dest and dest.read_bytes() == (root / "mask_rcnn_coco.h5").read_bytes()
    # a present, valid file is not fetched again
    download.download_coco_weights(dest, progress=False, url=f"{base}/mask_rcnn_coco.h5",
                                   expected_size=size)
    assert requests == ["/mask_rcnn_coco.h5"]
    bad = tmp_path / "weights" / "bad.h5"
    with pytest.raises(DownloadError, match="not a readable HDF5"):
        download.download_coco_weights(bad, progress=False, url=f"{base}/not_keras.h5",
                                       expected_size=4096)
    assert leftovers(bad.parent) == ["mask_rcnn_coco.h5"]


def test_matterport_names_and_constants():
    assert utils.COCO_MODEL_URL == ("https://github.com/matterport/Mask_RCNN/releases/download/"
                                    "v2.0/mask_rcnn_coco.h5")
    assert download.COCO_MODEL_SIZE == 257_557_808
    assert download.IMAGENET_RESNET50_MD5 == "a268eb855778b3df3c7506639542a6af"
    assert download.IMAGENET_RESNET50_URL.endswith(
        "v0.2/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")


def test_imagenet_weights_use_the_cache_without_network(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    content = b"stand-in for the resnet50 file"
    (cache / download.IMAGENET_RESNET50_FILENAME).write_bytes(content)
    monkeypatch.setattr(download, "IMAGENET_RESNET50_MD5", hashlib.md5(content).hexdigest())

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used although the cache is valid")

    monkeypatch.setattr(download, "download_file", no_network)
    assert download.imagenet_resnet50_weights_path(cache_dir=cache) == \
        cache / download.IMAGENET_RESNET50_FILENAME
