"""The benchmark behind scripts/bench: every peer on one corpus, interleaved, then one table.

Run with the Pillow venv's Python (it needs Pillow and numpy for the manifest and the quality
figures). Each run goes through every contender in turn, so that a burst of load on a shared
machine hits all of them alike; figures are medians over the runs.

Contenders:
- `ours`: `image-worker process DIR --repeat N` (start-up is outside the per-image times);
- `ours SETTING=VALUE...`: the same with settings changed (`--variant`), one core only, for
  the curve of speed against bytes and SSIM;
- `daemon-1w`, `daemon-2w`: the daemon through a private redis-server, with 1 and 2 workers;
- `pillow-simd`, `pillow`, `vips`, `magick`: bench/peers.py under each peer's Python.

One core is `taskset -c 0` on one process; all cores is one such process per core, unpinned,
started together. Quality is SSIM on luma against a float reference downscale of the fully
decoded image (ICC applied, alpha composited on grey), from the first run's outputs.
"""

import argparse
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np
from PIL import Image, ImageCms, ImageOps

RENDITIONS = ("thumb", "blur", "lq")
SPEC = {"thumb": {"size": 320, "quality": 80}, "blur": {"size": 64, "quality": 60, "sigma": 3},
        "lq": {"size": 1280, "quality": 30}}
PEERS = ("pillow-simd", "pillow", "vips", "magick")


