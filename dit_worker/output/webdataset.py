"""--format webdataset: one tar per shard, `<sample_id>.<ext>` + `<sample_id>.json` per sample."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow as pa

from dit_worker.output.layout import member_name


def webdataset_tar(table: pa.Table, images: list[bytes], extension: str = "png") -> bytes:
    """`<sample_id>.<extension>` + `<sample_id>.json` per sample, with fixed owner and times so a
    retried shard writes the same bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row, image in zip(table.drop_columns(["image_key"]).to_pylist(), images, strict=True):
            for ext, data in ((extension, image), ("json", json.dumps(row, sort_keys=True).encode())):
                info = tarfile.TarInfo(member_name(row["sample_id"], ext))
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
