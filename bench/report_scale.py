"""Report at scale: file size per unit, build time and time to a usable page in headless Chromium.

    python bench/report_scale.py [--sizes 500 5000] [--page-size 50]

For each size, a results tree of that many units is generated (tests/synthetic_results.py: real gallery
images rendered from the demo images, ~32 objects per unit, 4 conditions, 384-well plates) and the report
is written with the default settings. The baseline is the smallest size, measured in the same run:
ratios show how size, build time and page load grow with the number of units. A second baseline is the
largest size with pagination off (every row and card in the page at once), which is what pagination avoids.
Needs Debian's chromium and the playwright package (see tests/browser.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "workflow"), str(ROOT / "tests")]


def load_in_chromium(path: Path) -> dict[str, float]:
    """Seconds to a drawn page, to sort, filter, reach the last page and open a detail view; JS heap in MB."""
    from browser import open_page

    t0 = time.perf_counter()
    with open_page(path) as (page, problems):
        page.wait_for_selector("#gallery .card")
        loaded = time.perf_counter() - t0
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        heap = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}["JSHeapUsedSize"] / 1e6

        def timed(action) -> float:
            start = time.perf_counter()
            action()
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => r()))")
            return time.perf_counter() - start

        sort = timed(lambda: page.locator("#units th[data-key='object_count']").click())
        filt = timed(lambda: page.fill("#unit-filter", "staurosporine"))
        to_last = page.locator("#gallery-pager button", has_text="»")
        last = 0.0 if to_last.is_disabled() else timed(to_last.click)  # one page only: nothing to page
        detail = timed(lambda: page.locator("#gallery .card").first.click())
        if problems:
            raise RuntimeError(f"page problems: {problems[:3]}")
    return {"load_s": loaded, "sort_s": sort, "filter_s": filt, "last_page_s": last, "detail_s": detail, "heap_mb": heap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--page-size", type=int, default=50)
    args = parser.parse_args()

    from snakescope.demo import write_demo_data
    from snakescope.stages.report.page import write_report
    from snakescope.core.settings import ReportSettings
    from synthetic_results import write_synthetic_results

    work = Path(tempfile.mkdtemp(prefix="snakescope-report-bench-"))
    write_demo_data(work / "demo")
    images = sorted((work / "demo" / "images").glob("*.ome.tif"))[:8]
    rows = []
    for n in args.sizes:
        root = work / f"n{n}"
        t0 = time.perf_counter()
        paths = write_synthetic_results(root, n, images)
        generated = time.perf_counter() - t0
        variants = [("paginated", args.page_size)] + ([("one page", 10**9)] if n == max(args.sizes) else [])
        for label, page_size in variants:
            out = root / f"report-{page_size}.html"
            t0 = time.perf_counter()
            facts = write_report(paths["tables"], paths["plots"], paths["gallery"], paths["model_check"], paths["pipeline_info"],
                                 "bench", out, ReportSettings(page_size=page_size))
            build = time.perf_counter() - t0
            browser = load_in_chromium(out)
            rows.append({"units": n, "variant": label, "MB": facts["bytes"] / 1e6, "KiB/unit": facts["bytes_per_unit"] / 1024,
                         "details": facts["detail_images"], "build_s": build, **browser})
            print(f"  {n} units, {label}: generated in {generated:.1f} s, report {facts['bytes'] / 1e6:.1f} MB "
                  f"({facts['bytes_per_unit'] / 1024:.1f} KiB/unit, detail images {'embedded' if facts['detail_images'] else 'not embedded'}), "
                  f"built in {build:.1f} s, drawn in Chromium in {browser['load_s']:.2f} s", flush=True)
    keys = ["MB", "KiB/unit", "build_s", "load_s", "sort_s", "filter_s", "last_page_s", "detail_s", "heap_mb"]
    print("\n" + " | ".join(["units", "variant", *keys]))
    for row in rows:
        print(" | ".join([str(row["units"]), row["variant"], *(f"{row[k]:.3g}" for k in keys)]))
    base = rows[0]
    print(f"\nratios against the baseline ({base['units']} units, paginated), same run:")
    for row in rows[1:]:
        print(f"  {row['units']} units {row['variant']}: units x{row['units'] / base['units']:.0f}, "
              + ", ".join(f"{k} x{row[k] / base[k]:.2f}" for k in ("MB", "build_s", "load_s", "sort_s", "filter_s", "heap_mb")))
    big = [r for r in rows if r["units"] == max(args.sizes)]
    if len(big) == 2:
        print(f"  pagination at {big[0]['units']} units: load {big[1]['load_s'] / big[0]['load_s']:.1f}x faster and "
              f"sort {big[1]['sort_s'] / max(big[0]['sort_s'], 1e-6):.1f}x faster than all on one page")
    print(f"(files in {work})")


if __name__ == "__main__":
    main()
