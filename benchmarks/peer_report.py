"""bench_peer.py's output: the issue-13 table (printed, markdown) and throughput / TPOT vs concurrency plots.

Both read only the report dict that bench_peer.py writes as JSON, so they can be redrawn from a saved file:

  python benchmarks/peer_report.py benchmarks/results/bench_peer_<time>.json [--plot-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from plots import _save, plt

SERVERS = ("radixgen", "llama.cpp")
_COLORS = {"radixgen": "#336699", "llama.cpp": "#cc6633"}
_STYLES = {"f32": "o-", "bf16": "s--", "q8": "^:"}


def headline(error: str) -> str:
    """The telling line of an error message (e.g. a server log's tail): its last ``...Error: ...`` line, else its
    first line."""
    lines = [ln.strip() for ln in error.strip().splitlines() if ln.strip()]
    hits = [ln for ln in lines if "Error:" in ln or " error: " in ln or "Exception:" in ln]
    return (hits[-1] if hits else lines[0] if lines else "")[:300]


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _runs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run record of a row (all workloads, rounds and servers)."""
    return [run for w in row["workloads"].values() for rnd in w["runs"] for run in rnd.values()]


def run_line(label: str, m: dict[str, Any]) -> str:
    """One run record of bench_peer.py (``Runner.run``) as a progress line."""
    load = f"load {m['load_before'][0]:.2f} -> {m.get('load_after', [float('nan')])[0]:.2f}"
    if "busy_pct_before" in m:
        load += f", others' CPU {m['busy_pct_before']:.0f}%"
    head = f"[{label}] {m['server']:<9}"
    if "error" in m:
        return f"{head} ERROR ({'skipped, ' if m.get('skipped') else ''}{load}): {headline(m['error'])}"
    return (
        f"{head} {m['output_throughput']:7.1f} out tok/s  {m['request_throughput']:5.2f} req/s  "
        f"TPOT p50 {m['tpot_ms']['p50']:6.1f} ms  {m['completed']}/{m['completed'] + m['failed']} ok  "
        f"{m['total_prompt_tokens']}+{m['total_output_tokens']} tok  start {m['startup_s']:.1f} s  "
        f"CPU {m['cpu_s']:.1f} s  {load}"
    )


def table_lines(report: dict[str, Any]) -> list[str]:
    """Markdown rows as in issue 13: per model, precision and workload, both servers' figure (out tok/s; req/s
    for the JSON workload), the ratio radixgen / llama.cpp (median of per-round ratios) and TPOT p50 of each,
    followed by the load averages and any errors."""
    lines = [
        "| model | precision | workload | radixgen | llama.cpp | ratio | TPOT p50 radixgen / llama.cpp (ms) | "
        "CPU s per 1k out tok radixgen / llama.cpp |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in report["rows"]:
        for name, w in row["workloads"].items():
            s = w["summary"]
            unit = "req/s" if s["metric"] == "request_throughput" else "out tok/s"
            fig = {srv: _fmt(s[srv][s["metric"]], ".2f" if unit == "req/s" else ".1f") for srv in SERVERS}
            tpot = " / ".join(_fmt(s[srv]["tpot_p50_ms"], ".1f") for srv in SERVERS)
            cpu = " / ".join(_fmt(s[srv]["cpu_s_per_1k_out"], ".1f") for srv in SERVERS)
            ratio = _fmt(s["ratio"], ".2f") + ("x" if s["ratio"] is not None else "")
            lines.append(
                f"| {row['model']} | {row['precision']} | {name} ({unit}) | {fig['radixgen']} | {fig['llama.cpp']} | "
                f"{ratio} | {tpot} | {cpu} |"
            )
            if s["metric"] == "request_throughput":  # lengths are the model's choice: they weigh on req/s
                per_req = " / ".join(_fmt(s[srv]["output_tokens_per_request"], ".1f") for srv in SERVERS)
                notes.append(f"{row['model']} {row['precision']} {name}: output tokens per request {per_req}")
            for srv in SERVERS:
                for err in s[srv]["errors"]:
                    notes.append(f"{row['model']} {row['precision']} {name} {srv}: {headline(err)}")
        loads = [r["load_before"][0] for r in _runs(row)]
        busy = [r["busy_pct_before"] for r in _runs(row) if "busy_pct_before" in r]
        busy_note = f" (others' CPU use {min(busy):.0f}-{max(busy):.0f}%)" if busy else ""
        n_probes = max((len(v["greedy"]) for v in row["probes"].values()), default=0)
        json_checks = " / ".join(row["probes"].get(srv, {}).get("json_check", "—") for srv in SERVERS)
        notes.append(
            f"{row['model']} {row['precision']}: 1-min load average before runs {min(loads):.2f}-{max(loads):.2f}"
            f"{busy_note}; greedy probes identical: {row['probes_identical']} of {n_probes}; JSON probe (radixgen / "
            f"llama.cpp): {json_checks}; GGUF tensors {row['gguf_tensor_types']}; radixgen flags "
            f"{' '.join(row['radixgen_flags'])}"
        )
    return lines + [""] + [f"- {n}" for n in dict.fromkeys(notes)]


def print_peer_table(report: dict[str, Any]) -> None:
    """Print :func:`table_lines` under a heading with the run's configuration."""
    cfg = report["config"]
    print(
        f"\n==================== radixgen vs llama.cpp ({report['environment']['llama_cpp']}), "
        f"{cfg['repeats']} round(s), llama-server {cfg['llama_args']} ===================="
    )
    print("\n".join(table_lines(report)))


def plot_peer(report: dict[str, Any], out: Path, prefix: str) -> list[Path]:
    """Per model, output tok/s and TPOT p50 (ms) vs concurrency of the sharegpt-c* workloads, one line per server
    and precision; writes ``<out>/<prefix>_<model>.png``. Models without such workloads are skipped."""
    paths = []
    for model in dict.fromkeys(r["model"] for r in report["rows"]):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        drawn = False
        for row in (r for r in report["rows"] if r["model"] == model):
            sweep = sorted(
                (w["summary"]["concurrency"], w["summary"])
                for name, w in row["workloads"].items()
                if name.startswith("sharegpt-c")
            )
            for srv in SERVERS:
                for ax, key in ((axes[0], "output_throughput"), (axes[1], "tpot_p50_ms")):
                    pts = [(c, s[srv][key]) for c, s in sweep if s[srv][key] is not None]
                    if pts:
                        drawn = True
                        ax.plot(
                            *zip(*pts, strict=True),
                            _STYLES.get(row["precision"], "o-"),
                            color=_COLORS[srv],
                            label=f"{srv} {row['precision']}",
                        )
        if not drawn:
            plt.close(fig)
            continue
        for ax, label in ((axes[0], "output tokens / s"), (axes[1], "TPOT p50 (ms)")):
            ax.set_xscale("log", base=2)
            ax.set_xticks([1, 4, 16], ["1", "4", "16"])
            ax.set_xlabel("max concurrency")
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        axes[0].set_title(f"{model}: ShareGPT, radixgen vs llama.cpp", fontsize=9)
        axes[1].set_title(f"{report['config']['repeats']} round(s), medians", fontsize=9)
        paths.append(_save(fig, out, f"{prefix}_{model}"))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Reprint the table and redraw the plots of a saved bench_peer JSON file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="a bench_peer_*.json file")
    p.add_argument("--plot-dir", default=str(Path(__file__).resolve().parent / "plots"))
    args = p.parse_args(argv)
    report = json.loads(Path(args.report).read_text())
    print_peer_table(report)
    plot_peer(report, Path(args.plot_dir), "peer")


if __name__ == "__main__":
    main()
