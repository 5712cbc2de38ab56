"""Local folders and a real S3 server (SeaweedFS) behind one storage interface."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dit_worker.checkpoints.sources import s3_snapshot
from dit_worker.storage.objects import StorageError, open_storage


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write into, for root (read-only sysfs) and other users alike."""
    if os.geteuid() == 0:
        return Path("/sys/dit-worker-test-out")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return locked / "out"


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    if request.param == "local":
        return open_storage(str(tmp_path / "out"))
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return open_storage(f"s3://{bucket}/runs/a")


def test_put_get_stat_list_delete(store) -> None:
    assert store.stat("images/00000/00000001.png") is None
    store.put("images/00000/00000001.png", b"png-1")
    store.put("images/00000/00000000.png", b"png-0")
    store.put("metadata/part-00000.parquet", b"meta")
    assert store.get("images/00000/00000001.png") == b"png-1"
    assert [o.key for o in store.list("images/")] == ["images/00000/00000000.png", "images/00000/00000001.png"]
    assert [o.key for o in store.list("metadata/part-")] == ["metadata/part-00000.parquet"]
    assert store.stat("metadata/part-00000.parquet").size == 4
    before = store.stat("images/00000/00000001.png")
    store.put("images/00000/00000001.png", b"png-1-rewritten")  # idempotent key, new content
    after = store.stat("images/00000/00000001.png")
    assert after.etag != before.etag and store.get("images/00000/00000001.png") == b"png-1-rewritten"
    store.delete("images/00000/00000001.png")
    assert not store.exists("images/00000/00000001.png")
    with pytest.raises(StorageError, match="no such object"):
        store.get("images/00000/00000001.png")
    store.check_writable()
    assert [o.key for o in store.list("")] == ["images/00000/00000000.png", "metadata/part-00000.parquet"]


def test_unwritable_local_folder_is_refused_without_creating_it(tmp_path: Path) -> None:
    out = unwritable_folder(tmp_path)
    with pytest.raises(StorageError, match="folder is not writable"):
        open_storage(str(out)).check_writable()
    assert not out.exists()


def test_local_folder_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        open_storage(str(tmp_path / "file" / "out")).check_writable()


def test_missing_bucket_is_refused(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    store = open_storage("s3://no-such-bucket-here/x", s3_endpoint=s3_server.endpoint)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-here' does not exist"):
        store.check_writable()


def test_wrong_credentials_are_refused(s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = s3_server.env() | {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StorageError, match="access denied"):
        open_storage(f"s3://{s3_bucket}/out").check_writable()
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket=s3_bucket)


def test_bad_urls() -> None:
    with pytest.raises(StorageError, match="missing bucket name"):
        open_storage("s3:///prefix")
    with pytest.raises(StorageError, match="unsupported scheme"):
        open_storage("gs://bucket/prefix")


def test_s3_model_prefix_is_cached_once(s3_server, s3_bucket: str, tmp_path: Path, monkeypatch) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DIT_WORKER_CACHE", str(tmp_path / "cache"))
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="models/dit/transformer/config.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="models/dit/model_index.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="models/dit2/other.json", Body=b"{}")  # a sibling prefix
    path = s3_snapshot(f"s3://{s3_bucket}/models/dit")
    assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()) == [
        ".complete",
        "model_index.json",
        "transformer/config.json",
    ]
    client.delete_object(Bucket=s3_bucket, Key="models/dit/model_index.json")
    assert s3_snapshot(f"s3://{s3_bucket}/models/dit") == path  # served from the cache
    assert (path / "model_index.json").is_file()
