"""Mutation check: break the code on purpose, one small breakage at a time, and see the suite catch it.

    python -m tests.mutations                 # every breakage (25 to 35 minutes on 2 CPU cores)
    python -m tests.mutations --only noise    # the breakages whose name contains "noise"
    python -m tests.mutations --only=--offload  # a name that starts with "--" needs the "=" form
    python -m tests.mutations --list

Each breakage is an exact text edit to one product file. It is applied to a copy of the working
tree in a temporary folder (the working tree itself is never modified), and the tests that should
catch it run there, with PYTHONPATH pointing at the copy, stopping at the first failure. A breakage
is caught when those tests fail; the table names the test that failed first. The unbroken copy runs
every listed test first: a failure there would make "caught" meaningless. Exit status 1 when any
breakage goes uncaught or the baseline fails.

Not part of the default pytest run (it runs the relevant tests once per breakage): pytest collects
test_*.py files only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dit_worker", "jobs", "tests", "pyproject.toml")


@dataclass(frozen=True)
class Breakage:
    name: str
    path: str  # product file, relative to the repository root
    old: str  # occurs exactly once in that file
    new: str
    tests: tuple[str, ...]  # pytest node ids (files or file::test) expected to catch it


PARITY = "tests/test_parity_diffusers.py"
SAMPLERS = "tests/test_samplers.py"
DETERMINISM = "tests/test_determinism.py"
FULL_IMAGES = f"{PARITY}::test_full_images_equal_diffusers_pipeline"
POOL = "tests/test_pool.py"
INDEX = "tests/test_commit_index.py"
SCORES = "tests/test_scores.py"

# The pool's dispatch is one loop over two transports: each of its breakages is run against each.
POOL_BREAKAGES = [
    (
        "a failed try is final (retries lost)",
        "dit_worker/execution/pool.py",
        "queue.failed(settled.key, settled.task, err.reason, final=err.permanent)",
        "queue.failed(settled.key, settled.task, err.reason, final=True)",
    ),
    (
        "a retry does not wait out its backoff",
        "dit_worker/execution/tries.py",
        "not_before = self.clock() + self.backoff.delay(tries, self._rng)",
        "not_before = self.clock()",
    ),
    (
        "one task's result dropped",
        "dit_worker/execution/pool.py",
        "                        if result is not None:\n",
        "                        if result is not None and result[0] != 4:\n",
    ),
]
FAMILIES = "tests/test_families.py"
SELFCHECK = "tests/test_selfcheck.py"
SELECT = "tests/test_select.py"
DEDUP = "tests/test_dedup.py"
REFUSED = "tests/test_flags_and_limits.py::test_refused_in_one_line_before_loading_and_nothing_written"
OUT_OF_MEMORY = "tests/test_flags_and_limits.py::test_out_of_memory_fails_the_shard_once_naming_a_batch_size_that_fits"

MANIFEST = "tests/test_manifest.py"
TASK_SCAN = "tests/test_manifest_tasks.py"
OPTIONS = "tests/test_pipeline_options.py"
HOSTILE = "tests/test_hostile_input.py"

BREAKAGES = [
    Breakage(
        "manifest: a derived slice takes its classes one group late",
        "dit_worker/manifest/sources.py",
        "        groups = ids // self.per_group - self.first_group\n",
        "        groups = np.minimum(ids // self.per_group - self.first_group + 1, len(ids) and 1)\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: a ranged read starts at the mark, not at its row",
        "dit_worker/manifest/files.py",
        "    return table.slice(start - int(layout.mark_rows[first]), stop - start)  # the mark is",
        "    return table.slice(0, stop - start)  # the mark is",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: a CSV newline inside quotes ends a row",
        "dit_worker/manifest/files.py",
        "        newlines = newlines[quotes_before % 2 == 0]\n",
        "        pass\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: repeats found in a partition are dropped",
        "dit_worker/distinct.py",
        "                    found.append(hit)\n",
        "                    pass\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: a partition's spilled keys are not read back",
        "dit_worker/distinct.py",
        "            parts.append(np.fromfile(path, np.int64).reshape(-1, self.width))\n",
        "            pass\n",
        (MANIFEST, f"{TASK_SCAN}::test_repeats_are_found_across_pieces"),
    ),
    Breakage(
        "manifest: the seed pass compares whole seeds (a repeat modulo 2**32 is missed)",
        "dit_worker/manifest/scan.py",
        "    return (samples.seed % SEED_SPACE)[:, None]\n",
        "    return samples.seed[:, None]\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest tasks: keys increasing within each piece pass without comparing the pieces",
        "dit_worker/manifest/checks.py",
        "        up = self.increasing and later.increasing and later.first > self.last\n",
        "        up = self.increasing and later.increasing\n",
        (f"{TASK_SCAN}::test_repeats_are_found_across_pieces",),
    ),
    Breakage(
        "manifest tasks: a file cut into pieces keeps only its first piece's identity leaves",
        "dit_worker/manifest/scan.py",
        "nodes.append(file_digest(rows, [leaf for r in merging for leaf in r.leaves]))",
        "nodes.append(file_digest(rows, list(merging[0].leaves)))",
        (f"{TASK_SCAN}::test_pieces_scanned_by_processes_match_one_process",),
    ),
    Breakage(
        "manifest: a run of small files scans only its first file",
        "dit_worker/manifest/scan.py",
        "    for part in task.piece:\n",
        "    for part in task.piece[:1]:\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest tasks: a Parquet piece reads from its file's first row",
        "dit_worker/manifest/files.py",
        "a, b = max(self.start - row, 0), min(stop - row, batch.num_rows)",
        "a, b = 0, min(stop - row, batch.num_rows)",
        (f"{TASK_SCAN}::test_pieces_scanned_by_processes_match_one_process",),
    ),
    Breakage(
        "manifest tasks: implicit sample ids in a message counted from the file's first row",
        "dit_worker/manifest/scan.py",
        "                if result.implicit_ids:  # name",
        "                if False:  # name",
        (f"{TASK_SCAN}::test_the_first_bad_row_in_manifest_order_is_named",),
    ),
    Breakage(
        "tasks: results taken newest first, not in order",
        "dit_worker/execution/ordered.py",
        "            if len(waiting) >= ahead:\n                yield get(waiting.popleft())\n",
        "            if len(waiting) >= ahead:\n                yield get(waiting.pop())\n",
        (f"{TASK_SCAN}::test_pieces_scanned_by_processes_match_one_process",),
    ),
    Breakage(
        "manifest: the same image twice passes (the seed's high bits folded into its key)",
        "dit_worker/manifest/checks.py",
        "    seed32 = samples.seed % SEED_SPACE\n",
        "    seed32 = (samples.seed ^ (samples.seed >> 32)) % SEED_SPACE\n",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: the identity ignores the seeds",
        "dit_worker/manifest/checks.py",
        '            ("seed", np.ascontiguousarray(part.seed, "<i8").tobytes()),\n',
        "",
        (MANIFEST,),
    ),
    Breakage(
        "manifest: a misspelt column is carried as the user's own",
        "dit_worker/manifest/samples.py",
        "    return _edit_distance(a, b) <= (2 if len(b) >= 8 else 1)\n",
        "    return False\n",
        (MANIFEST,),
    ),
    Breakage(
        "metadata: the manifest's own columns are dropped",
        "dit_worker/worker/shard_writer.py",
        "        if samples.extra is not None:  # the manifest's own columns, typed as there\n",
        "        if False:\n",
        ("tests/test_job_local.py::test_own_manifest_columns_reach_every_format_and_hf_datasets",),
    ),
    Breakage(
        "commit index: a storage outage while recording fails the run",
        "dit_worker/output/commit_index.py",
        "            except StorageError as err:  # an outage: keep the records, try again a little later\n",
        "            except ZeroDivisionError as err:\n",
        (INDEX,),
    ),
    Breakage(
        "commit index: a commit never reaches a log",
        "dit_worker/output/commit_index.py",
        "        self._buffer.append(shard)\n",
        "        pass\n",
        (INDEX,),
    ),
    Breakage(
        "commit index: the logs a crashed run left are not merged",
        "dit_worker/output/commit_index.py",
        "            index.add(shards)\n",
        "            pass\n",
        (INDEX,),
    ),
    Breakage(
        "commit index: a run that lost its lease still records",
        "dit_worker/output/commit_index.py",
        "        self.live()\n        key = ",
        "        key = ",
        (INDEX,),
    ),
    Breakage(
        "lease: an unrenewed lease still counts as held",
        "dit_worker/output/lease.py",
        "        if unrenewed > 0.75 * self.lease.ttl:\n",
        "        if False:\n",
        (f"{INDEX}::test_a_lease_left_unrenewed_for_most_of_its_ttl_counts_as_lost",),
    ),
    Breakage(
        "lease: never renewed",
        "dit_worker/output/lease.py",
        "                self.lease.renew()\n",
        "                pass\n",
        (f"{INDEX}::test_the_lease_is_renewed_on_time_and_taken_over_when_it_is_not",),
    ),
    *(
        Breakage(f"pool ({transport}): {name}", path, old, new, (f"{POOL}::{test}[{transport}]",))
        for name, path, old, new in POOL_BREAKAGES
        for transport in ("local", "ray")
        for test in ("test_every_result_once_and_retries_wait_their_backoff",)
    ),
    Breakage(
        "pool, in-process: a permanent error retried",
        "dit_worker/execution/local_actors.py",
        "permanent=isinstance(err, PermanentError)",
        "permanent=False",
        (f"{POOL}::test_a_permanent_error_is_not_retried[local]",),
    ),
    Breakage(
        "pool, Ray: a permanent error retried",
        "dit_worker/execution/ray_actors.py",
        "permanent = isinstance(err, RayTaskError) and isinstance(err.cause, PermanentError)",
        "permanent = False",
        (f"{POOL}::test_a_permanent_error_is_not_retried[ray]",),
    ),
    Breakage(
        "guidance on all 4 channels instead of cfg_channels",
        "dit_worker/sampling/guidance.py",
        "    g = cfg_channels\n",
        "    g = latent_channels\n",
        (
            f"{PARITY}::test_ddpm_pipeline_matches_reference_loop",
            FULL_IMAGES,
        ),
    ),
    Breakage(
        "guidance off (conditional eps only)",
        "dit_worker/sampling/guidance.py",
        "    mixed = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])\n",
        "    mixed = cond[:, :g]\n",
        (FULL_IMAGES,),
    ),
    Breakage(
        "guidance scale convention cond + s*(cond - uncond)",
        "dit_worker/sampling/guidance.py",
        "    mixed = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])\n",
        "    mixed = cond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])\n",
        (FULL_IMAGES,),
    ),
    Breakage(
        "label dropout: null class 999 instead of 1000",
        "dit_worker/backends/native/pipeline.py",
        "torch.full_like(y, self.transformer.null_class)",
        "torch.full_like(y, self.transformer.null_class - 1)",
        (
            FULL_IMAGES,
            f"{PARITY}::test_ddpm_pipeline_matches_reference_loop",
        ),
    ),
    Breakage(
        "learned variance zeroed (frac fixed at 0.5)",
        "dit_worker/sampling/ddpm.py",
        "            frac = (var + 1) / 2\n",
        "            frac = (0 * var + 1) / 2\n",
        (f"{SAMPLERS}::test_ddpm_variance_per_step_equals_learned_range_formula", PARITY),
    ),
    Breakage(
        "learned variance: min and max log swapped",
        "dit_worker/sampling/ddpm.py",
        "frac * self._max_log[i] + (1 - frac) * self._min_log[i]",
        "frac * self._min_log[i] + (1 - frac) * self._max_log[i]",
        (f"{SAMPLERS}::test_ddpm_variance_per_step_equals_learned_range_formula", PARITY),
    ),
    Breakage(
        "DDPM ignores the learned variance (fixed large)",
        "dit_worker/sampling/ddpm.py",
        "        if self.uses_variance:\n",
        "        if False:\n",
        (f"{SAMPLERS}::test_ddpm_variance_per_step_equals_learned_range_formula", PARITY),
    ),
    Breakage(
        "DDPM posterior mean: sqrt(1 - beta) -> 1 - beta",
        "dit_worker/sampling/ddpm.py",
        "* np.sqrt(1.0 - betas[j]) / (1.0 - alpha_bar[j])",
        "* (1.0 - betas[j]) / (1.0 - alpha_bar[j])",
        (f"{SAMPLERS}::test_ddpm_learned_range_matches_diffusers_step_by_step",),
    ),
    Breakage(
        "DDIM direction coefficient uses alpha_t instead of alpha_prev",
        "dit_worker/sampling/ddim.py",
        "            self._dir.append(float((1 - a_prev - std**2) ** 0.5))\n",
        "            self._dir.append(float((1 - a_t - std**2) ** 0.5))\n",
        (f"{SAMPLERS}::test_deterministic_samplers_match_from_config",),
    ),
    Breakage(
        "DDIM eta: std = eta * variance (no square root)",
        "dit_worker/sampling/ddim.py",
        "            std = eta * variance**0.5\n",
        "            std = eta * variance\n",
        (f"{SAMPLERS}::test_ddim_with_eta_matches_diffusers",),
    ),
    Breakage(
        "DPM-Solver++ midpoint correction doubled",
        "dit_worker/sampling/dpm_solver.py",
        "                d1 = 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) / r0\n",
        "                d1 = 1.0 * (alpha_t * (torch.exp(-h) - 1.0)) / r0\n",
        (f"{SAMPLERS}::test_deterministic_samplers_match_from_config",),
    ),
    Breakage(
        "DPM-Solver++ lower_order_final below 10 steps instead of 15",
        "dit_worker/sampling/dpm_solver.py",
        "(config.lower_order_final and steps_taken < 15)",
        "(config.lower_order_final and steps_taken < 10)",
        (f"{SAMPLERS}::test_deterministic_samplers_match_from_config",),
    ),
    Breakage(
        "DiT respacing truncates instead of rounding",
        "dit_worker/sampling/schedule.py",
        "        taken.append(round(cursor))\n",
        "        taken.append(int(cursor))\n",
        (f"{SAMPLERS}::test_dit_respacing_is_exact_for_every_step_count",),
    ),
    Breakage(
        "leading spacing stride from last - 1",
        "dit_worker/sampling/schedule.py",
        "(np.arange(0, n) * (last // n))",
        "(np.arange(0, n) * ((last - 1) // n))",
        (f"{SAMPLERS}::test_timesteps_equal_set_timesteps_exactly",),
    ),
    Breakage(
        "noise stream: every sample drawn from the batch's first generator",
        "dit_worker/sampling/noise.py",
        "        for row, g in zip(out, self.generators, strict=True):\n",
        "        for row, g in zip(out, [self.generators[0]] * len(self.generators), strict=True):\n",
        (DETERMINISM,),
    ),
    Breakage(
        "noise stream: one draw skipped before the initial latent",
        "dit_worker/sampling/noise.py",
        "        self._pin = pin_memory\n",
        "        self._pin = pin_memory\n        self.draw()\n",
        (FULL_IMAGES, DETERMINISM),
    ),
    Breakage(
        "noise stream: the first sample's step noise used for the whole batch",
        "dit_worker/backends/native/pipeline.py",
        "            z = noise.draw().to(self.device, acc, non_blocking=True) if sampler.stochastic else None\n",
        "            z = noise.draw()[:1].expand(len(seeds), -1, -1, -1).to(self.device, acc)"
        " if sampler.stochastic else None\n",
        (DETERMINISM, f"{PARITY}::test_ddpm_pipeline_matches_reference_loop"),
    ),
    Breakage(
        "class ids reversed within a batch",
        "dit_worker/backends/native/pipeline.py",
        "        y = torch.tensor(list(class_ids), dtype=torch.long, device=self.device)\n",
        "        y = torch.tensor(list(class_ids)[::-1], dtype=torch.long, device=self.device)\n",
        (DETERMINISM, FULL_IMAGES),
    ),
    Breakage(
        "timestep frequencies divided by dim/2 - 1 (diffusers' shift)",
        "dit_worker/models/dit.py",
        "torch.arange(half, dtype=torch.float32, device=t.device) / half)",
        "torch.arange(half, dtype=torch.float32, device=t.device) / (half - 1))",
        (f"{PARITY}::test_transformer_output_equals_patched_diffusers",),
    ),
    Breakage(
        "LayerNorm eps 1e-5 instead of DiT's 1e-6",
        "dit_worker/models/dit.py",
        "LAYER_NORM_EPS = 1e-6\n",
        "LAYER_NORM_EPS = 1e-5\n",
        (f"{PARITY}::test_transformer_output_equals_patched_diffusers",),
    ),
    Breakage(
        "VAE latents multiplied by the scaling factor instead of divided",
        "dit_worker/models/vae.py",
        "        z = latents / self.config.scaling_factor\n",
        "        z = latents * self.config.scaling_factor\n",
        (f"{PARITY}::test_vae_decode_equals_diffusers", FULL_IMAGES),
    ),
    Breakage(
        "VAE upsample kernel taps in phase order instead of the transposed convolution's",
        "dit_worker/models/vae.py",
        "        return torch.stack([k2, k1 + k2, k0 + k1, k0], dim)\n",
        "        return torch.stack([k0, k1 + k2, k0 + k1, k2], dim)\n",
        (f"{PARITY}::test_upsample_equals_nearest_upsampling_then_conv", f"{PARITY}::test_vae_decode_equals_diffusers"),
    ),
    Breakage(
        "VAE residual sum written over the block's input instead of conv2's output",
        "dit_worker/models/vae.py",
        "        return h.add_(skip)\n",
        "        return skip.add_(h)\n",
        (f"{PARITY}::test_decoder_gradient_equals_diffusers",),
    ),
    Breakage(
        "uint8 conversion truncates instead of rounding",
        "dit_worker/models/vae.py",
        ".clamp_(0, 255).round_().to(torch.uint8)",
        ".clamp_(0, 255).floor_().to(torch.uint8)",
        (FULL_IMAGES,),
    ),
    Breakage(
        "commit order: png uploads not awaited before the metadata part",
        "dit_worker/worker/shard_writer.py",
        "            self.storage.put(image_key(self.shard, sample_id, self.encoding.extension), data)\n",
        "            self.pool._pool.submit(\n"
        "                self.storage.put, image_key(self.shard, sample_id, self.encoding.extension), data\n"
        "            )\n",
        ("tests/test_job_local.py::test_a_shard_failing_every_try_fails_the_job_and_keeps_committed_shards",),
    ),
    Breakage(
        "commit order: the webdataset tar left out before the metadata part",
        "dit_worker/worker/shard_writer.py",
        "            self.storage.put(tar_key(shard), webdataset_tar(self._table, images, ext))\n",
        "            self._tar = webdataset_tar(self._table, images, ext)\n",
        ("tests/test_job_local.py::test_webdataset_shard_whose_tar_cannot_be_written_is_not_committed",),
    ),
    Breakage(
        "Fréchet distance with the trace term once instead of twice",
        "dit_worker/metrics/frechet.py",
        "- 2.0 * trace_sqrt_product(a.sigma, b.sigma))",
        "- 1.0 * trace_sqrt_product(a.sigma, b.sigma))",
        ("tests/test_frechet.py",),
    ),
    Breakage(
        "Inception Score shuffled with another seed",
        "dit_worker/metrics/inception_score.py",
        "SHUFFLE_SEED = 2020\n",
        "SHUFFLE_SEED = 2021\n",
        ("tests/test_metric_parity.py",),
    ),
    Breakage(
        "precision/recall with k = 4 neighbours",
        "dit_worker/metrics/precision_recall.py",
        "NEIGHBOURHOOD = 3\n",
        "NEIGHBOURHOOD = 4\n",
        ("tests/test_metric_parity.py",),
    ),
    Breakage(
        "CMMD with sigma 5 instead of 10",
        "dit_worker/metrics/cmmd.py",
        "CMMD_SIGMA = 10.0\n",
        "CMMD_SIGMA = 5.0\n",
        ("tests/test_set_metrics.py::test_cmmd_equals_float64_formula",),
    ),
    Breakage(
        "CMMD biased: within-set diagonal kept",
        "dit_worker/metrics/cmmd.py",
        "            k[idx, idx + lo] = 0.0\n",
        "            k[idx, idx + lo] = 1.0\n",
        ("tests/test_set_metrics.py::test_cmmd_equals_float64_formula",),
    ),
    Breakage(
        "CLIP score without the max(cos, 0) clamp",
        "dit_worker/metrics/clip_score.py",
        "    return CLIP_SCALE * np.maximum(cos, 0.0)\n",
        "    return CLIP_SCALE * cos\n",
        ("tests/test_set_metrics.py::test_clip_score_equals_torchmetrics",),
    ),
    Breakage(
        "CLIP score without the 100 scale",
        "dit_worker/metrics/clip_score.py",
        "CLIP_SCALE = 100.0",
        "CLIP_SCALE = 1.0",
        ("tests/test_set_metrics.py::test_clip_score_equals_torchmetrics",),
    ),
    Breakage(
        "FID merge: the sum of outer products dropped (covariance from the means only)",
        "dit_worker/metrics/statistics.py",
        "        self.outer += moments.outer\n",
        "        pass\n",
        ("tests/test_fid_streaming.py::test_streaming_merge_equals_all_features_at_once",),
    ),
    Breakage(
        "FID subsample: the cut keeps the rows that came first, not the smallest sample-id hashes",
        "dit_worker/metrics/subsample.py",
        "        kept[np.argpartition(self._keys[: self._n], self.size - 1)[: self.size]] = True\n",
        "        kept[: self.size] = True\n",
        ("tests/test_fid_streaming.py::test_reservoir_keeps_the_subsample_of_everything_offered_in_any_order",),
    ),
    Breakage(
        "OutputSet: iterating shards reads every part first",
        "dit_worker/output/reader.py",
        "        return prefetch(self.shard, self.indices if indices is None else indices, PARTS_AHEAD)\n",
        "        return iter(list(prefetch(self.shard, self.indices if indices is None else indices, PARTS_AHEAD)))\n",
        ("tests/test_output_set.py::test_iteration_holds_a_bounded_number_of_parts",),
    ),
    Breakage(
        "OutputSet: a reader dropped early joins its read threads",
        "dit_worker/output/reader.py",
        "        pool.shutdown(wait=False, cancel_futures=True)\n",
        "        pool.shutdown(wait=True, cancel_futures=True)\n",
        ("tests/test_output_set.py::test_a_reader_left_unfinished_closes_without_waiting_for_its_reads",),
    ),
    Breakage(
        "OutputSet: of shards whose sample ids interleave, only the first is read",
        "dit_worker/output/reader.py",
        "            if len(group) == 1:\n",
        "            if len(group) >= 1:\n",
        ("tests/test_output_set.py::test_interleaved_ids_stay_in_sample_id_order_and_duplicates_are_found",),
    ),
    Breakage(
        "DINOv2 resize bilinear instead of bicubic",
        "dit_worker/metrics/dinov2.py",
        "DINOV2_RESAMPLE = Image.Resampling.BICUBIC\n",
        "DINOV2_RESAMPLE = Image.Resampling.BILINEAR\n",
        ("tests/test_set_metrics.py::test_fd_dinov2_equals_direct_computation",),
    ),
    Breakage(
        "FD-DINOv2 against the set's own Gaussian instead of the reference's",
        "dit_worker/metrics/set_metrics.py",
        "frechet_distance(mine.moments.gaussian(), theirs.moments.gaussian())",
        "frechet_distance(mine.moments.gaussian(), mine.moments.gaussian())",
        ("tests/test_fid_set_metrics.py::test_set_metrics_equal_direct_computations",),
    ),
    Breakage(
        "report shows metrics rounded to 6 digits",
        "dit_worker/report/page.py",
        "        return repr(value)\n",
        '        return f"{value:.6g}"\n',
        ("tests/test_report.py::test_report_opens_and_shows_the_recorded_numbers",),
    ),
    Breakage(
        "report shows sFID in FID's cell",
        "dit_worker/report/page.py",
        "{number(metrics[key])}",
        '{number(metrics["sfid" if key == "fid" else key])}',  # double quotes: inside an f'...' (Python 3.11)
        ("tests/test_report.py::test_report_opens_and_shows_the_recorded_numbers",),
    ),
    Breakage(
        "worker CLIP score column: prompts of the batch reversed",
        "dit_worker/metrics/row_scores.py",
        "self.clip.texts(list(texts))",
        "self.clip.texts(list(texts)[::-1])",
        ("tests/test_score_clip.py::test_scores_in_the_metadata_equal_torchmetrics",),
    ),
    Breakage(
        "SD3: --max-sequence-length dropped on the way to the T5 (its default 256 pads instead)",
        "dit_worker/backends/diffusers/prompt_encoding.py",
        "do_classifier_free_guidance=False, max_sequence_length=s.max_sequence_length\n",
        "do_classifier_free_guidance=False\n",
        (f"{FAMILIES}::test_family_local_equals_its_pipeline_per_row[sd3]",),
    ),
    Breakage(
        "Sana: its instruction not prefixed to prompts",
        "dit_worker/backends/diffusers/prompt_encoding.py",
        "    instruction = None if negative or not s.complex_human_instruction else list(s.complex_human_instruction)",
        "    instruction = None",
        (f"{FAMILIES}::test_family_local_equals_its_pipeline_per_row[sana]",),
    ),
    Breakage(
        "Sana: the instruction prefixed to negative prompts too",
        "dit_worker/backends/diffusers/prompt_encoding.py",
        "    instruction = None if negative or not s.complex_human_instruction else",
        "    instruction = None if not s.complex_human_instruction else",
        (f"{FAMILIES}::test_family_local_equals_its_pipeline_per_row[sana]",),
    ),
    Breakage(
        "SDXL: rows without a negative prompt encode '' instead of zeros",
        "dit_worker/backends/diffusers/run.py",
        'fallback = self.settings.negative_prompt or ("" if self.settings.empty_negative == "text" else None)',
        'fallback = self.settings.negative_prompt or ""',
        (f"{FAMILIES}::test_family_local_equals_its_pipeline_per_row[sdxl]",),
    ),
    Breakage(
        "FLUX: guidance not passed (the embedding gets the pipeline's default 3.5)",
        "dit_worker/backends/diffusers/run.py",
        '                kwargs["guidance_scale"] = s.cfg_scale\n',
        "                pass\n",
        (f"{FAMILIES}::test_family_local_equals_its_pipeline_per_row[flux]",),
    ),
    Breakage(
        "LoRA scale ignored (every adapter at 1)",
        "dit_worker/backends/diffusers/run.py",
        "adapter_weights=[lora.scale for lora in settings.loras]",
        "adapter_weights=[1.0 for lora in settings.loras]",
        (f"{FAMILIES}::test_lora_adapter_and_its_scale_equal_the_pipeline_with_the_adapter",),
    ),
    Breakage(
        "batch check tolerance ignored",
        "dit_worker/backends/diffusers/batch_check.py",
        "        return self.max_diff <= self.tolerance\n",
        "        return True\n",
        (f"{FAMILIES}::test_batch_dependent_pipeline_is_refused_by_the_batch_check_and_runs_at_batch_size_one",),
    ),
    Breakage(
        "batch check compares a row with itself (the batch never formed)",
        "dit_worker/backends/diffusers/batch_check.py",
        "    together = generator.generate(rows)\n",
        "    together = torch.cat([generator.generate(_take(rows, [i])) for i in range(len(rows))])\n",
        (f"{FAMILIES}::test_batch_dependent_pipeline_is_refused_by_the_batch_check_and_runs_at_batch_size_one",),
    ),
    Breakage(
        "flags: --classes applies to text-to-image models too (ignored next to --prompts)",
        "dit_worker/driver/flags.py",
        '    "classes": Applies(CLASS),\n',
        '    "classes": Applies(("class", "text")),\n',
        (f"{REFUSED}[classes next to prompts]",),
    ),
    Breakage(
        "flags: a preset's own values reported as flags the user typed",
        "dit_worker/driver/flags.py",
        "            continue  # the preset's own value",
        "            pass  # the preset's own value",
        (f"{REFUSED}[fid50k preset for PixArt]",),
    ),
    Breakage(
        "flags: the model's options not consulted (kind only)",
        "dit_worker/driver/flags.py",
        "return kind in self.kinds and (self.option is None or self.option in options)",
        "return kind in self.kinds",
        (f"{REFUSED}[negative prompt for FLUX]",),
    ),
    Breakage(
        "limits: resolution bins not checked",
        "dit_worker/backends/limits.py",
        "    bins = resolution_bins(spec, s)\n",
        "    bins = None\n",
        (f"{REFUSED}[width 100000 past PixArt's resolution bins]",),
    ),
    Breakage(
        "limits: the pipeline's own sequence limit (FLUX 512) forgotten",
        "dit_worker/backends/limits.py",
        "    if spec.family.sequence_limit is not None:\n",
        "    if False:\n",
        (f"{REFUSED}[sequence length 100000 past FLUX's 512]",),
    ),
    Breakage(
        "limits: the dynamic shift's overflow bound a thousand times too far",
        "dit_worker/backends/limits.py",
        "    if tokens > most:\n",
        "    if tokens > most * 1000:\n",
        (f"{REFUSED}[width 100000 past FLUX's timestep shift]",),
    ),
    Breakage(
        "memory estimate: the text encoder's attention linear in the sequence length",
        "dit_worker/backends/limits.py",
        "phases.append((heads * length**2 * b,",
        "phases.append((heads * length * b,",
        (f"{REFUSED}[sequence length whose attention outgrows memory]",),
    ),
    Breakage(
        "out of memory retried like any error",
        "dit_worker/worker/shard_worker.py",
        "class OutOfMemory(PermanentError):",
        "class OutOfMemory(RuntimeError):",
        (OUT_OF_MEMORY,),
    ),
    Breakage(
        "out of memory: the CPU allocator's failure not recognised",
        "dit_worker/worker/shard_worker.py",
        """CPU_ALLOCATOR_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")""",
        """CPU_ALLOCATOR_FAILURES = ("not enough memory",)""",
        (OUT_OF_MEMORY,),
    ),
    Breakage(
        "out of memory: the failed batch size named as the one that fits",
        "dit_worker/worker/shard_worker.py",
        "                fits = size\n",
        "                fits = len(rows)\n",
        (OUT_OF_MEMORY,),
    ),
    Breakage(
        "--revision: the workers load the hub id's main revision",
        "dit_worker/backends/diffusers/run.py",
        'root = resolve_source(model, "model", revision=settings.revision, variant=settings.variant)',
        'root = resolve_source(model, "model", variant=settings.variant)',
        (f"{OPTIONS}::test_revision_picks_the_hub_commit_the_workers_load_and_the_fingerprint_knows",),
    ),
    Breakage(
        "--revision: the weights identity read at main",
        "dit_worker/driver/model_info.py",
        "checkpoint_identity(config.model, config.vae, revision, config.variant)",
        "checkpoint_identity(config.model, config.vae, None, config.variant)",
        (f"{OPTIONS}::test_revision_picks_the_hub_commit_the_workers_load_and_the_fingerprint_knows",),
    ),
    Breakage(
        "--revision: the settings hold the branch name, not the commit it resolved to",
        "dit_worker/backends/diffusers/resolve.py",
        "commit = hub_revision(self.root)",
        "commit = revision",
        (f"{OPTIONS}::test_revision_picks_the_hub_commit_the_workers_load_and_the_fingerprint_knows",),
    ),
    Breakage(
        "--revision of a local path or s3:// prefix let past the edge",
        "dit_worker/driver/config.py",
        'if self.revision is not None and kind != "hub":',
        "if False:",
        (f"{OPTIONS}::test_revision_of_a_local_or_s3_model_is_refused_at_the_edge",),
    ),
    Breakage(
        "hub downloads fetch the first tokenizer only (SD3, FLUX, SDXL miss theirs)",
        "dit_worker/checkpoints/sources.py",
        '"tokenizer*/*"]',
        '"tokenizer/*"]',
        (f"{OPTIONS}::test_hub_downloads_fetch_the_weights_each_component_loads",),
    ),
    Breakage(
        "--variant not passed to from_pretrained",
        "dit_worker/backends/diffusers/run.py",
        'extra = {"variant": settings.variant} if settings.variant else {}',
        "extra = {}",
        (f"{OPTIONS}::test_variant_loads_the_variants_weights",),
    ),
    Breakage(
        "--variant: a variant the directory lacks not refused by the driver",
        "dit_worker/backends/diffusers/resolve.py",
        "if variant not in found:",
        "if False:",
        (f"{OPTIONS}::test_variant_loads_the_variants_weights",),
    ),
    Breakage(
        "--offload in the fingerprint",
        "dit_worker/backends/diffusers/resolve.py",
        "offload: OffloadMode | None = Field(None, exclude=True)",
        "offload: OffloadMode | None = None",
        (f"{OPTIONS}::test_offload_is_recorded_and_left_out_of_the_fingerprint",),
    ),
    Breakage(
        "--offload on CPU workers not refused",
        "dit_worker/driver/config.py",
        'if not self.worker_device.startswith("cuda"):',
        "if False:",
        (f"{OPTIONS}::test_offload_is_refused_on_cpu_workers_and_with_compile",),
    ),
    Breakage(
        "--offload model ignored by the worker (the whole pipeline moved to the device)",
        "dit_worker/backends/diffusers/run.py",
        "pipe.enable_model_cpu_offload(device=dev)",
        "pipe.to(dev)",
        (f"{OPTIONS}::test_model_offload_runs_through_diffusers_hooks_and_keeps_every_pixel",),
    ),
    Breakage(
        "--offload: the text encoders taken out of the pipeline, so never offloaded",
        "dit_worker/backends/diffusers/run.py",
        'if not (settings.offload and text_encoder == "device"):',
        "if True:",
        (f"{OPTIONS}::test_model_offload_runs_through_diffusers_hooks_and_keeps_every_pixel",),
    ),
    Breakage(
        "null components (SD3 without T5) not passed as None",
        "dit_worker/backends/diffusers/run.py",
        "skip |= {name: None for name, entry in index.items()",
        "skip |= {name: None for name, entry in {}.items()",
        (f"{FAMILIES}::test_sd3_without_t5_equals_its_pipeline_and_its_prompts_fit_clip",),
    ),
    Breakage(
        "SD3 without T5: the length check looks for the absent T5 tokenizer",
        "dit_worker/backends/diffusers/resolve.py",
        "has = [c for c in self.family.length_checks if",
        "has = [c for c in self.family.length_checks if True or",
        (f"{FAMILIES}::test_sd3_without_t5_equals_its_pipeline_and_its_prompts_fit_clip",),
    ),
    Breakage(
        "FLUX schnell: guidance kept although it has no guidance embedding",
        "dit_worker/backends/diffusers/resolve.py",
        "            guidance = False  # FLUX schnell",
        "            pass  # FLUX schnell",
        (f"{FAMILIES}::test_flux_schnell_runs_without_guidance_and_refuses_cfg_scale",),
    ),
    # jobs.selfcheck: each check must notice the product broken under it (one --quick run per breakage).
    Breakage(
        "selfcheck fast-path: attention without its 1/sqrt(head_dim) scale",
        "dit_worker/models/dit.py",
        "x = F.scaled_dot_product_attention(q, k, v)",
        "x = F.scaled_dot_product_attention(q, k, v, scale=1.0)",
        (f"{SELFCHECK}::test_fast_path_lines",),
    ),
    Breakage(
        "selfcheck rows: a row's noise seeded by its place in the batch",
        "dit_worker/sampling/noise.py",
        'self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]',
        'self.generators = [torch.Generator("cpu").manual_seed(int(s) + i) for i, s in enumerate(seeds)]',
        (f"{SELFCHECK}::test_rows_lines",),
    ),
    Breakage(
        "selfcheck job: a sample's seed depends on the process (a resumed run makes other images)",
        "dit_worker/manifest/samples.py",
        "return (sample_id + global_seed * SEED_SHIFT) % SEED_SPACE",
        'return (sample_id + (global_seed + __import__("os").getpid()) * SEED_SHIFT) % SEED_SPACE',
        (f"{SELFCHECK}::test_job_lines_and_the_kept_outputs",),
    ),
    Breakage(
        "selfcheck speed: the FLOP count forgets guidance's second row",
        "dit_worker/benchmarks/sampling.py",
        "rows = batch * (2 if settings.guided else 1)",
        "rows = batch",
        (f"{SELFCHECK}::test_speed_lines",),
    ),
    Breakage(
        "selfcheck families: a diffusers pipeline runs without the job's guidance scale",
        "dit_worker/backends/diffusers/run.py",
        '                kwargs["guidance_scale"] = s.cfg_scale',
        "                pass",
        (f"{SELFCHECK}::test_families_lines",),
    ),
    Breakage(
        "jobs.select: `not` dropped from a filter",
        "dit_worker/curation/where.py",
        "        return ~again(node.operand)",
        "        return again(node.operand)",
        (f"{SELECT}::test_the_selection_is_the_filter_applied_to_the_whole_metadata",),
    ),
    Breakage(
        "jobs.select: a chained comparison keeps only its last pair",
        "dit_worker/curation/where.py",
        "            out = part if out is None else out & part",
        "            out = part",
        (f"{SELECT}::test_the_selection_is_the_filter_applied_to_the_whole_metadata",),
    ),
    Breakage(
        "jobs.select: a rerun selects every shard again instead of the missing ones",
        "dit_worker/curation/select.py",
        "    pending = [int(k) for k in source.indices if int(k) not in done]",
        "    pending = [int(k) for k in source.indices]",
        (f"{SELECT}::test_a_partial_selection_resumes_and_a_changed_filter_is_refused",),
    ),
    Breakage(
        "jobs.select: the rows taken are not the rows the filter kept (sorted order lost)",
        "dit_worker/curation/select.py",
        '    table = table.take(pc.sort_indices(table, [("sample_id", "ascending")]))',
        '    table = table.take(pc.sort_indices(table, [("sample_id", "descending")]))',
        (f"{SELECT}::test_the_selection_is_the_filter_applied_to_the_whole_metadata",),
    ),
    Breakage(
        "dedup: the threshold comparison is strict (a pair exactly at it is not linked)",
        "dit_worker/curation/dedup/search.py",
        "    keep = (sims >= t) & (found != query_of)\n",
        "    keep = (sims > t) & (found != query_of)\n",
        (f"{DEDUP}::test_the_threshold_is_inclusive_on_stored_embeddings",),
    ),
    Breakage(
        "dedup: --within set copies a row into the cells within r of its nearest, not 2r",
        "dit_worker/curation/dedup/partition.py",
        "    margin = 2.0 * link_radius(threshold) + DISTANCE_SLACK\n",
        "    margin = 1.0 * link_radius(threshold) + DISTANCE_SLACK\n",
        (f"{DEDUP}::test_the_set_partition_finds_what_brute_force_finds",),
    ),
    Breakage(
        "dedup: --within set copies a row into its nearest cell only",
        "dit_worker/curation/dedup/partition.py",
        "    margin = 2.0 * link_radius(threshold) + DISTANCE_SLACK\n",
        "    margin = 0.0\n",
        (f"{DEDUP}::test_the_set_partition_finds_what_brute_force_finds",),
    ),
    Breakage(
        "dedup: dup_rank counted from 1",
        "dit_worker/curation/dedup/components.py",
        "    rank[order] = np.arange(n) - np.repeat(starts, sizes)\n",
        "    rank[order] = np.arange(n) - np.repeat(starts, sizes) + 1\n",
        (f"{DEDUP}::test_planted_pairs_are_grouped_and_distinct_images_are_not",),
    ),
    Breakage(
        "dedup: the merge reads the first partition's links only",
        "dit_worker/curation/dedup/run.py",
        "LINK), range(partitions)))\n",
        "LINK), range(1)))\n",
        (f"{DEDUP}::test_the_set_partition_finds_what_brute_force_finds",),
    ),
    Breakage(
        "dedup: a row's nearest may be itself",
        "dit_worker/curation/dedup/search.py",
        "    pick = np.where(first_other, 1, 0)\n",
        "    pick = np.zeros_like(first_other, dtype=int)\n",
        (f"{DEDUP}::test_planted_pairs_are_grouped_and_distinct_images_are_not",),
    ),
    Breakage(
        "dedup: a rerun embeds every run again",
        "dit_worker/curation/dedup/run.py",
        "for r, shards in enumerate(runs) if r not in done]",
        "for r, shards in enumerate(runs)]",
        (f"{DEDUP}::test_a_killed_run_resumes_to_the_same_parts",),
    ),
    Breakage(
        "dedup: jobs.select filters without joining the dedup parts",
        "dit_worker/curation/select.py",
        "config.s3_endpoint, dedup is not None)",
        "config.s3_endpoint, False)",
        (f"{SELECT}::test_dup_rank_zero_keeps_one_image_per_group",),
    ),
    Breakage(
        "aesthetic: the CLIP embedding is not L2-normalised before the MLP",
        "dit_worker/metrics/aesthetic.py",
        "x = x / torch.where(norm == 0, torch.ones_like(norm), norm)",
        "x = x * 1.0",
        (f"{SCORES}::test_aesthetic_equals_the_mlp_on_the_normalised_clip_embedding",),
    ),
    Breakage(
        "aesthetic: a second CLIP pass per batch instead of clip_score's embedding",
        "dit_worker/metrics/row_scores.py",
        "self.aesthetic.scores(features)",
        "self.aesthetic.scores(self.clip.images(images))",
        (f"{SCORES}::test_aesthetic_equals_the_mlp_on_the_normalised_clip_embedding",),
    ),
    Breakage(
        "classifier: the top label is the least probable one",
        "dit_worker/metrics/row_scores.py",
        "p.argmax(1).tolist()",
        "p.argmin(1).tolist()",
        (f"{SCORES}::test_classifier_columns_equal_the_model_alone",),
    ),
    Breakage(
        "classifier: softmax over the batch instead of the labels",
        "dit_worker/metrics/image_classifier.py",
        "torch.softmax(logits, dim=-1)",
        "torch.softmax(logits, dim=0)",
        (f"{SCORES}::test_classifier_columns_equal_the_model_alone",),
    ),
    Breakage(
        "classifier: probabilities under the next label's name",
        "dit_worker/metrics/row_scores.py",
        "pa.field(label, pa.float32()) for label in labels",
        "pa.field(label, pa.float32()) for label in [*labels[1:], labels[0]]",
        (f"{SCORES}::test_classifier_columns_equal_the_model_alone",),
    ),
    Breakage(
        "CLIP on a class-conditional model: scored against an empty text, not the class name",
        "dit_worker/worker/shard_worker.py",
        "return [self.model.names.name(c) for c in rows.class_id.tolist()]",
        'return [""] * len(rows)',
        (f"{SCORES}::test_clip_scores_a_class_model_against_its_class_name",),
    ),
    Breakage(
        "score set of several scores left out of the fingerprint",
        "dit_worker/metrics/row_scores.py",
        "    if not values:\n        return None\n    requests = parse_scores(values)\n    clip_spec",
        "    if len(values) != 1:\n        return None\n    requests = parse_scores(values)\n    clip_spec",
        (f"{SCORES}::test_every_score_is_in_the_fingerprint_and_a_resume_with_another_set_is_refused",),
    ),
    Breakage(
        "classifier NAME: any text taken as a column name",
        "dit_worker/metrics/row_scores.py",
        'COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")',
        'COLUMN_NAME = re.compile(r".*")',
        (f"{SCORES}::test_bad_scores_are_one_line_before_any_model_loads",),
    ),
]
BREAKAGES += [
    Breakage(
        "hostile: the report shows a group title unescaped",
        "dit_worker/report/page.py",
        "<h3>{user_text(group.title)} <small>",
        "<h3>{group.title} <small>",
        (f"{HOSTILE}::test_markup_in_prompts_class_names_and_paths_is_shown_as_text",),
    ),
    Breakage(
        "hostile: the report shows control and format characters raw (U+202E reorders the page)",
        "dit_worker/report/text.py",
        'if unicodedata.category(c) in ("Cc", "Cf") else c',
        "if False else c",
        (f"{HOSTILE}::test_markup_in_prompts_class_names_and_paths_is_shown_as_text",),
    ),
    Breakage(
        "hostile: the S3 probe uses the patient client (minutes of retries on a closed port)",
        "dit_worker/storage/objects.py",
        "        client = self.probe_client\n",
        "        client = self.client\n",
        (f"{HOSTILE}::test_unusable_s3_output_is_one_line_within_the_bound",),
    ),
    Breakage(
        "hostile: the S3 probe is not read back (a web server answering 200 passes)",
        "dit_worker/storage/objects.py",
        "        if back != data:\n",
        "        if False:\n",
        (f"{HOSTILE}::test_unusable_s3_output_is_one_line_within_the_bound",),
    ),
    Breakage(
        "hostile: an own column named with a NUL or U+202E is carried",
        "dit_worker/manifest/samples.py",
        'if not name.strip() or any(unicodedata.category(c) in ("Cc", "Cf") for c in name):',
        "if False:",
        (f"{HOSTILE}::test_invisible_own_column_names_are_refused",),
    ),
    Breakage(
        "hostile: a full disk is retried like a transient error",
        "dit_worker/worker/shard_worker.py",
        "        except NoSpace as err:  # retrying",
        "        except ZeroDivisionError as err:  # retrying",
        (f"{HOSTILE}::test_a_full_disk_fails_in_one_line_and_a_rerun_with_room_completes_every_sample_once",),
    ),
    Breakage(
        "hostile: a lease that cannot be rewritten on a full disk is left to expire",
        "dit_worker/output/lease.py",
        "                    storage.delete(LEASE_KEY)\n",
        "                    pass\n",
        (f"{HOSTILE}::test_a_full_disk_fails_in_one_line_and_a_rerun_with_room_completes_every_sample_once",),
    ),
    Breakage(
        "hostile: a refused pickle's message is torch's ANSI-styled first line",
        "dit_worker/checkpoints/files.py",
        "arbitrary unpickling ({_refused_global(err)})",
        "arbitrary unpickling ({str(err).splitlines()[0]})",
        (f"{HOSTILE}::test_checkpoint_that_runs_code_is_refused_and_the_code_never_runs",),
    ),
]
REPORT_HISTOGRAMS = "tests/test_report.py::test_each_score_histogram_is_numpys_of_its_column"
REPORT_EXTREMES = "tests/test_report.py::test_lowest_and_highest_of_each_score_are_the_expected_samples"
REPORT_DUPLICATES = "tests/test_report.py::test_largest_duplicate_groups_are_shown_in_dup_rank_order"
HOSTILE_LABELS = f"{HOSTILE}::test_markup_in_classifier_labels_and_dedup_is_shown_as_text"
BREAKAGES += [
    Breakage(
        "report: a score histogram's bins off by one (each count drawn in the next bar)",
        "dit_worker/report/score_columns.py",
        "self.counts += np.histogram(values, BINS, range=(self.min, self.max))[0]",
        "self.counts += np.roll(np.histogram(values, BINS, range=(self.min, self.max))[0], 1)",
        (REPORT_HISTOGRAMS,),
    ),
    Breakage(
        "report: a score histogram's range from the last part only",
        "dit_worker/report/score_columns.py",
        "            self.min = min(self.min, float(values.min()))\n",
        "            self.min = float(values.min())\n",
        (REPORT_HISTOGRAMS,),
    ),
    Breakage(
        "report: a classifier label's histogram is another label's values",
        "dit_worker/report/score_columns.py",
        "                column = values[:, j]\n",
        "                column = values[:, (j + 1) % values.shape[1]]\n",
        (REPORT_HISTOGRAMS,),
    ),
    Breakage(
        "report: the lowest samples of a score are its highest",
        "dit_worker/report/score_columns.py",
        "low[c].offer(values, kept, where)",
        "low[c].offer(-values, kept, where)",
        (REPORT_EXTREMES,),
    ),
    Breakage(
        "report: equal scores ranked by descending sample id",
        "dit_worker/report/ranking.py",
        "order = np.lexsort((ids, keys))[: self.k]",
        "order = np.lexsort((-ids, keys))[: self.k]",
        (REPORT_EXTREMES,),
    ),
    Breakage(
        "report: duplicate groups sorted ascending by size",
        "dit_worker/report/duplicates.py",
        "largest.offer(-sizes[kept].astype(np.float64),",
        "largest.offer(sizes[kept].astype(np.float64),",
        (REPORT_DUPLICATES,),
    ),
    Breakage(
        "report: a duplicate group's members in sample id order, not dup_rank order",
        "dit_worker/report/duplicates.py",
        "key=lambda m: (m.dup_rank, m.sample_id)",
        "key=lambda m: m.sample_id",
        (REPORT_DUPLICATES,),
    ),
    Breakage(
        "hostile: the report shows a classifier's label name unescaped",
        "dit_worker/report/sections.py",
        "probability of {user_text(s.label)}",
        "probability of {s.label}",
        (HOSTILE_LABELS,),
    ),
    Breakage(
        "hostile: the report's label bars show NAME_label's labels unescaped",
        "dit_worker/report/charts.py",
        "<td>{user_text(name, 80)}</td>",
        "<td>{name}</td>",
        (HOSTILE_LABELS,),
    ),
    Breakage(
        "hostile: the report's element ids keep a label's characters as they are",
        "dit_worker/report/text.py",
        'UNSAFE_ID = re.compile(r"[^A-Za-z0-9_]+")',
        'UNSAFE_ID = re.compile(r"$^")',
        (HOSTILE_LABELS,),
    ),
]
STOP = "tests/test_job_ray.py::test_a_stopped_driver_frees_its_output_at_once_and_the_same_command_resumes"
BREAKAGES.append(
    Breakage(
        "tasks: a manifest scan's task processes load torch (the seed bound read from the sampler's module)",
        "dit_worker/manifest/samples.py",
        "from dit_worker.rows import MAX_SEED, Conditioning, Rows\n",
        "from dit_worker.rows import Conditioning, Rows\nfrom dit_worker.sampling.noise import MAX_SEED\n",
        ("tests/test_layers.py::test_a_manifest_scan_task_starts_without_torch",),
    )
)
RACE = "tests/test_commit_index.py::test_a_stop_releases_the_lease_even_when_a_renewal_lands_first"
BREAKAGES += [
    Breakage(
        "stop: SIGTERM releases the lease only once the run has unwound (after the grace, under slow storage)",
        "dit_worker/output/lease.py",
        "        seconds = keeper.stop()\n",
        "        seconds = 0.0\n",
        (STOP,),
    ),
    Breakage(
        "stop: a release whose swap lost to a renewal in flight gives up",
        "dit_worker/output/lease.py",
        "                etag = info.etag\n",
        "                return\n",
        (RACE,),
    ),
    Breakage(
        "stop: the released lease keeps the run's token (its workers are not fenced)",
        "dit_worker/output/lease.py",
        "body, deadline = self._body(0.0, None), time.monotonic() + bound_s",
        "body, deadline = self._body(0.0, self.token), time.monotonic() + bound_s",
        (RACE,),
    ),
    Breakage(
        "stop: a renewal after the release writes the lease again",
        "dit_worker/output/lease.py",
        "            if self.released:\n                return\n            etag = self.etag",
        "            etag = self.etag",
        (RACE,),
    ),
    Breakage(
        "stop: the stopping run still records commits after its release",
        "dit_worker/output/lease.py",
        "        if self.lease.released:\n            raise LeaseLost",
        "        if False:\n            raise LeaseLost",
        (RACE,),
    ),
]
# The webdataset commit-order breakage also moves the tar out of store(): a second edit in the same file.
TAR_IN_STORE = (
    "            self.storage.put(tar_key(shard), webdataset_tar(self._table, images, ext))\n",
    "            self._tar = webdataset_tar(self._table, images, ext)\n",
)


