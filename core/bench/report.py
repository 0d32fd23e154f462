"""The benchmark's report: the markdown table BENCHMARKS.md keeps."""
from __future__ import annotations

from typing import Any

from . import FIGURES


def table(results: dict[str, Any]) -> str:
    """The markdown table BENCHMARKS.md keeps."""
    lines = ["| figure | value | target | met | peak RSS MB | detail |", "|---|---|---|---|---|---|"]
    for name in FIGURES:
        f = results.get(name, {})
        value = "skipped" if f.get("skipped") else ("n/a" if f.get("value") is None else f"{f['value']:.4g}")
        met = {True: "yes", False: "**no**", None: "-"}[f.get("met")]
        lines.append(f"| {name} | {value} {f.get('unit', '') if f.get('value') is not None else ''} | "
                     f"{f.get('target', '-')} | {met} | {f.get('peak_rss_mb', '-')} | {_detail(name, f)} |")
    return "\n".join(lines)


def _detail(name: str, f: dict[str, Any]) -> str:
    if f.get("skipped") or not f:
        return f.get("note", "")
    if name == "raw_step":
        return f"{f['model']['model.name']} {f['image_size']}px b{f['batch_size']} {f['precision']} " \
               f"{'channels_last' if f['channels_last'] else 'NCHW'}"
    if name == "trainer_vs_raw":
        return f"trainer {f['trainer_img_s']} img/s vs raw {f['raw_img_s']} img/s; {_ci(f['ci95'])} over {f['pairs']} step pairs"
    if name == "fast_vs_naive":
        per = "; ".join(f"{k}: {v['fast_img_s']} vs {v['naive_img_s']} img/s ({v['ratio']:.2f}x)"
                        for k, v in f["per_model"].items())
        parts = f["raw_step_parts"]
        extra = f"; raw channels_last/NCHW {parts['channels_last_over_nchw']:.2f}x"
        if "bf16_over_fp32" in parts:
            extra += f", raw bf16/fp32 {parts['bf16_over_fp32']:.2f}x"
        return per + extra
    if name == "cache_vs_uncached":
        return f"{f['cached_img_s']} vs {f['uncached_img_s']} img/s (no augmentation: " \
               f"{f['without_augmentation']['ratio']}x); cached/trainer " \
               f"{f['cached_over_trainer']}x (target >= 3: {'met' if f['cached_over_trainer_met'] else 'not met'})"
    if name == "mfu":
        return f"{f['achieved_gflops']} GFLOP/s of {f['peak_matmul_gflops']} ({f['peak_dtype']} matmul); " \
               f"raw step {f['raw_mfu']:.2f}"
    if name == "peer_ratio":
        d = f["study_decoder"]
        return f"same network (smp's Unet): ours {f['ours_epoch_s']} s vs peer {f['peer_epoch_s']} s an epoch; " \
               f"our study decoder {d['epoch_s']} s ({d['ratio_to_peer']:.2f}x the peer, " \
               f"{d['loop_ratio']:.2f}x Lightning driving it)"
    if name in ("trial_overhead", "study_trial_overhead"):
        b = f["breakdown_s"]
        line = f"{f['overhead_s']} of {f['wall_s']} s: first batches {b['first_batches']}, val {b['validation']}, " \
               f"test {b['test']}, start-up/records {b['startup_checkpoints_records']}"
        if "in_line_saves" in f:
            s = f["in_line_saves"]
            line += (f"; with saves in line {s['share']:.4f} ({s['overhead_s']} of {s['wall_s']} s, start-up/records "
                     f"{s['breakdown_s']['startup_checkpoints_records']}; median batch {s['median_batch_s']} s "
                     f"vs {f['median_batch_s']} s); overhead ours / in line {s['overhead_ratio']:.3f} (means of 2, A B B A)")
        return line
    if name == "memory":
        private = sum(w["cache_map_mb"]["Private"] for w in f["per_worker"])
        return f"{f['workers']} workers: peak RSS {f['value']} MB, PSS {f['workers_pss_mb']}, USS " \
               f"{f['workers_uss_mb']} MB; cache files {f['train_cache_files_mb']} MB, of which the " \
               f"workers hold {private} MB privately; with gc.freeze() USS {f['with_gc_freeze']['workers_uss_mb']} MB"
    if name.startswith("study_"):
        return _study_detail(name, f)
    return ""


def _study_detail(name: str, f: dict[str, Any]) -> str:
    """The study workload's figures, worker by worker."""
    if name == "study_run_overhead":
        return "; ".join(f"worker {r['worker']}: {r['overhead_s']} of {r['wall_s']} s (val "
                         f"{r['breakdown_s']['validation']}, test {r['breakdown_s']['test']}, start-up/records "
                         f"{r['breakdown_s']['startup_checkpoints_records']})" for r in f["runs"])
    if name == "study_compile":
        per = ", ".join(f"{w['ratio']:.3f}" for w in f["workers"])
        return f"per worker {per}; compile {f['cold_compile_s']} s cold, {f['warm_compile_s']} s warm"
    if name == "study_raw_step":
        return "; ".join(f"worker {p['worker']}: raw {p['raw_img_s']}, trainer {p['trainer_img_s']}, naive "
                         f"{p['naive_img_s']} img/s; trainer/raw {p['trainer_vs_raw']} "
                         f"({_ci(p['trainer_vs_raw_ci95'])}, {p['pairs']} pairs), fast/naive "
                         f"{p['fast_vs_naive']}, mfu {p['mfu']}; fast "
                         f"{'channels_last' if p['fast']['channels_last'] else 'NCHW'}"
                         for p in f["workers"])
    return f.get("note", "")


def _ci(low_high: list[float] | None) -> str:
    return "95% CI n/a (too few pairs)" if low_high is None else f"95% CI [{low_high[0]:.3f}, {low_high[1]:.3f}]"
