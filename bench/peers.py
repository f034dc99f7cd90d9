"""One peer's loop over the corpus: the three renditions of each image, timed in-process.

Run by bench/driver.py with the peer's own Python (a venv holding Pillow, Pillow-SIMD or
pyvips). Reads the manifest the driver wrote (every image with the exact output sizes our
worker makes, so that every peer is compared at the same geometry), writes
`{out}/{id}/{id}_{rendition}.webp` like the worker, and prints one JSON line per image
(`{"id": ..., "ms": ...}`) and a last one with the loop's wall and CPU seconds.

The renditions are the design's defaults, written the way a user of each library would:
JPEG shrink-on-load to the largest rendition, EXIF orientation, Lanczos for thumb and lq,
box then Gaussian for blur, WebP at method (effort) 4.
"""

import json
import os
import subprocess
import sys
import time


def pillow_job(entry, out_dir, spec):
    from PIL import Image, ImageFilter, ImageOps

    image = Image.open(entry["path"])
    if image.format == "JPEG":
        # draft() works in the stored orientation: ask for the lq size before rotation.
        lq_w, lq_h = entry["sizes"]["lq"]
        if entry["orientation"] >= 5:
            lq_w, lq_h = lq_h, lq_w
        image.draft("RGB", (lq_w, lq_h))
    image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
    for name, (width, height) in entry["sizes"].items():
        if name == "blur":
            small = image.resize((width, height), Image.Resampling.BOX)
            small = small.filter(ImageFilter.GaussianBlur(spec["blur"]["sigma"]))
        elif (width, height) == image.size:
            small = image
        else:
            small = image.resize((width, height), Image.Resampling.LANCZOS)
        small.save(output_path(out_dir, entry, name), "WEBP",
                   quality=spec[name]["quality"], method=4)


def vips_job(entry, out_dir, spec):
    import pyvips

    # thumbnail() shrinks on load (JPEG DCT scaling), applies EXIF orientation and converts
    # CMYK to sRGB; `force` gives exactly the manifest's size.
    for name, (width, height) in entry["sizes"].items():
        image = pyvips.Image.thumbnail(entry["path"], width, height=height, size="force")
        if name == "blur":
            image = image.gaussblur(spec["blur"]["sigma"])
        image.webpsave(output_path(out_dir, entry, name), Q=spec[name]["quality"], effort=4)


def magick_job(entry, out_dir, spec):
    lq_w, lq_h = entry["sizes"]["lq"]
    if entry["orientation"] >= 5:
        lq_w, lq_h = lq_h, lq_w
    command = ["/usr/bin/convert", "-define", f"jpeg:size={lq_w}x{lq_h}", entry["path"] + "[0]",
               "-auto-orient", "-colorspace", "sRGB"]
    for name in ("lq", "thumb"):
        width, height = entry["sizes"][name]
        command += ["(", "+clone", "-filter", "Lanczos", "-resize", f"{width}x{height}!",
                    "-quality", str(spec[name]["quality"]), "-define", "webp:method=4",
                    "-write", output_path(out_dir, entry, name), "+delete", ")"]
    width, height = entry["sizes"]["blur"]
    command += ["-filter", "Box", "-resize", f"{width}x{height}!",
                "-gaussian-blur", f"0x{spec['blur']['sigma']}",
                "-quality", str(spec["blur"]["quality"]), "-define", "webp:method=4",
                output_path(out_dir, entry, "blur")]
    subprocess.run(command, check=True)


def output_path(out_dir, entry, name):
    folder = os.path.join(out_dir, entry["id"])
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{entry['id']}_{name}.webp")


JOBS = {"pillow": pillow_job, "vips": vips_job, "magick": magick_job}


def main():
    peer, manifest_path, out_dir, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    with open(manifest_path) as f:
        manifest = json.load(f)
    job = JOBS[peer]
    if peer == "vips":
        import pyvips
        # Without this, repeats would be answered from libvips' operation cache.
        pyvips.cache_set_max(0)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        for entry in manifest["images"]:
            started = time.perf_counter()
            job(entry, out_dir, manifest["spec"])
            print(json.dumps({"id": entry["id"], "ms": (time.perf_counter() - started) * 1e3}))
    print(json.dumps({"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}))


if __name__ == "__main__":
    main()
