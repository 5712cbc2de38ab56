"""Model sources: hub ids through huggingface_hub's cache, and s3:// prefixes through the node cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from dit_worker import load_pipeline

SCRIPT = """
import sys
from dit_worker import load_pipeline
pipe = load_pipeline("facebook/DiT-XL-2-256", device="cpu", dtype="float32")
print(len(pipe.labels), pipe.class_ids(["umbrella"])[0])
"""


def test_hub_id_resolves_through_the_hub_cache(tmp_path: Path, tiny_ckpt: Path) -> None:
    """The cache layout huggingface_hub itself writes; offline, so no network is needed."""
    repo = tmp_path / "hub" / "models--facebook--DiT-XL-2-256"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_ckpt, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1000", "879"]
    # Not in the cache: a clear error, not a traceback from deep inside huggingface_hub.
    env["HF_HUB_CACHE"] = str(tmp_path / "empty")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert (
        "model 'facebook/DiT-XL-2-256': not a local path, and fetching it from the Hugging Face hub failed"
        in out.stderr
    )


def test_s3_model_source(s3_server, s3_bucket: str, tiny_ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIT_WORKER_CACHE", str(tmp_path / "cache"))
    client = s3_server.client()
    for path in tiny_ckpt.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"models/tiny/{path.relative_to(tiny_ckpt).as_posix()}")
    remote = load_pipeline(f"s3://{s3_bucket}/models/tiny", device="cpu", dtype="float32")
    local = load_pipeline(tiny_ckpt, device="cpu", dtype="float32")
    kw = dict(sampler="ddim", steps=3)
    assert np.array_equal(remote.generate([1], [2], **kw), local.generate([1], [2], **kw))


def test_a_metric_model_not_in_the_hub_cache_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """A metric's model (--clip-model and the like) fetched through the same hub client call, offline."""
    import pytest

    from dit_worker.metrics.errors import MetricsInputError
    from dit_worker.metrics.hf_models import resolve_hf_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(MetricsInputError) as caught:
        resolve_hf_model("openai/clip-vit-base-patch32", flag="--clip-model", model_type="clip")
    message = str(caught.value)
    assert message.startswith("--clip-model openai/clip-vit-base-patch32: not a local directory, and fetching it")
    assert "\n" not in message and "save_pretrained" in message