def fit_within(width, height, box):
    """The worker's geometry (src/ops.rs fit_within): shorter side rounded to nearest."""
    if width <= box and height <= box:
        return width, height
    if width >= height:
        return box, max(1, (2 * height * box + width) // (2 * width))
    return max(1, (2 * width * box + height) // (2 * height)), box


# ---- manifest ----

def manifest(corpus):
    images = []
    for name in sorted(os.listdir(corpus)):
        path = os.path.join(corpus, name)
        if not name.lower().endswith((".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")):
            continue
        with Image.open(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            width, height = image.size
        if orientation >= 5:
            width, height = height, width
        stem = os.path.splitext(name)[0]
        image_id = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
        sizes = {r: fit_within(width, height, SPEC[r]["size"]) for r in RENDITIONS}
        images.append({"id": image_id, "path": path, "width": width, "height": height,
                       "orientation": orientation, "sizes": sizes,
                       "class": size_class(width * height)})
    return {"images": images, "spec": SPEC}


def size_class(pixels):
    return "small" if pixels < 1_000_000 else "medium" if pixels < 10_000_000 else "large"


# ---- running one contender ----

def timed(command, env=None):
    """Runs a command and reads its resource use with wait4, which also counts its children."""
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=env, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(f"bench: {' '.join(command)} exited {child.returncode}")
    return {"out": out, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mib": usage.ru_maxrss / 1024}


class Contender:
    def __init__(self, name, args, work, settings=()):
        self.name, self.args, self.work = name, args, work
        # (key, value) settings of an `ours` variant, passed as flags.
        self.settings = list(settings)
        self.ours = name == "ours" or name.startswith("ours ")

    def command(self, out_dir, repeat):
        if self.ours:
            flags = [arg for key, value in self.settings
                     for arg in (f"--{key.replace('_', '-')}", value)]
            return [self.args.binary, "process", self.args.corpus, "--out", out_dir,
                    "--repeat", str(repeat), "--backend", "cpu", "--log-level", "warn"] + flags
        python = {"pillow-simd": self.args.simd_python, "pillow": self.args.pillow_python,
                  "vips": self.args.pillow_python, "magick": self.args.pillow_python}[self.name]
        peer = {"pillow-simd": "pillow", "pillow": "pillow"}.get(self.name, self.name)
        return [python, os.path.join(os.path.dirname(__file__), "peers.py"), peer,
                os.path.join(self.work, "manifest.json"), out_dir, str(repeat)]

    def per_image_ms(self, out):
        """Per-image times from the child's output: done messages, or the peers' lines."""
        times = []
        for line in out.splitlines():
            record = json.loads(line)
            if self.ours:
                times.append((record["id"], record["timing_ms"]["total"]))
            elif "id" in record:
                times.append((record["id"], record["ms"]))
        return times


def single_thread_env():
    env = dict(os.environ, VIPS_CONCURRENCY="1", MAGICK_THREAD_LIMIT="1", OMP_NUM_THREADS="1")
    return env


def run_one_core(contender, out_dir, repeat):
    result = timed(["taskset", "-c", "0"] + contender.command(out_dir, repeat),
                   env=single_thread_env())
    times = contender.per_image_ms(result["out"])
    loop_s = sum(ms for _, ms in times) / 1e3
    return {"img_s": len(times) / loop_s, "cpu_ms": result["cpu_s"] * 1e3 / len(times),
            "times": times, "rss_mib": result["rss_mib"]}


def run_all_cores(contender, work, repeat, cores):
    """One single-threaded process per core, started together; images/s over the whole set."""
    started = time.perf_counter()
    children = []
    for core in range(cores):
        out_dir = os.path.join(work, f"all-{contender.name}-{core}")
        children.append(subprocess.Popen(contender.command(out_dir, repeat),
                                         stdout=subprocess.PIPE, text=True,
                                         env=single_thread_env()))
    images = 0
    for child in children:
        images += len(contender.per_image_ms(child.stdout.read()))
        if child.wait():
            raise SystemExit(f"bench: {contender.name} on all cores exited {child.returncode}")
    return {"img_s": images / (time.perf_counter() - started)}


# ---- the daemon through Redis ----

class Redis:
    """Just enough of RESP for the benchmark: commands in, replies out."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.file = self.sock.makefile("rb")

    def call(self, *args):
        parts = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        return self.reply()

    def reply(self):
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return int(rest) if kind == b":" else rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            return None if rest == b"-1" else self.file.read(int(rest) + 2)[:-2]
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise RuntimeError(f"unexpected redis reply {line!r}")


def start_redis(work):
    port = free_port()
    directory = tempfile.mkdtemp(dir=work, prefix="redis-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", directory],
                              stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            client = Redis(port)
            client.call("PING")
            return server, port, client
        except OSError:
            time.sleep(0.02)
    raise SystemExit("bench: redis-server did not start")


def run_daemon(args, work, manifest_data, workers, repeat):
    """Pushes the corpus `repeat` times onto a fresh queue; times the daemon to the last done."""
    server, port, redis = start_redis(work)
    out_dir = os.path.join(work, f"daemon-{workers}w")
    host = f"bench-{workers}w"
    metrics_port = free_port()
    daemon = subprocess.Popen(
        ["taskset", "-c", ",".join(str(c) for c in range(workers)), args.binary, "run",
         "--redis", f"redis://127.0.0.1:{port}", "--workers", str(workers), "--backend", "cpu",
         "--input-root", args.corpus, "--output-root", out_dir, "--hostname", host,
         "--metrics-addr", f"127.0.0.1:{metrics_port}", "--log-level", "warn"])
    try:
        wait_until(lambda: redis.call("EXISTS", f"image_worker:alive:{host}") == 1, 20)
        jobs = [entry for _ in range(repeat) for entry in manifest_data["images"]]
        pushed = time.time()
        for n, entry in enumerate(jobs):
            payload = {"id": f"{entry['id']}", "input": entry["path"],
                       "enqueued_at": int(time.time() * 1000), "n": n}
            redis.call("LPUSH", "image_jobs", json.dumps(payload))
        wait_until(lambda: redis.call("LLEN", "image_done") + redis.call("LLEN", "image_failed")
                   >= len(jobs), 600)
        failed = redis.call("LLEN", "image_failed")
        if failed:
            raise SystemExit(f"bench: the daemon failed {failed} jobs: "
                             f"{redis.call('LRANGE', 'image_failed', 0, 0)}")
        done = [json.loads(raw) for raw in redis.call("LRANGE", "image_done", 0, -1)]
        calls = redis_call_seconds(metrics_port)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(daemon.pid, 0)
        server.terminate()
        server.wait()
    last = max(d["finished_at"] for d in done) / 1e3
    wall = last - pushed
    pipeline_s = sum(d["timing_ms"]["total"] for d in done) / 1e3
    return {"img_s": len(done) / wall,
            "queue_wait_ms": statistics.median(d["timing_ms"]["queue_wait"] for d in done),
            # With one worker, jobs run one after another: what is not pipeline is Redis.
            "overhead_ms": (wall * workers - pipeline_s) * 1e3 / len(done),
            # The worker's own timing of its per-job Redis calls, from /metrics.
            "redis_ms": sum(calls.values()) * 1e3 / len(done),
            "calls_ms": {call: s * 1e3 / len(done) for call, s in calls.items()},
            "rss_mib": usage.ru_maxrss / 1024, "done": done}


def redis_call_seconds(port):
    """Seconds spent in each per-job Redis call, from the daemon's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    sums = {}
    for line in text.splitlines():
        if line.startswith("image_worker_redis_call_seconds_sum{"):
            labels, value = line.split(" ")
            sums[labels.split('call="')[1].split('"')[0]] = float(value)
    if not sums:
        raise SystemExit("bench: the daemon's /metrics has no Redis call times")
    return sums


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, seconds):
    deadline = time.time() + seconds
    while not predicate():
        if time.time() > deadline:
            raise SystemExit("bench: timed out waiting for the daemon")
        time.sleep(0.01)


# ---- checks and quality ----

def check_outputs(name, out_dir, manifest_data):
    """Every output exists with the expected size; returns bytes per rendition."""
    totals = dict.fromkeys(RENDITIONS, 0)
    for entry in manifest_data["images"]:
        for rendition in RENDITIONS:
            path = os.path.join(out_dir, entry["id"], f"{entry['id']}_{rendition}.webp")
            if not os.path.exists(path):
                raise SystemExit(f"bench: {name} wrote no {path}")
            with Image.open(path) as image:
                if list(image.size) != list(entry["sizes"][rendition]):
                    raise SystemExit(f"bench: {name} {path} is {image.size}, "
                                     f"expected {entry['sizes'][rendition]}")
            totals[rendition] += os.path.getsize(path)
    return totals


def reference_source(path):
    """The fully decoded image as float RGB(A) in [0, 255], ICC applied, upright."""
    image = Image.open(path)
    icc = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)
    if icc and image.mode in ("RGB", "CMYK"):
        try:
            srgb = ImageCms.createProfile("sRGB")
            image = ImageCms.profileToProfile(image, io.BytesIO(icc), srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    image = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(image, dtype=np.float32)


def resize_float(pixels, size, method):
    """Resamples each channel in Pillow's float mode; alpha is premultiplied around it."""
    if pixels.shape[1] == size[0] and pixels.shape[0] == size[1]:
        return pixels.copy()
    work = pixels.copy()
    if work.shape[2] == 4:
        work[..., :3] *= work[..., 3:4] / 255
    channels = [np.asarray(Image.fromarray(work[..., c], mode="F").resize(size, method))
                for c in range(work.shape[2])]
    out = np.stack(channels, axis=2)
    if out.shape[2] == 4:
        alpha = np.maximum(out[..., 3:4], 1e-3)
        out[..., :3] = np.where(out[..., 3:4] > 0, out[..., :3] * 255 / alpha, 0)
    return out


def gaussian(pixels, sigma, axis):
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma * sigma))
    taps /= taps.sum()
    padded = np.pad(pixels, [(radius, radius) if a == axis else (0, 0)
                             for a in range(pixels.ndim)], mode="edge")
    out = np.zeros_like(pixels)
    length = pixels.shape[axis]
    for k, weight in enumerate(taps):
        out += weight * np.take(padded, range(k, k + length), axis=axis)
    return out


def blur(pixels, sigma):
    return gaussian(gaussian(pixels, sigma, 0), sigma, 1)


def luma(pixels):
    """Luma of straight-alpha pixels composited on mid grey."""
    rgb = pixels[..., :3]
    if pixels.shape[2] == 4:
        alpha = pixels[..., 3:4] / 255
        rgb = rgb * alpha + 128 * (1 - alpha)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def ssim(a, b):
    """Mean SSIM of two luma planes, Gaussian window σ 1.5, the usual constants."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = a.astype(np.float64), b.astype(np.float64)
    window = lambda x: blur(x, 1.5)  # noqa: E731
    mu_a, mu_b = window(a), window(b)
    var_a = window(a * a) - mu_a ** 2
    var_b = window(b * b) - mu_b ** 2
    cov = window(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
             / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(index.mean())


def references(manifest_data):
    refs = {}
    for entry in manifest_data["images"]:
        source = reference_source(entry["path"])
        for rendition in RENDITIONS:
            size = tuple(entry["sizes"][rendition])
            if rendition == "blur":
                pixels = blur(resize_float(source, size, Image.Resampling.BOX),
                              SPEC["blur"]["sigma"])
            else:
                pixels = resize_float(source, size, Image.Resampling.LANCZOS)
            refs[(entry["id"], rendition)] = luma(np.clip(pixels, 0, 255))
    return refs


def quality(out_dir, manifest_data, refs):
    scores = {r: [] for r in RENDITIONS}
    for entry in manifest_data["images"]:
        for rendition in RENDITIONS:
            path = os.path.join(out_dir, entry["id"], f"{entry['id']}_{rendition}.webp")
            with Image.open(path) as image:
                has_alpha = image.mode == "RGBA"
                pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), np.float32)
            scores[rendition].append(ssim(luma(pixels), refs[(entry["id"], rendition)]))
    return {r: statistics.mean(s) for r, s in scores.items()}


# ---- the runs and the table ----

def median(values):
    return statistics.median(values) if values else float("nan")


def class_medians(times, manifest_data):
    classes = {e["id"]: e["class"] for e in manifest_data["images"]}
    by_class = {}
    for image_id, ms in times:
        by_class.setdefault(classes[image_id], []).append(ms)
    return {c: median(v) for c, v in by_class.items()}


def run_all(args, work, manifest_data):
    names = ["ours"] + [p for p in PEERS if p in args.peers]
    contenders = [Contender(n, args, work) for n in names]
    variants = [Contender("ours " + " ".join(f"{k}={v}" for k, v in settings), args, work,
                          settings) for settings in args.variants]
    names += [v.name for v in variants]
    one, every, daemons = {n: [] for n in names}, {n: [] for n in names}, {1: [], 2: []}
    for run in range(args.runs):
        # Rotate the order so that no contender always runs right after the same neighbour.
        order = contenders[run % len(contenders):] + contenders[:run % len(contenders)]
        for contender in order + variants:
            out_dir = os.path.join(work, f"one-{contender.name.replace(' ', '_')}")
            one[contender.name].append(run_one_core(contender, out_dir, args.repeat))
            log(f"run {run + 1}/{args.runs} {contender.name} one core: "
                f"{one[contender.name][-1]['img_s']:.2f} img/s")
        for workers in (1, 2) if args.daemon else ():
            daemons[workers].append(run_daemon(args, work, manifest_data, workers, args.repeat))
            log(f"run {run + 1}/{args.runs} daemon {workers}w: "
                f"{daemons[workers][-1]['img_s']:.2f} img/s")
        for contender in order:
            every[contender.name].append(run_all_cores(contender, work, args.repeat, args.cores))
            log(f"run {run + 1}/{args.runs} {contender.name} {args.cores} cores: "
                f"{every[contender.name][-1]['img_s']:.2f} img/s")
    return names, one, every, daemons


def summarise(args, work, manifest_data, names, one, every):
    refs = references(manifest_data)
    rows = {}
    for name in names:
        out_dir = os.path.join(work, f"one-{name.replace(' ', '_')}")
        times = [t for run in one[name] for t in run["times"]]
        rows[name] = {
            "one": median([r["img_s"] for r in one[name]]),
            "one_range": (min(r["img_s"] for r in one[name]), max(r["img_s"] for r in one[name])),
            # Variants run on one core only.
            "all": median([r["img_s"] for r in every.get(name, [])]),
            "cpu_ms": median([r["cpu_ms"] for r in one[name]]),
            "rss": max(r["rss_mib"] for r in one[name]),
            "classes": class_medians(times, manifest_data),
            "bytes": check_outputs(name, out_dir, manifest_data),
            "ssim": quality(out_dir, manifest_data, refs),
        }
        for core in range(args.cores if every.get(name) else 0):
            check_outputs(name, os.path.join(work, f"all-{name}-{core}"), manifest_data)
    return rows


def table(args, manifest_data, rows, daemons):
    ours = rows["ours"]
    mp = statistics.mean(e["width"] * e["height"] for e in manifest_data["images"]) / 1e6
    lines = [
        f"Corpus: {len(manifest_data['images'])} images from {args.corpus} ({mp:.2f} MP mean), "
        f"{args.repeat} pass(es) per run, median of {args.runs} interleaved runs, "
        f"all cores = {args.cores}.",
        "",
        "| contender | 1 core img/s (min–max) | ours ÷ it | all cores img/s | all ÷ (cores × 1) "
        "| CPU ms/img | ours ÷ it by CPU ms | median ms small / medium / large | KiB thumb / blur / lq | total KiB "
        "| bytes vs ours | SSIM thumb / blur / lq | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    total_ours = sum(ours["bytes"].values())
    for name, row in rows.items():
        total = sum(row["bytes"].values())
        classes = " / ".join(f"{row['classes'].get(c, float('nan')):.1f}"
                             for c in ("small", "medium", "large"))
        kib = " / ".join(f"{row['bytes'][r] / 1024:.0f}" for r in RENDITIONS)
        quality_text = " / ".join(f"{row['ssim'][r]:.4f}" for r in RENDITIONS)
        lines.append(
            f"| {name} | {row['one']:.2f} ({row['one_range'][0]:.2f}–{row['one_range'][1]:.2f}) "
            f"| {ours['one'] / row['one']:.2f}× | {row['all']:.2f} "
            f"| {row['all'] / (args.cores * row['one']):.2f} | {row['cpu_ms']:.0f} "
            f"| {row['cpu_ms'] / ours['cpu_ms']:.2f}× | {classes} "
            f"| {kib} | {total / 1024:.0f} | {total / total_ours - 1:+.1%} | {quality_text} "
            f"| {row['rss']:.0f} |")
    if args.daemon:
        lines += ["", "| daemon through Redis | img/s | ÷ process 1 core | median queue wait ms "
                  "| Redis calls ms/job (claim / recovery / settle) | wall − pipeline ms/job "
                  "| peak RSS MiB |", "|---|---|---|---|---|---|---|"]
        for workers, runs in daemons.items():
            img_s = median([r["img_s"] for r in runs])
            calls = " / ".join(f"{median([r['calls_ms'].get(c, 0.0) for r in runs]):.3f}"
                               for c in ("claim", "recovery", "settle"))
            lines.append(
                f"| {workers} worker{'s' if workers > 1 else ''} | {img_s:.2f} "
                f"| {img_s / ours['one']:.2f} "
                f"| {median([r['queue_wait_ms'] for r in runs]):.0f} "
                f"| {median([r['redis_ms'] for r in runs]):.3f} ({calls}) "
                f"| {median([r['overhead_ms'] for r in runs]) if workers == 1 else float('nan'):.2f} "
                f"| {max(r['rss_mib'] for r in runs):.0f} |")
    peer = "pillow-simd"
    if peer in rows:
        lines += ["", f"Against {peer}, ours and each variant (the curve of speed against bytes "
                  "and quality):", "",
                  f"| ours | img/s ÷ {peer} | CPU ms ÷ {peer} (lower is better) | bytes vs {peer} "
                  f"| SSIM Δ thumb / blur / lq vs {peer} |", "|---|---|---|---|---|"]
        base = rows[peer]
        for name, row in rows.items():
            if not name.startswith("ours"):
                continue
            delta = " / ".join(f"{row['ssim'][r] - base['ssim'][r]:+.4f}" for r in RENDITIONS)
            lines.append(
                f"| {name} | {row['one'] / base['one']:.2f}× | {row['cpu_ms'] / base['cpu_ms']:.2f} "
                f"| {sum(row['bytes'].values()) / sum(base['bytes'].values()) - 1:+.1%} | {delta} |")
    largest = max(e["width"] * e["height"] for e in manifest_data["images"]) * 4 / 2 ** 20
    lines += ["", f"Largest decoded image (RGBA8): {largest:.0f} MiB; 3× that: "
              f"{3 * largest:.0f} MiB. CPU ms is user + system time of the one-core process "
              "(the peers' include the Python interpreter's start), the figure least disturbed "
              "by other load on the machine."]
    return "\n".join(lines) + "\n"


def check_daemon_outputs(work, manifest_data):
    for workers in (1, 2):
        check_outputs(f"daemon {workers}w", os.path.join(work, f"daemon-{workers}w"),
                      manifest_data)


def log(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--pillow-python", required=True)
    parser.add_argument("--simd-python", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--no-daemon", dest="daemon", action="store_false")
    parser.add_argument("--variant", dest="variants", action="append", default=[],
                        help="ours with settings changed: KEY=VALUE[,KEY=VALUE...]")
    parser.add_argument("--output", required=True)
    parser.add_argument("--work", default=None, help="keep the outputs here")
    args = parser.parse_args()
    args.corpus = os.path.realpath(args.corpus)
    args.peers = args.peers.split(",")
    args.variants = [[tuple(pair.split("=", 1)) for pair in variant.split(",")]
                     for variant in args.variants]
    return args


def main():
    args = parse_args()
    work = args.work or tempfile.mkdtemp(prefix="image-worker-bench-",
                                         dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.makedirs(work, exist_ok=True)
    try:
        manifest_data = manifest(args.corpus)
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(manifest_data, f)
        names, one, every, daemons = run_all(args, work, manifest_data)
        rows = summarise(args, work, manifest_data, names, one, every)
        if args.daemon:
            check_daemon_outputs(work, manifest_data)
        text = table(args, manifest_data, rows, daemons)
        with open(args.output, "w") as f:
            f.write(text)
        print(text)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