def copy_tree(dest: Path, root: Path = ROOT) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def apply(tree: Path, breakage: Breakage) -> None:
    path = tree / breakage.path
    text = path.read_text()
    if text.count(breakage.old) != 1:
        raise SystemExit(
            f"{breakage.name}: the text to break occurs {text.count(breakage.old)} times in {breakage.path}"
        )
    text = text.replace(breakage.old, breakage.new)
    if "self._tar)" in breakage.new:
        if text.count(TAR_IN_STORE[0]) != 1:
            raise SystemExit(f"{breakage.name}: the tar write is not where expected in {breakage.path}")
        text = text.replace(*TAR_IN_STORE)
    path.write_text(text)


def run_tests(tree: Path, tests: tuple[str, ...], report: Path, timeout: float) -> tuple[int, list[str], int]:
    """pytest's exit status, the failed or errored tests (first first) and how many tests ran."""
    env = os.environ | {"PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], 0
    failed, ran = [], 0
    if report.is_file():
        for case in ET.parse(report).getroot().iter("testcase"):
            ran += 1
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}")
    if proc.returncode not in (0, 1):  # collection or usage error: show it
        failed.append(f"(pytest exit {proc.returncode}: {proc.stdout[-300:].strip()})")
    return proc.returncode, failed, ran


