"""The released model as MLflow serves it: registered as pets-unet@champion in a throwaway SQLite
store, served by `mlflow models serve` on 127.0.0.1, one real request of two sample photos."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SAMPLE_PETS, SMALL_PETS
from PIL import Image

from unet_ssl.core.inference import classes_to_trimap, load_segmenter, segment
from unet_ssl.core.runtime import make_runtime
from unet_ssl.experiments import release
from unet_ssl.stages.evaluate import predict_photos

MODEL = REPO / "models" / "pets-unet.pt"
START_TIMEOUT = 120  # seconds for the server to answer /ping
REQUEST_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photos(names: list[str], size: int) -> np.ndarray:
    """Real sample photos resized to the model's resolution, as the pyfunc takes them: (N, H, W, 3) uint8."""
    return np.stack([np.asarray(Image.open(SAMPLE_PETS / "images" / f"{n}.jpg").convert("RGB").resize((size, size)))
                     for n in names])


def wait_for_ping(url: str, server: subprocess.Popen, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT:
        if server.poll() is not None:
            pytest.fail(f"mlflow models serve exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"no answer on {url}/ping within {START_TIMEOUT} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    """Ends the server and its workers (its own process group), forcefully if it does not stop."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


def test_release_registers_a_servable_champion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the store keeps artifacts in ./mlruns
    version = release.register(MODEL, {"source": "test"})
    champion = mlflow.MlflowClient(tracking_uri=uri).get_model_version_by_alias(release.REGISTERED_MODEL, release.ALIAS)
    assert champion.version == version.version

    photo = SAMPLE_PETS / "images" / f"{SMALL_PETS[0]}.jpg"
    for source, out in ((f"models:/{release.REGISTERED_MODEL}@{release.ALIAS}", "registry"), (str(MODEL), "file")):
        predict_photos(source, [photo], tmp_path / out)
    from_registry, from_file = (np.asarray(Image.open(tmp_path / out / f"{photo.stem}.png"))
                                for out in ("registry", "file"))
    assert np.array_equal(from_registry, from_file)  # `unet-ssl predict` takes the registered model as well

    model, size = load_segmenter(MODEL)
    batch = photos(SMALL_PETS[:2], size)
    runtime = make_runtime({"device": "cpu", "channels_last": False})
    expected = np.stack([classes_to_trimap(m).numpy()
                         for m in segment(model, list(torch.from_numpy(batch).permute(0, 3, 1, 2)), runtime, size)])

    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve",
             "-m", f"models:/{release.REGISTERED_MODEL}@{release.ALIAS}",
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env={**os.environ, "MLFLOW_TRACKING_URI": uri}, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        started = wait_for_ping(url, server, log)
        body = json.dumps({"inputs": batch.tolist()}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        t = time.monotonic()
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            answer = response.read()
        seconds = time.monotonic() - t
    finally:
        stop(server)
    masks = np.asarray(json.loads(answer)["predictions"])
    print(f"\nserver up in {started:.1f} s; request {len(body):,} bytes ({len(batch)} photos {size}x{size}), "
          f"response {len(answer):,} bytes in {seconds:.2f} s")
    assert masks.shape == (2, size, size) and set(np.unique(masks)) <= {1, 2, 3}
    assert (masks == expected).mean() > 0.999  # the server computes what the package computes
