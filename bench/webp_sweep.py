"""Speed against bytes and SSIM for libwebp settings, per rendition, with Debian's cwebp.

    python3 bench/webp_sweep.py CORPUS WORK [SETTING ...]

Run with the bench's Pillow venv. Makes lossless PNGs of each image's lq and thumb renditions
(float-free Pillow Lanczos from the full decode, the worker's geometry), then encodes each set
with cwebp at the rendition's quality under every setting (a string of cwebp flags, e.g.
"-m 3 -segments 2"), taking the least CPU time of three rounds. Prints one Markdown row per
rendition and setting: CPU ms per image, total bytes and mean SSIM (cwebp's own, against the
PNG), each also relative to the first setting.
"""

import os
import re
import resource
import subprocess
import sys

from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(__file__))
import driver  # noqa: E402

QUALITY = {"lq": 30, "thumb": 80}
DEFAULT_SETTINGS = ["-m 4", "-m 3", "-m 2", "-m 4 -segments 1", "-m 3 -segments 1",
                    "-m 4 -sns 25", "-m 4 -pass 1 -partition_limit 50"]


def make_inputs(corpus, work):
    inputs = {r: [] for r in QUALITY}
    for entry in driver.manifest(corpus)["images"]:
        with Image.open(entry["path"]) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            for rendition in QUALITY:
                size = tuple(entry["sizes"][rendition])
                small = image if size == image.size else image.resize(size, Image.LANCZOS)
                path = os.path.join(work, f"{entry['id']}_{rendition}.png")
                small.save(path, compress_level=1)
                inputs[rendition].append(path)
    return inputs


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def encode_all(paths, quality, setting, work):
    """CPU seconds, total bytes and mean SSIM of one round."""
    started, total, scores = children_cpu(), 0, []
    for path in paths:
        out = os.path.join(work, "out.webp")
        result = subprocess.run(["cwebp", "-q", str(quality), *setting.split(), "-print_ssim",
                                 path, "-o", out],
                                capture_output=True, text=True, check=True)
        scores.append(ssim_total(result.stdout + result.stderr))
        total += os.path.getsize(out)
    return children_cpu() - started, total, sum(scores) / len(scores)


def ssim_total(text):
    """The mean of cwebp's B, G and R SSIM, which it prints in dB, as plain indices."""
    line = text[text.rindex("SSIM:"):]
    values = [float(re.search(rf"{c}:\s*([0-9.]+)", line).group(1)) for c in "BGR"]
    return sum(1 - 10 ** (-db / 10) for db in values) / 3


def main():
    corpus, work = sys.argv[1], sys.argv[2]
    settings = sys.argv[3:] or DEFAULT_SETTINGS
    os.makedirs(work, exist_ok=True)
    inputs = make_inputs(corpus, work)
    print("| rendition | cwebp flags | CPU ms/img | ÷ first | KiB | ÷ first | SSIM | Δ first |")
    print("|---|---|---|---|---|---|---|---|")
    for rendition, paths in inputs.items():
        first = None
        for setting in settings:
            rounds = [encode_all(paths, QUALITY[rendition], setting, work) for _ in range(3)]
            cpu = min(r[0] for r in rounds) * 1e3 / len(paths)
            _, total, ssim = rounds[0]
            first = first or (cpu, total, ssim)
            print(f"| {rendition} | `{setting}` | {cpu:.1f} | {cpu / first[0]:.2f} "
                  f"| {total / 1024:.0f} | {total / first[1]:.3f} | {ssim:.5f} "
                  f"| {ssim - first[2]:+.5f} |", flush=True)


if __name__ == "__main__":
    main()