def imports_the_copy(tree: Path) -> bool:
    env = os.environ | {"PYTHONPATH": str(tree)}
    code = "import dit_worker, jobs; print(dit_worker.__file__, jobs.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True).stdout
    return all(p.startswith(str(tree)) for p in out.split())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.mutations", description=__doc__.split("\n")[0])
    p.add_argument("--only", help="run the breakages whose name contains this text")
    p.add_argument("--list", action="store_true", help="list the breakages and the tests meant to catch them")
    p.add_argument("--timeout", type=float, default=600, help="seconds per pytest run")
    args = p.parse_args(argv)
    chosen = [b for b in BREAKAGES if args.only is None or args.only.lower() in b.name.lower()]
    if args.list:
        for b in chosen:
            print(f"{b.name}\n    {b.path}\n    " + "\n    ".join(b.tests))
        return 0
    if not chosen:
        print(f"no breakage matches {args.only!r}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dit-mutations-") as tmp:
        clean = copy_tree(Path(tmp) / "clean")
        if not imports_the_copy(clean):
            print("the copy does not import its own dit_worker (an installed copy shadows it)", file=sys.stderr)
            return 2
        every = tuple(dict.fromkeys(t for b in chosen for t in b.tests))
        started = time.perf_counter()
        rc, failed, ran = run_tests(clean, every, Path(tmp) / "baseline.xml", 4 * args.timeout)
        took = time.perf_counter() - started
        print(f"baseline (no breakage): {len(every)} test selections, {ran} tests, exit {rc}, {took:.0f} s")
        if rc != 0:
            print("baseline fails, so nothing can be judged: " + "; ".join(failed), file=sys.stderr)
            return 1
        rows = []
        for i, breakage in enumerate(chosen):
            tree = copy_tree(Path(tmp) / f"m{i}", clean)  # from the snapshot: later edits do not leak in
            apply(tree, breakage)
            started = time.perf_counter()
            rc, failed, _ = run_tests(tree, breakage.tests, Path(tmp) / f"m{i}.xml", args.timeout)
            caught = rc != 0
            rows.append((breakage.name, caught, failed[0] if failed else "-", time.perf_counter() - started))
            print(f"  {'caught' if caught else 'MISSED'}: {breakage.name} ({rows[-1][3]:.0f} s)", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n| {'breakage':<{width}} | caught | by |\n|{'-' * (width + 2)}|--------|----|")
    for name, caught, by, _ in rows:
        print(f"| {name:<{width}} | {'yes' if caught else 'NO':<6} | {by} |")
    missed = [r[0] for r in rows if not r[1]]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} breakages caught" + (f"; missed: {missed}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
