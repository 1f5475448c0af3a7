"""The checkpoint loader against real files and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import CountingProgress, cifar_checkpoint, shared_path
from file_server import FileServer, Route, serve_files
from safetensors.torch import save_file

import models
from models import CheckpointError
from models.checkpoints import download
from models.progress import Lines

# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture()
def file_server() -> Iterator[FileServer]:
    with serve_files() as server:
        yield server


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty download cache, downloads allowed, short timeout."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("RESNET_SERVE_CACHE_DIR", str(folder))
    monkeypatch.delenv("RESNET_SERVE_OFFLINE", raising=False)
    monkeypatch.setenv("RESNET_SERVE_DOWNLOAD_TIMEOUT", "10")
    return folder


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Files in the cache other than completed downloads (temp/partial files)."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name.startswith("."))


def logits(model: torch.nn.Module, side: int = 32) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model(torch.randn(2, 3, side, side))


@pytest.fixture(scope="module")
def resnet20_reference() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The shipped resnet20 weights (unwrapped) and their logits on a fixed input."""
    model = models.create_model("resnet20", weights=cifar_checkpoint("resnet20"))
    return {k: v.clone() for k, v in model.state_dict().items()}, logits(model)


# --- downloads -----------------------------------------------------------------------------------------


def test_download_good_file_then_reuse_offline(
    file_server: FileServer, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = cifar_checkpoint("resnet20").read_bytes()
    file_server.routes["/files/my-resnet20.th"] = Route(body)
    spec = file_server.url("/files/my-resnet20.th") + f"#sha256={sha256_of(body)}"

    loaded = models.load_checkpoint(spec, arch="resnet20")
    assert loaded.path == cache / "my-resnet20.th" and loaded.path.read_bytes() == body
    assert loaded.sha256 == sha256_of(body) and loaded.source == spec and loaded.num_classes == 10
    assert loaded.published is not None and loaded.published.spec == "cifar10:resnet20"  # matched by hash
    assert leftovers(cache) == []

    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    again = models.create_model("resnet20", weights=spec)
    assert file_server.hits["/files/my-resnet20.th"] == 1
    assert isinstance(again, models.ResNet)


#: How a download shows, by what the caller passes: a library user who passes nothing sees nothing.
DOWNLOAD_LINE = "downloading my-resnet20.th from 127.0.0.1: 1.1 MB ..."


@pytest.mark.parametrize("shown", ["nothing given", "plain lines", "counted"])
def test_a_download_shows_its_bytes_only_on_the_progress_it_is_given(
    shown: str, file_server: FileServer, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = cifar_checkpoint("resnet20").read_bytes()
    file_server.routes["/files/my-resnet20.th"] = Route(body)
    spec = file_server.url("/files/my-resnet20.th") + f"#sha256={sha256_of(body)}"
    lines: list[str] = []
    counting = CountingProgress()
    progress = {"nothing given": None, "plain lines": Lines(lines.append), "counted": counting}[shown]

    loaded = models.load_checkpoint(spec, **({} if progress is None else {"progress": progress}))
    assert loaded.path.read_bytes() == body
    assert capsys.readouterr().out == ""
    assert lines == ([DOWNLOAD_LINE] if shown == "plain lines" else [])
    expected = {"downloading my-resnet20.th from 127.0.0.1": (len(body), "B", len(body))}
    assert counting.steps == (expected if shown == "counted" else {})


def test_download_accepts_a_hash_prefix(file_server: FileServer, cache: Path) -> None:
    body = cifar_checkpoint("resnet20").read_bytes()
    file_server.routes["/resnet20-12fca82f.th"] = Route(body)
    loaded = models.load_checkpoint(file_server.url("/resnet20-12fca82f.th#sha256=12fca82f"))
    assert loaded.sha256.startswith("12fca82f")


def test_download_with_wrong_hash_leaves_nothing(file_server: FileServer, cache: Path) -> None:
    body = cifar_checkpoint("resnet20").read_bytes()
    file_server.routes["/w.th"] = Route(body)
    wrong = "0" * 64
    with pytest.raises(CheckpointError, match=rf"SHA-256 {sha256_of(body)}, expected {wrong}"):
        models.load_checkpoint(file_server.url(f"/w.th#sha256={wrong}"))
    assert not (cache / "w.th").exists()
    assert leftovers(cache) == []


def test_truncated_download_leaves_nothing(file_server: FileServer, cache: Path) -> None:
    body = cifar_checkpoint("resnet20").read_bytes()
    cut = body[: len(body) // 3]
    file_server.routes["/cut.th"] = Route(cut, announced_length=len(body))
    with pytest.raises(CheckpointError, match=r"cut\.th failed") as caught:
        models.load_checkpoint(file_server.url(f"/cut.th#sha256={sha256_of(body)}"))
    assert str(cache / "cut.th") in str(caught.value)
    assert not (cache / "cut.th").exists()
    assert leftovers(cache) == []


def test_http_404_names_url_and_drop_path(file_server: FileServer, cache: Path) -> None:
    url = file_server.url("/missing-abcdef12.th")
    with pytest.raises(CheckpointError) as caught:
        models.load_checkpoint(f"{url}#sha256=abcdef12")
    message = str(caught.value)
    assert "HTTP 404" in message and url in message and str(cache / "missing-abcdef12.th") in message
    assert list(cache.iterdir()) == []


def test_unreachable_server_names_drop_path(cache: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x-abcdef12.th"
    with pytest.raises(CheckpointError, match=rf"{url}.*drop it at {cache / 'x-abcdef12.th'}"):
        models.load_checkpoint(f"{url}#sha256=abcdef12")


def test_unknown_url_without_hash_is_refused(file_server: FileServer, cache: Path) -> None:
    file_server.routes["/a.th"] = Route(b"whatever")
    with pytest.raises(CheckpointError, match=r"#sha256="):
        models.load_checkpoint(file_server.url("/a.th"))
    assert file_server.hits == {}


def test_offline_and_not_cached(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    expected = {
        "torchvision:resnet50:IMAGENET1K_V2": (
            "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
            cache / "resnet50-11ad3fa6.pth",
        ),
        "hf:timm/seresnet50.a1_in1k": (
            "https://huggingface.co/timm/seresnet50.a1_in1k/resolve/main/model.safetensors",
            cache / "huggingface" / "timm" / "seresnet50.a1_in1k" / "model.safetensors",
        ),
        "cifar10:resnet110": (
            "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet110-1d1ed7c2.th",
            cache / "resnet110-1d1ed7c2.th",
        ),
    }
    for spec, (url, path) in expected.items():
        with pytest.raises(CheckpointError) as caught:
            models.load_checkpoint(spec)
        message = str(caught.value)
        assert url in message and f"drop it at {path}" in message, message


def test_cache_seeded_from_shared_is_used_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    for shipped in shared_path("weights", "cifar10").glob("*.th"):
        shutil.copy(shipped, cache / shipped.name)
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")

    loaded = models.load_checkpoint("cifar10:resnet32", arch="resnet32")
    published = models.get_model_config("resnet32").checkpoints[0]
    assert loaded.published == published and loaded.sha256 == published.sha256
    assert loaded.path == cache / "resnet32-d509ac18.th"
    model = models.create_model("resnet32", weights="cifar10:resnet32")
    assert model.linear.out_features == 10
    with pytest.raises(CheckpointError, match="published resnet32 checkpoint, not one for resnet20"):
        models.load_checkpoint("cifar10:resnet32", arch="resnet20")


def test_corrupt_cached_file_is_not_trusted_offline(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.mkdir()
    (cache / "resnet32-d509ac18.th").write_bytes(b"not the published file")
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"cached .*resnet32-d509ac18\.th has SHA-256"):
        models.load_checkpoint("cifar10:resnet32")


def test_embedded_resnet20_needs_no_network_and_no_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package ships the published CIFAR-10 ResNet-20 (with its licence): the default config's
    ``cifar10:resnet20`` resolves offline from an empty cache, the file being the published one."""
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    loaded = models.load_checkpoint("cifar10:resnet20", arch="resnet20")
    published = models.get_model_config("resnet20").checkpoints[0]
    assert loaded.path.parent == download.EMBEDDED_DIR / "cifar10" and loaded.sha256 == published.sha256
    assert loaded.path.read_bytes() == cifar_checkpoint("resnet20").read_bytes()
    assert "BSD" in (loaded.path.parent / "LICENSE").read_text() + (loaded.path.parent / "README.md").read_text()
    assert "Yerlan Idelbayev" in (loaded.path.parent / "LICENSE").read_text()
    assert not cache.exists()  # nothing was written to the cache


def test_a_damaged_embedded_file_is_refused(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The embedded copy is hash-checked on every load, as a download is."""
    embedded = tmp_path / "weights"
    (embedded / "cifar10").mkdir(parents=True)
    (embedded / "cifar10" / "resnet20-12fca82f.th").write_bytes(b"not the published file")
    monkeypatch.setattr(download, "EMBEDDED_DIR", embedded)
    with pytest.raises(CheckpointError, match=r"embedded .*resnet20-12fca82f\.th has SHA-256 .*reinstall"):
        models.load_checkpoint("cifar10:resnet20")


def test_hf_spec_from_seeded_cache(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No hash is published for hub files: a cached file is used and its hash recorded."""
    monkeypatch.setenv("RESNET_SERVE_OFFLINE", "1")
    source = models.create_model("seresnext26d_32x4d")
    target = cache / "huggingface" / "timm" / "seresnext26d_32x4d.bt_in1k" / "model.safetensors"
    target.parent.mkdir(parents=True)
    save_file(source.state_dict(), str(target))

    loaded = models.load_checkpoint("hf:timm/seresnext26d_32x4d.bt_in1k")
    assert loaded.published is not None and loaded.published.tag == "bt_in1k"
    assert loaded.sha256 == sha256_of(target.read_bytes())
    model = models.create_model("seresnext26d_32x4d", weights=loaded)
    assert torch.equal(logits(model, 64), logits(source.eval(), 64))
    pre = models.preprocessing_for("seresnext26d_32x4d", loaded)
    assert (pre.resize_size, pre.crop_size, pre.interpolation) == (256, 224, "bicubic")


# --- local files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 3}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, id="model"),
        pytest.param(lambda sd: {"model_state_dict": sd}, id="model_state_dict"),
        pytest.param(lambda sd: {f"module.{k}": v for k, v in sd.items()}, id="module-prefix"),
        pytest.param(
            lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}, id="model+module-prefix"
        ),
    ],
)
def test_unwraps_what_people_save(
    wrap: object, tmp_path: Path, resnet20_reference: tuple[dict[str, torch.Tensor], torch.Tensor]
) -> None:
    state_dict, reference_logits = resnet20_reference
    path = tmp_path / "saved.pt"
    torch.save(wrap(state_dict), path)  # type: ignore[operator]
    loaded = models.load_checkpoint(path)
    assert set(loaded.state_dict) == set(state_dict)
    assert torch.equal(logits(models.create_model("resnet20", weights=path)), reference_logits)


def test_safetensors(
    tmp_path: Path, resnet20_reference: tuple[dict[str, torch.Tensor], torch.Tensor]
) -> None:
    state_dict, reference_logits = resnet20_reference
    path = tmp_path / "resnet20.safetensors"
    save_file(state_dict, str(path))
    loaded = models.load_checkpoint(path)
    assert loaded.sha256 == sha256_of(path.read_bytes()) and loaded.published is None
    assert torch.equal(logits(models.create_model("resnet20", weights=loaded)), reference_logits)


def test_head_named_fc_loads_into_linear(
    tmp_path: Path, resnet20_reference: tuple[dict[str, torch.Tensor], torch.Tensor]
) -> None:
    state_dict, reference_logits = resnet20_reference
    renamed = {
        k.replace("linear.", "fc.") if k.startswith("linear.") else k: v for k, v in state_dict.items()
    }
    torch.save(renamed, tmp_path / "fc.pth")
    assert torch.equal(logits(models.create_model("resnet20", weights=tmp_path / "fc.pth")), reference_logits)


def test_shipped_cifar_checkpoint_is_recognised() -> None:
    loaded = models.load_checkpoint(cifar_checkpoint("resnet32"))
    assert loaded.published is not None and loaded.published.spec == "cifar10:resnet32"
    assert not any(key.startswith("module.") for key in loaded.state_dict)
    assert models.preprocessing_for("resnet32", cifar_checkpoint("resnet32")).input_size == (3, 32, 32)


class RunsCode:
    """Unpickling this would call os.system: weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_unsafe_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing .*evil\.pth.*would run code"):
        models.load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("classes", [10, 37])
def test_fine_tuned_heads_load(classes: int, tmp_path: Path) -> None:
    source = models.create_model("resnet18", num_classes=classes)
    path = tmp_path / f"finetune-{classes}.pth"
    torch.save({"model": source.state_dict()}, path)
    model = models.create_model("resnet18", weights=path)
    assert model.fc.out_features == classes
    assert torch.equal(logits(model, 64), logits(source, 64))
    assert models.labels_for("resnet18", classes) is None
    assert models.preprocessing_for("resnet18", path) == models.get_model_config("resnet18").preprocessing


def test_mismatch_names_keys_and_the_fitting_architecture(tmp_path: Path) -> None:
    path = tmp_path / "se.pth"
    torch.save(models.create_model("seresnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as caught:
        models.create_model("resnet18", weights=path)
    message = str(caught.value)
    assert "does not fit resnet18" in message
    assert "32 unexpected keys (layer1.0.se.fc1.weight" in message and "missing" not in message
    assert "fit seresnet18" in message


def test_wrong_depth_names_missing_keys_and_fitting_architecture() -> None:
    with pytest.raises(CheckpointError) as caught:
        models.create_model("resnet32", weights=cifar_checkpoint("resnet20"))
    message = str(caught.value)
    assert "missing keys (layer1.3.conv1.weight" in message and "fit resnet20" in message


def test_misshaped_head_is_named(tmp_path: Path) -> None:
    path = tmp_path / "ten.pth"
    torch.save(models.create_model("resnet18", num_classes=10).state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"2 mis-shaped keys \(fc\.weight: checkpoint \(10, 512\) vs model \(1000, 512\)",
    ):
        models.create_model("resnet18", num_classes=1000, weights=path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        pytest.param(b"\x00garbage bytes", "cannot read", id="garbage"),
        pytest.param(None, "not a state_dict", id="not-tensors"),
        pytest.param(b"", "cannot read", id="empty"),
    ],
)
def test_unreadable_files(content: bytes | None, match: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    if content is None:
        torch.save({"fc.weight": torch.zeros(1, 1), "note": "hello"}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        models.load_checkpoint(path)


def test_missing_file_and_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint file at"):
        models.load_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="no published checkpoint 'IMAGENET1K_V9'"):
        models.load_checkpoint("torchvision:resnet50:IMAGENET1K_V9")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        models.load_checkpoint("cifar10:resnet21")
    with pytest.raises(CheckpointError, match="timm architecture"):
        models.load_checkpoint("torchvision:seresnet50:IMAGENET1K_V1")
    with pytest.raises(CheckpointError, match="fragment"):
        models.load_checkpoint("https://example.invalid/x.pth#md5=abc")
