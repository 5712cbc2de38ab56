"""`python -m jobs.selfcheck --quick` on this CPU: one run of the command, then each check's lines read
against what the check claims, re-measured where the test can (the kept job outputs, the FLOP count);
bad flags are refused in one line. Each check can be made to fail: tests/mutations.py breaks the product
under each one and this file must notice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dit_worker.checkpoints.convert import TINY_DIT
from dit_worker.checkpoints.tiny_pipelines import FAMILY_BUILDERS
from dit_worker.models.flops import transformer_flops
from dit_worker.output.reader import OutputSet
from dit_worker.selfcheck.lines import CheckLine, table
from jobs.selfcheck import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, list[dict], Path]:
    """The command as a user runs it: exit status, its JSON lines, the kept work folder."""
    out = tmp_path_factory.mktemp("selfcheck")
    proc = subprocess.run([sys.executable, "-m", "jobs.selfcheck", "--quick", "--json", "--device", "cpu",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    print(proc.stdout, proc.stderr[-3000:])
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], out


def of(lines: list[dict], check: str) -> list[dict]:
    return [line for line in lines if line["check"] == check]


def test_quick_holds_on_this_machine(run: tuple[int, list[dict], Path]) -> None:
    rc, lines, _ = run
    assert [line["name"] for line in lines if line["must"] and line["holds"] is False] == []
    assert rc == 0
    assert {line["check"] for line in lines} == {"fast-path", "rows", "job", "speed", "families"}
    conditions = lines[0]["conditions"]
    assert conditions["cpu_count"] >= 1 and len(conditions["loadavg_1_5_15"]) == 3 and conditions["versions"]["torch"]


def test_fast_path_lines(run: tuple[int, list[dict], Path]) -> None:
    fast, wrong, diffusers, frequencies = of(run[1], "fast-path")
    assert fast["value"] == "identical" and "float32 eager" in fast["name"]  # CPU's default is eager float32
    assert wrong["value"] < 25 and wrong["holds"]  # the same measure on other classes misses by far
    # diffusers' own timestep frequencies (/127) really differ, by far less than a wrong class does.
    assert 48 <= diffusers["value"] < 80 and diffusers["holds"]
    assert (frequencies["value"] == "identical" or frequencies["value"] >= 60) and frequencies["holds"]


def test_rows_lines(run: tuple[int, list[dict], Path]) -> None:
    lines = {line["name"]: line for line in of(run[1], "rows")}
    assert lines["DiT native float32: alone vs in a batch of 7"]["value"] == 0  # CPU: bit-exact across batch sizes
    assert lines["DiT native float32: batch of 7 reordered"]["value"] == 0
    assert lines["PixArt-Σ float32: alone vs in a batch of 7"]["value"] <= 1
    assert lines["PixArt-Σ float32: batch of 7 reordered"]["value"] <= 1
    assert all(line["holds"] for line in lines.values())


def test_job_lines_and_the_kept_outputs(run: tuple[int, list[dict], Path]) -> None:
    _, lines, out = run
    png, parquet, auto = of(lines, "job")
    for line, fmt in ((png, "png"), (parquet, "parquet")):
        assert line["holds"] and line["value"] == 24 and line["bound"] == "24, each once"
        killed_at = int(line["note"].split("/")[0])
        assert 0 < killed_at < 12  # the kill really landed mid-run
        # Re-read independently: the resumed set equals the uninterrupted one, sample by sample.
        resumed = {
            s.sample_id: s.image.tobytes() for s in OutputSet.open(str(out / "jobs" / f"{fmt}-killed")).iter_samples()
        }
        whole = {
            s.sample_id: s.image.tobytes() for s in OutputSet.open(str(out / "jobs" / f"{fmt}-whole")).iter_samples()
        }
        assert sorted(resumed) == list(range(24)) and resumed == whole
    assert auto["value"] == 8 and auto["holds"]  # CPU workers take a fixed 8 (DiTPipeline.max_batch_size)


def test_speed_lines(run: tuple[int, list[dict], Path]) -> None:
    lines = of(run[1], "speed")
    sweep, e2e = lines[:-1], lines[-1]
    assert [line["batch_size"] for line in sweep] == [1, 4, 8] and [line["auto"] for line in sweep] == [
        False,
        False,
        True,
    ]
    for line in sweep:
        ours, batch = line["ours"], line["batch_size"]
        assert line["value"] > 0 and ours["mfu"] is None  # CPU: no datasheet peak
        loop_flops = 50 * transformer_flops(TINY_DIT, 2 * batch)  # DDIM 50, guided: two rows per image
        assert ours["tflops"] == pytest.approx(ours["sampling_images_per_s"] / batch * loop_flops / 1e12, rel=1e-9)
        assert ("diffusers" in line) is (not line["auto"])
        if not line["auto"]:
            ratio = ours["images_per_s"] / line["diffusers"]["images_per_s"]
            assert f"ours {ratio:.2f}x" in line["note"]
    assert e2e["job_over_sampling"] == pytest.approx(e2e["job_images_per_s"] / e2e["sampling_only_images_per_s"])
    assert e2e["samples"] == 4 * 2 * 4  # 4 shards of 2 batches of the largest swept size


def test_families_lines(run: tuple[int, list[dict], Path]) -> None:
    lines = of(run[1], "families")
    assert [line["name"].split(":")[0] for line in lines[::2]] == list(FAMILY_BUILDERS)  # all installed here
    for same, other in zip(lines[::2], lines[1::2], strict=True):
        assert same["value"] <= 1 and same["holds"]
        assert other["value"] >= 8 and other["holds"]  # another prompt's image misses by far


def test_table_marks_what_failed() -> None:
    lines = [
        CheckLine(check="fast-path", name="a", value=50.0, unit="dB", bound=">= 45", holds=True),
        CheckLine(check="rows", name="b", value=3, unit="levels", bound="<= 1", holds=False),
        CheckLine(check="speed", name="c", value=2.5, unit="images/s", must=False),
    ]
    rows = table(lines).splitlines()
    assert rows[0].split() == ["check", "measured", "figure", "bound", "holds"]
    assert [r.split()[-1] for r in rows[1:]] == ["ok", "FAIL", "-"]
    assert [line.failed for line in lines] == [False, True, False]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cuda"], "error: --device cuda: torch sees no CUDA device here; use --device cpu"),
        (["--device", "tpu"], "error: --device: Input should be 'cpu' or 'cuda' (got 'tpu')"),
        (["--only", "rows,nope"],
         "error: --only: Input should be 'fast-path', 'rows', 'job', 'speed' or 'families' (got 'nope')"),
    ],
)  # fmt: skip
def test_bad_flags_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == message
