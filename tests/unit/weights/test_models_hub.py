"""Pretrained weights by name, served from a local HTTP server (never the internet): download with progress, the
converted file cached and read offline, resumed and broken transfers, corrupt files, the offline error with its manual
steps, and a name whose file holds another model."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from helpers.official import official_release_file
from helpers.weights_server import WeightsServer, serve_weights, unreachable_url_template
from pgi_detect.weights import (
    PRETRAINED,
    WeightsDownloadError,
    WeightsError,
    pretrained_path,
    read_weights,
    weights_home,
)
from pgi_detect.weights.hub import HOME_ENV, URL_ENV, PretrainedWeights, official_cache_path

pytestmark = pytest.mark.usefixtures("single_torch_thread")
NAME = "yolov9-t-converted"  # an official name whose file is the small gelan-t
NAMES = [f"thing{i}" for i in range(5)]


@pytest.fixture(scope="module")
def release_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, torch.nn.Module]]:
    """Official-format files (bytes) and the models they hold: gelan-t (the converted t file) and a dual yolov9-t."""
    folder = tmp_path_factory.mktemp("release")
    files = {}
    for model in ("gelan-t", "yolov9-t"):
        detector = official_release_file(folder / f"{model}.pt", model, num_classes=5, names=NAMES)
        files[model] = ((folder / f"{model}.pt").read_bytes(), detector)
    return files


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> WeightsServer:
    with serve_weights() as server:
        monkeypatch.setenv(URL_ENV, server.url_template)
        monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
        yield server


def assert_same_weights(detector: torch.nn.Module, expected: torch.nn.Module) -> None:
    reference = expected.state_dict()
    assert detector.state_dict().keys() == reference.keys()
    for key, tensor in detector.state_dict().items():
        assert torch.equal(tensor, reference[key]), key


def test_a_name_is_downloaded_with_progress_converted_and_then_read_from_the_cache(server, release_files, capfd,
                                                                                    tmp_path):
    data, source = release_files["gelan-t"]
    server.files[f"{NAME}.pt"] = data
    path = pretrained_path(NAME, progress=True)
    err = capfd.readouterr().err
    url = server.url_template.format(name=NAME)
    assert f"Downloading {url}" in err and "100%" in err  # the tqdm bar
    assert path == tmp_path / "cache" / "converted" / f"{NAME}.pt"  # $PGI_DETECT_HOME
    assert official_cache_path(NAME).read_bytes() == data  # the release asset is kept next to it
    assert not list(weights_home().rglob("*.partial"))
    loaded = read_weights(NAME)
    assert (loaded.kind, loaded.spec.model, loaded.class_names) == ("detector file", "gelan-t", NAMES)
    assert loaded.detector.spec == loaded.spec and loaded.detector.num_branches == 1
    assert_same_weights(loaded.detector, source)
    assert len(server.requests) == 1
    read_weights(NAME)  # a cache hit: no second request
    assert len(server.requests) == 1


def test_the_cache_works_offline(server, release_files, monkeypatch):
    server.files[f"{NAME}.pt"] = release_files["gelan-t"][0]
    pretrained_path(NAME)
    monkeypatch.setenv(URL_ENV, unreachable_url_template())
    assert read_weights(NAME).spec.model == "gelan-t"


def test_a_broken_transfer_is_resumed_with_a_range_request(server, release_files, capfd):
    data, source = release_files["gelan-t"]
    server.files[f"{NAME}.pt"] = data
    server.cut_after[f"{NAME}.pt"] = 100_000
    assert_same_weights(read_weights(NAME).detector, source)
    assert server.requests_for(NAME) == [None, "bytes=100000-"]
    assert "resuming (attempt 2/3)" in capfd.readouterr().err
    assert official_cache_path(NAME).read_bytes() == data


def test_resuming_works_through_a_redirect(server, release_files):
    data, source = release_files["gelan-t"]
    server.redirects[f"{NAME}.pt"] = "storage/asset-123"
    server.files["storage/asset-123"] = data
    server.cut_after["storage/asset-123"] = 50_000
    assert_same_weights(read_weights(NAME).detector, source)
    assert server.requests_for(NAME) == [None, "bytes=50000-"]
    assert [r for p, r in server.requests if p == "storage/asset-123"] == [None, "bytes=50000-"]  # Range kept


def test_a_partial_file_of_an_earlier_run_is_resumed(server, release_files):
    data, source = release_files["gelan-t"]
    server.files[f"{NAME}.pt"] = data
    partial = official_cache_path(NAME).with_name(f"{NAME}.pt.partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:4096])
    assert_same_weights(read_weights(NAME).detector, source)
    assert server.requests_for(NAME) == ["bytes=4096-"]
    assert not partial.exists()


def test_a_server_that_ignores_range_gets_the_file_written_anew(server, release_files):
    data, source = release_files["gelan-t"]
    server.files[f"{NAME}.pt"] = data
    server.ignore_range = True
    partial = official_cache_path(NAME).with_name(f"{NAME}.pt.partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"stale bytes of another file")
    assert_same_weights(read_weights(NAME).detector, source)
    assert server.requests_for(NAME) == [f"bytes={len(b'stale bytes of another file')}-"]
    assert official_cache_path(NAME).read_bytes() == data


def test_a_transfer_that_keeps_breaking_fails_and_keeps_its_part_for_later(server, release_files):
    data, source = release_files["gelan-t"]
    server.files[f"{NAME}.pt"] = data

    class AlwaysCut(dict):
        def pop(self, key, default=None):
            return 1000

    server.cut_after = AlwaysCut()
    with pytest.raises(WeightsDownloadError, match="broke off 3 times") as error:
        pretrained_path(NAME)
    assert "curl -L -o" in str(error.value)
    partial = official_cache_path(NAME).with_name(f"{NAME}.pt.partial")
    assert partial.stat().st_size == 3000 and not official_cache_path(NAME).exists()
    server.cut_after = {}
    assert_same_weights(read_weights(NAME).detector, source)  # resumed from byte 3000
    assert server.requests_for(NAME)[-1] == "bytes=3000-"


def test_a_corrupt_download_leaves_nothing_in_the_cache(server, release_files):
    server.files[f"{NAME}.pt"] = b"<html>rate limited</html>" * 100
    with pytest.raises(WeightsError, match=r"(?s)not a readable weights file.*deleted from the cache"):
        pretrained_path(NAME)
    assert [p for p in weights_home().rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    server.files[f"{NAME}.pt"] = release_files["gelan-t"][0]
    assert read_weights(NAME).spec.model == "gelan-t"  # fetched anew
    assert len(server.requests_for(NAME)) == 2


def test_a_wrong_checksum_is_retried_then_refused(server, release_files, monkeypatch):
    monkeypatch.setitem(PRETRAINED, "tiny-test", PretrainedWeights("gelan-t", "gelan-t", sha256="0" * 64))
    server.files["tiny-test.pt"] = release_files["gelan-t"][0]
    with pytest.raises(WeightsDownloadError, match="expected SHA-256"):
        pretrained_path("tiny-test")
    assert len(server.requests_for("tiny-test")) == 3
    assert [p for p in weights_home().rglob("*") if p.is_file() and p.suffix != ".lock"] == []
    right = hashlib.sha256(release_files["gelan-t"][0]).hexdigest()
    monkeypatch.setitem(PRETRAINED, "tiny-test", PretrainedWeights("gelan-t", "gelan-t", sha256=right))
    assert read_weights("tiny-test").spec.model == "gelan-t"


def test_a_name_whose_file_holds_another_model_is_an_error(server, release_files):
    server.files[f"{NAME}.pt"] = release_files["yolov9-t"][0]  # the dual model under the stripped name
    with pytest.raises(WeightsError, match=f"holds yolov9-t weights, but '{NAME}' stands for gelan-t"):
        read_weights(NAME)
    assert not official_cache_path(NAME).exists()


def test_offline_error_names_the_url_and_the_manual_steps(monkeypatch, tmp_path, release_files):
    url_template = unreachable_url_template()
    monkeypatch.setenv(URL_ENV, url_template)
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
    with pytest.raises(WeightsDownloadError) as error:
        read_weights("yolov9-t-converted")
    message = str(error.value)
    url, target = url_template.format(name=NAME), official_cache_path(NAME)
    assert f"{url}: cannot connect" in message
    assert f"curl -L -o {target} {url}" in message and f"wget -O {target} {url}" in message
    assert "python scripts/convert_official.py --weights yolov9-t-converted.pt" in message
    # Following the message: the file fetched by hand into the cache is converted on first use.
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(release_files["gelan-t"][0])
    assert_same_weights(read_weights(NAME).detector, release_files["gelan-t"][1])


def test_unknown_asset_and_unknown_name(server):
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        pretrained_path("gelan-s")
    with pytest.raises(FileNotFoundError, match=r"gelan-x: weights file not found, and not a pretrained name \(gel"):
        read_weights("gelan-x")


def test_default_cache_follows_torch_hub(monkeypatch, tmp_path):
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert weights_home() == tmp_path / "torch" / "hub" / "pgi_detect"


# ------------------------------------------------------------------------------ official files without a name


@pytest.mark.parametrize("model", ["gelan-t", "yolov9-t"])
def test_official_files_are_read_directly_their_model_told_by_their_weights(tmp_path, release_files, model):
    data, source = release_files[model]
    path = tmp_path / "renamed-weights.pt"  # the file name says nothing
    path.write_bytes(data)
    loaded = read_weights(path)
    assert (loaded.kind, loaded.spec.model, loaded.spec.num_classes, loaded.class_names) == (
        "official", model, 5, NAMES)
    assert_same_weights(loaded.detector, source)


def test_weights_of_no_zoo_model_are_an_error(tmp_path, release_files):
    from pgi_detect.models import build_model
    from pgi_detect.weights import to_official_state_dict

    state = to_official_state_dict(build_model("gelan-t", num_classes=2))
    del state["model.0.conv.weight"]
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(WeightsError, match=r"(?s)none of the zoo models.*closest is gelan-t.*model\.0\.conv\.weight"):
        read_weights(tmp_path / "damaged.pt")
