#!/usr/bin/env python3
"""gd against its peers, on the same inputs, in the same run (see bench/README.md).

Every workload is a set of cases (gd on each driver, and the peers). The cases of one workload
run interleaved, round after round, each round starting with a different case, so that the
noise of a shared machine falls on all of them alike; the table gives medians and the ratio of
each gd case to each peer measured in the same run.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GD = os.environ.get("GD_BIN", os.path.join(REPO, "target", "release", "gd"))
# Debian's docker.io client; a docker elsewhere in PATH may be another version.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
CS = shutil.which("containers-storage")
INPUTS_VERSION = 1  # bump when a generator changes, so cached inputs are rebuilt


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CommandFailed(Exception):
    pass


def sh(argv, cwd=None, env=None, stdin=None, capture=False, check=True):
    """Runs an untimed command."""
    stdin_f = open(stdin, "rb") if isinstance(stdin, str) else subprocess.DEVNULL
    try:
        p = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin_f,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    finally:
        if stdin_f is not subprocess.DEVNULL:
            stdin_f.close()
    if check and p.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[-400:]}")
    return p.stdout.decode() if capture else p.returncode


def run_timed(argv, cwd=None, env=None, stdin=None, stdout=None, rss=False):
    """Runs one command; returns (wall seconds, peak RSS of the process in KiB, or 0).

    Peak RSS is taken through /usr/bin/time: a child forked from this Python process would
    report Python's own high-water mark (Linux carries it over exec) for anything smaller."""
    rss_path = os.path.join(WORK, "tmp", "maxrss")
    if rss:
        argv = ["/usr/bin/time", "-f", "%M", "-o", rss_path, *argv]
    stdin_f = open(stdin, "rb") if stdin else subprocess.DEVNULL
    stdout_f = open(stdout, "wb") if stdout else subprocess.DEVNULL
    err_path = os.path.join(WORK, "tmp", "stderr")
    with open(err_path, "wb") as err_f:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin_f, stdout=stdout_f, stderr=err_f)
        _, status, rusage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    for f in (stdin_f, stdout_f):
        if f is not subprocess.DEVNULL:
            f.close()
    if p.returncode != 0:
        with open(err_path, "rb") as f:
            err = f.read().decode(errors="replace").strip()
        raise CommandFailed(f"{' '.join(argv)}: exit {p.returncode}: {err[-400:]}")
    if rss:
        with open(rss_path) as f:
            return seconds, int(f.read().split()[-1])
    return seconds, 0


class Meter:
    """What one run of a case measured: the sum of its timed commands, their peak RSS."""

    def __init__(self, rss=False):
        self.seconds = 0.0
        self.maxrss_kib = 0
        self.rss = rss

    def cmd(self, argv, **kw):
        s, rss = run_timed(argv, rss=self.rss, **kw)
        self.seconds += s
        self.maxrss_kib = max(self.maxrss_kib, rss)


class Case:
    def __init__(self, tool, kind, run, setup=None, teardown=None, why_not=None, rss_note=None):
        self.tool = tool
        self.kind = kind  # "gd", "peer" or "ref" (a physical floor, not a product)
        self.run = run
        self.setup = setup
        self.teardown = teardown
        self.why_not = why_not
        self.rss_note = rss_note  # why the peak RSS of the command is not the tool's
        self.failed = None


RESULTS = []


def warm(*paths):
    """Reads inputs into the page cache, so that the first case does not pay for the disk."""
    for p in paths:
        if p and os.path.isfile(p):
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass
        elif p and os.path.isdir(p):
            for dirpath, _, names in os.walk(p):
                warm(*[os.path.join(dirpath, n) for n in names])


def measure(workload, size, cases, rounds, note="", rss=False, inputs=()):
    """Runs the cases interleaved, `rounds` times each, and records one result per case."""
    warm(*inputs)
    log(f"{workload} [{size}]: {', '.join(c.tool for c in cases if not c.why_not)} x{rounds}")
    live = [c for c in cases if not c.why_not]
    samples = {c.tool: [] for c in cases}
    rss_samples = {c.tool: [] for c in cases}
    # Cases whose first run took under half a second get at least 11 rounds: noise is a
    # larger share of a short command, and the extra rounds cost little.
    quick_rounds = max(rounds, 11)
    r = 0
    while r < quick_rounds:
        k = r % max(len(live), 1)
        r += 1
        for c in live[k:] + live[:k]:
            if c.failed:
                continue
            if r > rounds and not (samples[c.tool] and samples[c.tool][0] < 0.5):
                continue
            try:
                if c.setup:
                    c.setup()
                m = Meter(rss)
                c.run(m)
                samples[c.tool].append(m.seconds)
                rss_samples[c.tool].append(m.maxrss_kib)
            except Exception as e:  # the harness goes on; the table says why
                c.failed = first_line(e)
                log(f"  {c.tool} failed: {c.failed}")
            finally:
                if c.teardown:
                    try:
                        c.teardown()
                    except Exception as e:
                        log(f"  {c.tool} teardown: {first_line(e)}")
    for c in cases:
        s = samples[c.tool]
        entry = {"workload": workload, "size": size, "tool": c.tool, "kind": c.kind, "note": note}
        if c.why_not or c.failed or not s:
            entry["status"] = "not run" if c.why_not else "failed"
            entry["why"] = c.why_not or c.failed or "no sample"
        else:
            entry.update(
                status="ok",
                runs=len(s),
                median_s=statistics.median(s),
                min_s=min(s),
                max_s=max(s),
                samples_s=[round(x, 4) for x in s],
            )
            if rss_samples[c.tool] and max(rss_samples[c.tool]):
                entry["peak_rss_kib"] = int(statistics.median(rss_samples[c.tool]))
            if c.rss_note:
                entry["rss_note"] = c.rss_note
        RESULTS.append(entry)
        if entry["status"] == "ok":
            log(f"  {c.tool:34s} {entry['median_s']:9.4f} s  (min {entry['min_s']:.4f}, max {entry['max_s']:.4f})")
        else:
            log(f"  {c.tool:34s} {entry['status']}: {entry['why']}")
    save_results()


def first_line(e):
    s = str(e).strip() or type(e).__name__
    return " ".join(s.split())[:300]


# ---------------------------------------------------------------------------------------------
# Inputs


def rmtree(path):
    if os.path.lexists(path):
        sh(["rm", "-rf", "--one-file-system", path])


def fresh_dir(path):
    rmtree(path)
    os.makedirs(path)
    return path


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tar_add_bytes(tf, name, data, mode=0o644, mtime=1700000000):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    ti.mtime = mtime
    tf.addfile(ti, io.BytesIO(data))


def tar_add_dir(tf, name, mode=0o755, mtime=1700000000):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    ti.mtime = mtime
    tf.addfile(ti)


def files_layer(count):
    """A layer of `count` small files, 100 to a directory, 0 to 8 KiB (about 2 KiB on average)."""
    path = os.path.join(WORK, "inputs", f"files-{count}.tar")
    if os.path.exists(path):
        return path
    log(f"generating {path}")
    rng = random.Random(count)
    pool = rng.randbytes(1 << 16)
    sizes = [0, 64, 200, 512, 1024, 1500, 2048, 3000, 4096, 8192]
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in range((count + 99) // 100):
            tar_add_dir(tf, f"d{d:04}")
            for j in range(min(100, count - d * 100)):
                n = rng.choice(sizes)
                off = rng.randrange(0, len(pool) - n)
                tar_add_bytes(tf, f"d{d:04}/f{j:03}", pool[off : off + n])
    os.rename(tmp, path)
    return path


def files_change_paths(count):
    """The 10-file change over a files layer: 4 modified, 3 added, 3 deleted."""
    last = (count // 100) - 1
    return {
        "modify": [f"d0000/f000", f"d{last // 2:04}/f050", f"d{last:04}/f099", "d0001/f007"],
        "add": ["new/dir/one", "new/dir/two", "d0002/added"],
        "delete": ["d0000/f001", f"d{last // 3:04}/f010", f"d{last:04}/f098"],
    }


def change_through_view(view, count):
    c = files_change_paths(count)
    for p in c["modify"]:
        with open(os.path.join(view, p), "wb") as f:
            f.write(b"modified by the benchmark\n")
    for p in c["add"]:
        os.makedirs(os.path.dirname(os.path.join(view, p)), exist_ok=True)
        with open(os.path.join(view, p), "wb") as f:
            f.write(b"added by the benchmark\n")
    for p in c["delete"]:
        os.unlink(os.path.join(view, p))


def change_in_upper(upper, count):
    """The same change written straight into an unmounted overlay upper dir (docker's)."""
    c = files_change_paths(count)
    for p in c["modify"] + c["add"]:
        os.makedirs(os.path.dirname(os.path.join(upper, p)), exist_ok=True)
        with open(os.path.join(upper, p), "wb") as f:
            f.write(b"modified by the benchmark\n" if p in c["modify"] else b"added by the benchmark\n")
    for p in c["delete"]:
        os.makedirs(os.path.dirname(os.path.join(upper, p)), exist_ok=True)
        os.mknod(os.path.join(upper, p), 0o600 | 0o020000, os.makedev(0, 0))


def minbase_root(mirror):
    """A Debian minbase root from debootstrap, cached (with its tar) under the work dir."""
    cache = os.path.join(WORK, "cache")
    os.makedirs(cache, exist_ok=True)
    tar_path = os.path.join(cache, "minbase-bookworm.tar")
    if os.path.exists(tar_path):
        return tar_path
    root = os.path.join(cache, "minbase-root")
    if not os.path.exists(os.path.join(root, "usr", "bin", "apt")):
        rmtree(root)
        log(f"debootstrap --variant=minbase bookworm from {mirror} (cached for reruns)")
        sh(["debootstrap", "--variant=minbase", "bookworm", root, mirror])
    sh(["tar", "--numeric-owner", "--sort=name", "-cf", tar_path + ".tmp", "-C", root, "."])
    os.rename(tar_path + ".tmp", tar_path)
    return tar_path


def regular_files(tar_path, prefixes):
    """Regular files of a tar under some prefixes, with their size, in tar order."""
    out = []
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if m.isreg() and any(m.name.startswith(p) for p in prefixes):
                out.append((m.name, m.size))
    return out


def image_layers(size, mirror):
    """The layers of the realistic image: a minbase root (small: part of it) and three layers
    that add, modify and delete. Returns the paths of the layer tars, bottom first."""
    d = os.path.join(WORK, "inputs", f"image-{size}")
    paths = [os.path.join(d, f"layer{i}.tar") for i in range(4)]
    if all(os.path.exists(p) for p in paths):
        return paths
    base = minbase_root(mirror)
    log(f"generating the {size} image's layers in {d}")
    os.makedirs(d, exist_ok=True)
    # small: the root's /etc, /usr/bin and /usr/share/doc; large: the whole root
    keep = ["./etc", "./usr/bin", "./usr/share/doc"] if size == "small" else ["./"]
    if size == "small":
        sh(["tar", "--numeric-owner", "-cf", paths[0], "-C", os.path.join(WORK, "cache", "minbase-root")] + keep)
    else:
        shutil.copyfile(base, paths[0])
    files = regular_files(paths[0], keep)
    rng = random.Random(size)
    scale = 1 if size == "small" else 4
    # layer 1 adds: an application tree (1,000 x scale files) and a second copy of some docs
    with tarfile.open(paths[1], "w", format=tarfile.PAX_FORMAT) as tf:
        pool = rng.randbytes(1 << 18)
        tar_add_dir(tf, "opt")
        tar_add_dir(tf, "opt/app")
        for i in range(10 * scale):
            tar_add_dir(tf, f"opt/app/mod{i:03}")
            for j in range(100):
                n = rng.choice([100, 800, 3000, 12000, 60000])
                tar_add_bytes(tf, f"opt/app/mod{i:03}/file{j:03}.py", pool[:n])
        tar_add_bytes(tf, "opt/app/big.bin", pool * (8 * scale))
    # layer 2 modifies: rewrites 300 x scale existing files, changes the mode of others
    with tarfile.open(paths[2], "w", format=tarfile.PAX_FORMAT) as tf:
        for name, sz in rng.sample(files, min(len(files), 300 * scale)):
            tar_add_bytes(tf, name.removeprefix("./"), (b"modified\n" * (sz // 9 + 1))[: sz + 7])
        tar_add_bytes(tf, "opt/app/mod000/file000.py", b"print('changed')\n")
    # layer 3 deletes: whiteouts for files, a whole directory, and an opaque directory
    with tarfile.open(paths[3], "w", format=tarfile.PAX_FORMAT) as tf:
        victims = rng.sample(files, min(len(files), 200 * scale))
        for name, _ in victims:
            name = name.removeprefix("./")
            head, tail = os.path.split(name)
            tar_add_bytes(tf, os.path.join(head, ".wh." + tail), b"")
        tar_add_bytes(tf, "opt/app/.wh.mod001", b"")
        tar_add_dir(tf, "opt/app/mod002")
        tar_add_bytes(tf, "opt/app/mod002/.wh..wh..opq", b"")
        tar_add_bytes(tf, "opt/app/mod002/replacement", b"new\n")
    return paths


def image_archives(name, layer_paths, docker=True):
    """The same image as an OCI layout directory (umoci) and a `docker save` tar (docker load,
    gd image import), with uncompressed layers. Returns (oci_dir, docker_tar)."""
    d = os.path.join(WORK, "inputs", f"{name}-archives")
    os.makedirs(d, exist_ok=True)
    oci = os.path.join(d, "oci")
    docker_tar = os.path.join(d, "docker-save.tar")
    if (os.path.exists(docker_tar) or not docker) and os.path.exists(os.path.join(oci, "index.json")):
        return oci, docker_tar
    log(f"building image archives for {name}")
    fresh_dir(oci)
    blobs = os.path.join(oci, "blobs", "sha256")
    os.makedirs(blobs)
    layers = []
    for p in layer_paths:
        digest = sha256_file(p)
        os.link(p, os.path.join(blobs, digest))
        layers.append((digest, os.path.getsize(p)))

    def put(obj):
        data = json.dumps(obj, separators=(",", ":")).encode()
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return digest, len(data)

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{dg}" for dg, _ in layers]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"bench layer {i}"} for i in range(len(layers))],
    }
    cfg_digest, cfg_size = put(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{cfg_digest}", "size": cfg_size},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{dg}", "size": sz} for dg, sz in layers
        ],
    }
    man_digest, man_size = put(manifest)
    with open(os.path.join(oci, "index.json"), "w") as f:
        json.dump(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{man_digest}",
                        "size": man_size,
                        "annotations": {"org.opencontainers.image.ref.name": "bench"},
                    }
                ],
            },
            f,
        )
    with open(os.path.join(oci, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    if not docker:
        return oci, None
    # docker save (Docker 25 layout: blobs by digest, manifest.json naming them)
    ds = fresh_dir(os.path.join(d, "docker-save"))
    os.makedirs(os.path.join(ds, "blobs", "sha256"))
    for dg in [dg for dg, _ in layers] + [cfg_digest]:
        os.link(os.path.join(blobs, dg), os.path.join(ds, "blobs", "sha256", dg))
    with open(os.path.join(ds, "manifest.json"), "w") as f:
        json.dump(
            [
                {
                    "Config": f"blobs/sha256/{cfg_digest}",
                    "RepoTags": [f"gdbench:{name}"],
                    "Layers": [f"blobs/sha256/{dg}" for dg, _ in layers],
                }
            ],
            f,
        )
    sh(["tar", "-cf", docker_tar + ".tmp", "-C", ds, "manifest.json", "blobs"])
    os.rename(docker_tar + ".tmp", docker_tar)
    rmtree(ds)
    return oci, docker_tar


def big_layer(mib):
    """One layer of `mib` MiB: half in four large files, half in 1 MiB files."""
    path = os.path.join(WORK, "inputs", f"big-{mib}m.tar")
    if os.path.exists(path):
        return path
    log(f"generating {path}")
    block = random.Random(mib).randbytes(1 << 20)

    class Repeat(io.RawIOBase):
        def __init__(self, n):
            self.left = n

        def readable(self):
            return True

        def readinto(self, b):
            n = min(len(b), self.left, len(block))
            b[:n] = block[:n]
            self.left -= n
            return n

    with tarfile.open(path + ".tmp", "w", format=tarfile.PAX_FORMAT) as tf:
        tar_add_dir(tf, "big")
        for i in range(4):
            ti = tarfile.TarInfo(f"big/large{i}")
            ti.size = (mib // 8) << 20
            ti.mode = 0o644
            tf.addfile(ti, io.BufferedReader(Repeat(ti.size)))
        tar_add_dir(tf, "big/chunks")
        for i in range(mib // 2):
            tar_add_bytes(tf, f"big/chunks/c{i:05}", block)
    os.rename(path + ".tmp", path)
    return path


def depth_layers(n):
    d = os.path.join(WORK, "inputs", "depth")
    os.makedirs(d, exist_ok=True)
    paths = []
    for i in range(1, n + 1):
        p = os.path.join(d, f"l{i:03}.tar")
        if not os.path.exists(p):
            with tarfile.open(p, "w") as tf:
                tar_add_bytes(tf, f"layer{i:03}", f"layer {i}\n".encode())
                tar_add_bytes(tf, "top", f"written by layer {i}\n".encode())
        paths.append(p)
    return paths


# ---------------------------------------------------------------------------------------------
# Tools


class Gd:
    def __init__(self, driver, root):
        self.driver = driver
        self.root = root

    def argv(self, *args):
        return [GD, "--root", self.root, "--driver", self.driver, *args]

    def out(self, *args):
        return sh(self.argv(*args), capture=True).strip()

    def run(self, *args):
        sh(self.argv(*args))

    def reset(self):
        if os.path.exists(self.root):
            sh(self.argv("cleanup"), check=False)
            rmtree(self.root)

    def apply_chain(self, m, layers, prefix="L"):
        # One command per layer, as containers-storage import-layer: create --from makes the
        # layer and applies the tar (and removes the layer again if the apply fails).
        parent = None
        for i, p in enumerate(layers):
            lid = f"{prefix}{i}"
            m.cmd(self.argv("create", *(["--parent", parent] if parent else []), "--from", p, lid))
            parent = lid
        return parent


def gd_drivers():
    """Usable drivers on this host, and why the others are not."""
    out = json.loads(sh([GD, "--root", os.path.join(WORK, "tmp", "probe"), "--json", "drivers"], capture=True))
    usable, why = [], {}
    for d in out if isinstance(out, list) else out.get("drivers", []):
        name = d.get("name")
        if d.get("usable"):
            usable.append(name)
        else:
            why[name] = d.get("reason") or "not usable on this host"
    return usable, why


class ContainersStorage:
    def __init__(self, name):
        self.graph = os.path.join(WORK, "run", f"cs-{name}")
        self.run_dir = os.path.join(WORK, "run", f"cs-{name}-run")

    def argv(self, *args):
        cmd, rest = args[0], args[1:]
        return [CS, "--graph", self.graph, "--run", self.run_dir, "--storage-driver", "overlay", cmd, *rest]

    def reset(self):
        if os.path.exists(self.graph):
            sh(self.argv("shutdown"), check=False)
            sh(["sh", "-c", f"grep -o ' {self.graph}[^ ]*' /proc/mounts | xargs -r -n1 umount -l"], check=False)
            rmtree(self.graph)
        rmtree(self.run_dir)

    def apply_chain(self, m, layers, prefix="l"):
        parent = None
        for i, p in enumerate(layers):
            lid = hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()
            m.cmd(self.argv("import-layer", "--id", lid, "--file", p, *([parent] if parent else [])))
            parent = lid
        return parent


class Dockerd:
    def __init__(self):
        self.dir = os.path.join(WORK, "run", "docker")
        self.sock = os.path.join(self.dir, "docker.sock")
        self.proc = None
        self.why_not = None
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")

    def start(self):
        if not (DOCKER and os.path.exists(DOCKERD)):
            self.why_not = "docker.io is not installed"
            return
        fresh_dir(self.dir)
        os.makedirs(os.path.join(self.dir, "data"))
        self.logf = open(os.path.join(self.dir, "dockerd.log"), "wb")
        self.proc = subprocess.Popen(
            [
                DOCKERD,
                "--data-root", os.path.join(self.dir, "data"),
                "--exec-root", os.path.join(self.dir, "exec"),
                "--pidfile", os.path.join(self.dir, "dockerd.pid"),
                "--host", f"unix://{self.sock}",
                "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--storage-driver", "overlay2",
            ],
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(60):
            if self.proc.poll() is not None:
                break
            if sh([DOCKER, "info"], env=self.env, check=False) == 0:
                log(f"dockerd up (data root {self.dir}/data)")
                return
            time.sleep(0.5)
        self.logf.flush()
        with open(os.path.join(self.dir, "dockerd.log"), errors="replace") as f:
            lines = [l.strip() for l in f if "level=error" in l or "level=fatal" in l or "failed" in l.lower()]
        self.why_not = "dockerd did not start: " + (lines[-1][-250:] if lines else "no answer on its socket in 30 s")
        self.stop()

    def argv(self, *args):
        return [DOCKER, *args]

    def run(self, *args, capture=False, check=True):
        return sh([DOCKER, *args], env=self.env, capture=capture, check=check)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # dockerd leaves its overlay mounts behind when killed
        sh(["sh", "-c", f"grep -o ' {self.dir}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"], check=False)


def tool_versions():
    def deb(pkg):
        v = sh(["dpkg-query", "-W", "-f", "${Version}", pkg], capture=True, check=False).strip()
        return v or "not installed"

    gd = sh([GD, "--version"], capture=True, check=False).strip()
    return {
        "gd": gd,
        "GNU tar": deb("tar"),
        "umoci": deb("umoci"),
        "containers-storage": deb("containers-storage"),
        "fuse-overlayfs": deb("fuse-overlayfs"),
        "docker.io": deb("docker.io"),
        "kernel": platform.release(),
    }


# ---------------------------------------------------------------------------------------------
# Workloads


def apply_cases(name, layers, oci, docker_tar, drivers, why_driver, dockerd, image=True, docker=True):
    """GNU tar (each layer into its own directory, like overlay2's diff dirs), gd on every
    driver, gd image import, umoci unpack, containers-storage import-layer, docker load."""
    scratch = os.path.join(WORK, "run", "apply")
    cases = []

    def tar_run(m):
        for i, p in enumerate(layers):
            d = os.path.join(scratch, "tar", str(i))
            os.makedirs(d)
            m.cmd(["tar", "--numeric-owner", "-xpf", p, "-C", d])

    cases.append(Case("GNU tar -x (each layer)", "ref", tar_run, teardown=lambda: rmtree(os.path.join(scratch, "tar"))))

    for drv in ["overlay", "aufs", "vfs", "devmapper"]:
        if drv not in drivers:
            cases.append(Case(f"gd apply ({drv})", "gd", None, why_not=why_driver.get(drv, "not available")))
            continue
        g = Gd(drv, os.path.join(WORK, "run", f"gd-apply-{drv}"))
        cases.append(Case(f"gd apply ({drv})", "gd", (lambda g: lambda m: g.apply_chain(m, layers))(g), setup=g.reset, teardown=g.reset))
    if image and "overlay" in drivers:
        g = Gd("overlay", os.path.join(WORK, "run", "gd-import-overlay"))
        cases.append(Case("gd image import (overlay)", "gd", lambda m: m.cmd(g.argv("image", "import", docker_tar)), setup=g.reset, teardown=g.reset))

    if image:
        bundle = os.path.join(scratch, "umoci")
        cases.append(
            Case(
                "umoci unpack",
                "peer",
                lambda m: m.cmd(["umoci", "unpack", "--image", f"{oci}:bench", bundle]),
                teardown=lambda: rmtree(bundle),
                why_not=None if shutil.which("umoci") else "umoci is not installed",
            )
        )
    cs = ContainersStorage("apply")
    cases.append(
        Case(
            "containers-storage import-layer",
            "peer",
            lambda m: cs.apply_chain(m, layers),
            setup=cs.reset,
            teardown=cs.reset,
            why_not=None if CS else "containers-storage is not installed",
        )
    )
    if image and not docker:
        cases.append(Case("docker load", "peer", None, why_not="not measured here: its memory is dockerd's, not the command's"))
    if image and docker:

        def docker_rm():
            dockerd.run("rmi", "-f", f"gdbench:{name}", check=False)

        cases.append(
            Case(
                "docker load",
                "peer",
                lambda m: m.cmd(dockerd.argv("load", "-q", "-i", docker_tar), env=dockerd.env),
                setup=docker_rm,
                teardown=docker_rm,
                why_not=dockerd.why_not,
                rss_note="the work is done in dockerd",
            )
        )
    return cases


def workload_apply(sizes, rounds, drivers, why_driver, dockerd, mirror, large_rounds):
    for size in sizes:
        layers = image_layers(size, mirror)
        oci, docker_tar = image_archives(f"image-{size}", layers)
        total = sum(os.path.getsize(p) for p in layers)
        measure(
            "apply: Debian minbase image + add/modify/delete layers",
            size,
            apply_cases(f"image-{size}", layers, oci, docker_tar, drivers, why_driver, dockerd),
            rounds if size == "small" else large_rounds,
            note=f"4 layers, {total / 1e6:.0f} MB of tar",
            inputs=[*layers, docker_tar],
        )
    for size in sizes:
        count = 10_000 if size == "small" else 100_000
        layer = files_layer(count)
        oci, docker_tar = image_archives(f"files-{count}", [layer])
        measure(
            f"apply: one layer of small files",
            size,
            apply_cases(f"files-{count}", [layer], oci, docker_tar, drivers, why_driver, dockerd),
            rounds if size == "small" else large_rounds,
            note=f"{count:,} files, {os.path.getsize(layer) / 1e6:.0f} MB of tar",
            inputs=[layer, docker_tar],
        )


def workload_diff(sizes, rounds, drivers, why_driver, dockerd, large_rounds):
    for size in sizes:
        count = 10_000 if size == "small" else 100_000
        layer = files_layer(count)
        out = os.path.join(WORK, "run", "diff-out.tar")  # on the stores' filesystem
        changes, diffs, cleanup = [], [], []
        for drv in ["overlay", "aufs", "vfs", "devmapper"]:
            if drv not in drivers:
                for lst, what in ((changes, "changes"), (diffs, "diff")):
                    lst.append(Case(f"gd {what} ({drv})", "gd", None, why_not=why_driver.get(drv, "not available")))
                continue
            g = Gd(drv, os.path.join(WORK, "run", f"gd-diff-{drv}"))
            try:
                g.reset()
                g.run("create", "lower")
                g.run("apply", "lower", layer)
                g.run("create", "--parent", "lower", "--rw", "ctr")
                view = g.out("mount", "ctr")
                change_through_view(view, count)
                g.run("umount", "ctr")
                why = None
            except Exception as e:
                why = f"setup failed: {first_line(e)}"
            changes.append(Case(f"gd changes ({drv})", "gd", (lambda g: lambda m: m.cmd(g.argv("changes", "ctr")))(g), why_not=why))
            diffs.append(Case(f"gd diff ({drv})", "gd", (lambda g: lambda m: m.cmd(g.argv("diff", "ctr", "-o", out)))(g), why_not=why))
            cleanup.append(g.reset)

        cs = ContainersStorage("diff")
        why = None if CS else "containers-storage is not installed"
        if not why:
            try:
                cs.reset()
                lower, ctr = hashlib.sha256(b"lower").hexdigest(), hashlib.sha256(b"ctr").hexdigest()
                sh(cs.argv("import-layer", "--id", lower, "--file", layer))
                sh(cs.argv("create-layer", "--id", ctr, lower))
                view = sh(cs.argv("mount", ctr), capture=True).strip()
                change_through_view(view, count)
                sh(cs.argv("unmount", ctr))
            except Exception as e:
                why = f"setup failed: {first_line(e)}"
        changes.append(Case("containers-storage changes", "peer", lambda m: m.cmd(cs.argv("changes", ctr)), why_not=why))
        diffs.append(Case("containers-storage diff", "peer", lambda m: m.cmd(cs.argv("diff", "-u", "-f", out, ctr)), why_not=why))
        cleanup.append(cs.reset)

        why = dockerd.why_not
        ctr_name = f"gdbench-diff-{size}"
        if not why:
            try:
                dockerd.run("rm", "-f", ctr_name, check=False)
                dockerd.run("import", layer, f"gdbench-lower:{size}")
                dockerd.run("create", "--name", ctr_name, f"gdbench-lower:{size}", "/bin/true")
                upper = dockerd.run("inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", ctr_name, capture=True).strip()
                change_in_upper(upper, count)
            except Exception as e:
                why = f"setup failed: {first_line(e)}"

        def commit_rm():
            dockerd.run("rmi", "-f", "gdbench-commit:latest", check=False)

        changes.append(
            Case("docker diff", "peer", lambda m: m.cmd(dockerd.argv("diff", ctr_name), env=dockerd.env), why_not=why, rss_note="the work is done in dockerd")
        )
        diffs.append(
            Case(
                "docker commit",
                "peer",
                lambda m: m.cmd(dockerd.argv("commit", ctr_name, "gdbench-commit:latest"), env=dockerd.env),
                teardown=commit_rm,
                why_not=why,
                rss_note="the work is done in dockerd",
            )
        )
        r = rounds if size == "small" else large_rounds
        note = f"10 files changed over a lower of {count:,} files"
        measure("changes: list a 10-file change", size, changes, r, note)
        measure("diff: write a 10-file change as a layer tar", size, diffs, r, note)
        for f in cleanup:
            f()
        if not dockerd.why_not:
            dockerd.run("rm", "-f", ctr_name, check=False)
            dockerd.run("rmi", "-f", f"gdbench-lower:{size}", check=False)


def workload_depth(depths, rounds, drivers, why_driver):
    chain = depth_layers(max(depths))
    # one chain per tool; the layer at depth D is the parent of the measured layer
    gds = {}
    setup_why = {}
    for drv in ["overlay", "aufs", "vfs"]:
        if drv not in drivers:
            continue
        g = Gd(drv, os.path.join(WORK, "run", f"gd-depth-{drv}"))
        log(f"building a {len(chain)}-layer chain with gd ({drv})")
        try:
            g.reset()
            g.apply_chain(Meter(), chain)
            gds[drv] = g
        except Exception as e:
            setup_why[drv] = f"setup failed: {first_line(e)}"
    cs = ContainersStorage("depth")
    cs_ids = []
    cs_why = None if CS else "containers-storage is not installed"
    if not cs_why:
        log(f"building a {len(chain)}-layer chain with containers-storage")
        try:
            cs.reset()
            parent = None
            for i, p in enumerate(chain):
                lid = hashlib.sha256(f"d{i}".encode()).hexdigest()
                sh(cs.argv("import-layer", "--id", lid, "--file", p, *([parent] if parent else [])))
                cs_ids.append(lid)
                parent = lid
        except Exception as e:
            cs_why = f"setup failed after {len(cs_ids)} layers: {first_line(e)}"
    # by hand: every layer extracted into a directory with a short name, mounted with relative
    # paths (as overlay2 does) so that 500 lower dirs fit in one page of mount options
    hand = os.path.join(WORK, "run", "depth-hand")
    fresh_dir(os.path.join(hand, "l"))
    for i, p in enumerate(chain):
        os.makedirs(os.path.join(hand, "l", str(i + 1)))
        sh(["tar", "-xpf", p, "-C", os.path.join(hand, "l", str(i + 1))])

    ctr_id = hashlib.sha256(b"depth-ctr").hexdigest()
    for depth in depths:
        create, mount = [], []
        for drv in ["overlay", "aufs", "vfs", "devmapper"]:
            why = why_driver.get(drv) if drv not in drivers else setup_why.get(drv)
            g = gds.get(drv)
            if why or not g:
                create.append(Case(f"gd create ({drv})", "gd", None, why_not=why or "not available"))
                mount.append(Case(f"gd mount ({drv})", "gd", None, why_not=why or "not available"))
                continue
            top = f"L{depth - 1}"
            rm = (lambda g: lambda: sh(g.argv("rm", "ctr"), check=False))(g)
            create.append(Case(f"gd create ({drv})", "gd", (lambda g: lambda m: m.cmd(g.argv("create", "--parent", top, "--rw", "ctr")))(g), teardown=rm))
            mount.append(
                Case(
                    f"gd mount ({drv})",
                    "gd",
                    (lambda g: lambda m: m.cmd(g.argv("mount", "ctr")))(g),
                    setup=(lambda g: lambda: g.run("create", "--parent", top, "--rw", "ctr"))(g),
                    teardown=(lambda g: lambda: (sh(g.argv("umount", "ctr"), check=False), sh(g.argv("rm", "ctr"), check=False)))(g),
                )
            )
        why = cs_why if cs_why and len(cs_ids) < depth else None
        top_id = cs_ids[depth - 1] if len(cs_ids) >= depth else None
        cs_rm = lambda: sh(cs.argv("delete-layer", ctr_id), check=False)
        create.append(Case("containers-storage create-layer", "peer", lambda m: m.cmd(cs.argv("create-layer", "--id", ctr_id, top_id)), teardown=cs_rm, why_not=why))
        mount.append(
            Case(
                "containers-storage mount",
                "peer",
                lambda m: m.cmd(cs.argv("mount", ctr_id)),
                setup=lambda: sh(cs.argv("create-layer", "--id", ctr_id, top_id)),
                teardown=lambda: (sh(cs.argv("unmount", ctr_id), check=False), cs_rm()),
                why_not=why,
            )
        )
        lowers = ":".join(f"l/{i}" for i in range(depth, 0, -1))
        merged = os.path.join(hand, "merged")

        def hand_setup():
            for d in ("upper", "work", "merged"):
                fresh_dir(os.path.join(hand, d))

        def hand_teardown():
            sh(["umount", merged], check=False)

        mount.append(
            Case(
                "kernel overlay mount (by hand)",
                "ref",
                lambda m: m.cmd(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers},upperdir=upper,workdir=work", "merged"], cwd=hand),
                setup=hand_setup,
                teardown=hand_teardown,
            )
        )
        mount.append(
            Case(
                "fuse-overlayfs mount",
                "peer",
                lambda m: m.cmd(["fuse-overlayfs", "-o", f"lowerdir={lowers},upperdir=upper,workdir=work", "merged"], cwd=hand),
                setup=hand_setup,
                teardown=hand_teardown,
                why_not=None if shutil.which("fuse-overlayfs") else "fuse-overlayfs is not installed",
            )
        )
        note = f"a read-write layer over {depth} layer(s)"
        measure("create: a read-write layer at depth", f"depth {depth}", create, rounds, note)
        measure("mount: the read-write layer's view at depth", f"depth {depth}", mount, rounds, note)
    for g in gds.values():
        g.reset()
    cs.reset()
    rmtree(hand)


def workload_read(sizes, rounds, drivers, why_driver, large_rounds):
    for size in sizes:
        count = 10_000 if size == "small" else 100_000
        layer = files_layer(count)
        views, cleanup = [], []
        for drv in ["overlay", "aufs"]:
            label = {"overlay": "kernel overlay (gd overlay)", "aufs": "aufs-compat FUSE view (gd aufs)"}[drv]
            if drv not in drivers:
                views.append((label, "gd", None, why_driver.get(drv, "not available")))
                continue
            g = Gd(drv, os.path.join(WORK, "run", f"gd-read-{drv}"))
            try:
                g.reset()
                g.run("create", "lower")
                g.run("apply", "lower", layer)
                g.run("create", "--parent", "lower", "--rw", "ctr")
                views.append((label, "gd", g.out("mount", "ctr"), None))
            except Exception as e:
                views.append((label, "gd", None, f"setup failed: {first_line(e)}"))
            cleanup.append(g.reset)
        hand = fresh_dir(os.path.join(WORK, "run", "read-hand"))
        for d in ("lower", "upper", "work", "kmerged", "upper2", "work2", "fmerged"):
            os.makedirs(os.path.join(hand, d))
        sh(["tar", "--numeric-owner", "-xpf", layer, "-C", os.path.join(hand, "lower")])
        views.append(("plain directory (no union)", "ref", os.path.join(hand, "lower"), None))
        try:
            sh(["mount", "-t", "overlay", "overlay", "-o", "lowerdir=lower,upperdir=upper,workdir=work", "kmerged"], cwd=hand)
            views.append(("kernel overlay (by hand)", "ref", os.path.join(hand, "kmerged"), None))
        except Exception as e:
            views.append(("kernel overlay (by hand)", "ref", None, first_line(e)))
        try:
            sh(["fuse-overlayfs", "-o", "lowerdir=lower,upperdir=upper2,workdir=work2", "fmerged"], cwd=hand)
            views.append(("fuse-overlayfs", "peer", os.path.join(hand, "fmerged"), None))
        except Exception as e:
            views.append(("fuse-overlayfs", "peer", None, first_line(e)))
        cleanup.append(lambda: (sh(["umount", os.path.join(hand, "kmerged")], check=False), sh(["umount", os.path.join(hand, "fmerged")], check=False), rmtree(hand)))

        def cases(script):
            return [
                Case(label, kind, (lambda v: lambda m: m.cmd(["sh", "-c", script, "sh", v]))(v), why_not=why)
                for label, kind, v, why in views
            ]

        r = rounds if size == "small" else large_rounds
        note = f"{count:,} files, warm cache"
        measure("read view: find", size, cases('find "$1" >/dev/null'), r, note)
        measure("read view: read every file", size, cases('find "$1" -type f -print0 | xargs -0 cat >/dev/null'), r, note)
        for f in cleanup:
            f()


def workload_memory(mib, rounds, drivers, why_driver, dockerd):
    layer = big_layer(mib)
    oci, _ = image_archives(f"big-{mib}m", [layer], docker=False)
    cases = apply_cases(f"big-{mib}m", [layer], oci, None, drivers, why_driver, dockerd, docker=False)
    # gd image import reads a docker-save tar; the OCI layout directory is the same image
    for c in cases:
        if c.tool == "gd image import (overlay)":
            c.run = (lambda g: lambda m: m.cmd(g.argv("image", "import", oci)))(Gd("overlay", os.path.join(WORK, "run", "gd-import-overlay")))
    measure(f"peak memory: apply one {mib} MiB layer", f"{mib} MiB", cases, rounds, note=f"{mib} MiB layer: half in four large files, half in 1 MiB files", rss=True, inputs=[layer])


# ---------------------------------------------------------------------------------------------
# Report


def save_results():
    os.makedirs(RESULTS_DIR, exist_ok=True)
    doc = {"meta": META, "results": RESULTS}
    with open(os.path.join(RESULTS_DIR, "latest.json"), "w") as f:
        json.dump(doc, f, indent=1)
    with open(os.path.join(RESULTS_DIR, "latest.md"), "w") as f:
        f.write(markdown(doc))


def fmt_s(x):
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def groups(results):
    out = {}
    for r in results:
        out.setdefault((r["workload"], r["size"]), []).append(r)
    return out


def markdown(doc):
    meta, results = doc["meta"], doc["results"]
    lines = [
        f"# gd benchmarks — {meta['date']}",
        "",
        f"`bash bench/run.sh{' --quick' if meta['quick'] else ''}` at commit `{meta['commit']}`. "
        f"Machine: {meta['machine']}. Load average at the start {meta['load_start']}, at the end {meta.get('load_end', '?')}.",
        "",
        "Every workload's cases ran interleaved in the same run; times are medians of the rounds. "
        "**ratio** = gd's median ÷ the peer's median from the same run (below 1: gd is faster). "
        "The machine is shared and noisy: read ratios, not absolute times.",
        "",
        "## Summary: best gd case against the best peer and the physical reference",
        "",
        "| workload | size | best gd | best peer | gd ÷ best peer | reference | gd ÷ reference | goal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (w, size), rs in groups(results).items():
        ok = [r for r in rs if r["status"] == "ok"]
        gd = min((r for r in ok if r["kind"] == "gd"), key=lambda r: r["median_s"], default=None)
        peer = min((r for r in ok if r["kind"] == "peer"), key=lambda r: r["median_s"], default=None)
        ref = min((r for r in ok if r["kind"] == "ref"), key=lambda r: r["median_s"], default=None)
        if w.startswith("peak memory"):
            gd = min((r for r in ok if r["kind"] == "gd"), key=lambda r: r["peak_rss_kib"], default=None)
            ok = [r for r in ok if "peak_rss_kib" in r]
            gd = min((r for r in ok if r["kind"] == "gd"), key=lambda r: r["peak_rss_kib"], default=None)
            mem_peers = [r for r in ok if r["kind"] in ("peer", "ref") and not r.get("rss_note")]
            peer = min(mem_peers, key=lambda r: r["peak_rss_kib"], default=None)
            peer = min((r for r in mem_peers if r["kind"] == "peer"), key=lambda r: r["peak_rss_kib"], default=None)
            ref = min((r for r in mem_peers if r["kind"] == "ref"), key=lambda r: r["peak_rss_kib"], default=None)
            mib = lambda r: f"{r['tool']}: {r['peak_rss_kib'] / 1024:.1f} MiB" if r else "—"
            ratio = lambda a, b: f"{a['peak_rss_kib'] / b['peak_rss_kib']:.2f}" if a and b else "—"
            met = "≤ best peer: " + ("met" if gd and peer and gd["peak_rss_kib"] <= peer["peak_rss_kib"] else "not met")
            lines.append(f"| {w} (peak RSS) | {size} | {mib(gd)} | {mib(peer)} | {ratio(gd, peer)} | {mib(ref)} | {ratio(gd, ref)} | {met} |")
            continue
        goal = []
        rp = gd["median_s"] / peer["median_s"] if gd and peer else None
        rr = gd["median_s"] / ref["median_s"] if gd and ref else None
        if rp is not None:
            goal.append("≤ best peer: " + ("met" if rp <= 1.0 else "not met"))
        if w.startswith("apply") and rr is not None:
            goal.append("≤ 1.2× tar: " + ("met" if rr <= 1.2 else "not met"))
        lines.append(
            f"| {w} | {size} | {gd['tool'] + ': ' + fmt_s(gd['median_s']) if gd else '—'} "
            f"| {peer['tool'] + ': ' + fmt_s(peer['median_s']) if peer else '—'} | {f'{rp:.2f}' if rp else '—'} "
            f"| {ref['tool'] + ': ' + fmt_s(ref['median_s']) if ref else '—'} | {f'{rr:.2f}' if rr else '—'} | {'; '.join(goal)} |"
        )
    lines.append("")
    for (w, size), rs in groups(results).items():
        lines += [f"## {w} — {size}", ""]
        if rs[0].get("note"):
            lines += [rs[0]["note"], ""]
        peers = [r for r in rs if r["kind"] in ("peer", "ref") and r["status"] == "ok"]
        with_rss = any("peak_rss_kib" in r for r in rs)
        head = "| tool | median | min – max | runs |" + (" peak RSS |" if with_rss else "") + "".join(f" ÷ {p['tool']} |" for p in peers)
        lines += [head, "|---|---|---|---|" + ("---|" if with_rss else "") + "---|" * len(peers)]
        for r in rs:
            if r["status"] != "ok":
                lines.append(f"| {r['tool']} | {r['status']}: {r['why']} | | |" + (" |" if with_rss else "") + " |" * len(peers))
                continue
            rss = "" if "peak_rss_kib" not in r else f"{r['peak_rss_kib'] / 1024:.1f} MiB" + (f" ({r['rss_note']})" if r.get("rss_note") else "")
            ratios = ""
            for p in peers:
                ratios += f" {r['median_s'] / p['median_s']:.2f} |" if r["kind"] == "gd" else " |"
            rss_cell = f" {rss} |" if with_rss else ""
            lines.append(f"| {r['tool']} | {fmt_s(r['median_s'])} | {fmt_s(r['min_s'])} – {fmt_s(r['max_s'])} | {r['runs']} |{rss_cell}{ratios}")
        lines.append("")
    lines += ["## Versions", ""] + [f"- {k}: {v}" for k, v in meta["versions"].items()] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def source_commit():
    """HEAD, marked dirty when tracked files other than bench/'s differ from it."""
    head = sh(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture=True, check=False).strip()
    changed = sh(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"], capture=True, check=False)
    return head + ("+uncommitted changes" if changed.strip() else "")


def main():
    global WORK, RESULTS_DIR, META
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small sizes only, few rounds")
    ap.add_argument("--work", default=os.environ.get("GD_BENCH_WORK", "/var/tmp/gd-bench"))
    ap.add_argument("--results", default=os.path.join(REPO, "bench", "results"))
    ap.add_argument("--rounds", type=int, help="rounds per case (default 5, 3 with --quick)")
    ap.add_argument("--only", default="apply,diff,depth,read,memory", help="comma-separated workloads")
    ap.add_argument(
        "--store",
        choices=["tmpfs", "disk"],
        default="tmpfs",
        help="where the stores live: a tmpfs mounted on WORK/run (default), or the work dir's disk",
    )
    ap.add_argument("--mirror", default=os.environ.get("GD_BENCH_MIRROR", "http://deb.debian.org/debian"))
    args = ap.parse_args()
    WORK, RESULTS_DIR = args.work, args.results
    for d in ("inputs", "cache", "run", "tmp"):
        os.makedirs(os.path.join(WORK, d), exist_ok=True)
    run_dir = os.path.join(WORK, "run")
    sh(["sh", "-c", f"grep -o ' {run_dir}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"], check=False)
    if args.store == "tmpfs":
        # Stores in memory: on a shared machine the disk's queue is the noisiest thing there is
        # (GNU tar alone took 5 to 23 s for the same 10,000 files); in memory the tools' own
        # costs are what is compared. fsync is free there: gd's and the peers' alike.
        sh(["mount", "-t", "tmpfs", "-o", "size=12g,mode=0755", "gd-bench", run_dir])
    rounds = args.rounds or (3 if args.quick else 5)
    large_rounds = args.rounds or 3
    sizes = ["small"] if args.quick else ["small", "large"]
    depths = [1, 16] if args.quick else [1, 16, 128, 500]
    mem_mib = 256 if args.quick else 2048
    only = set(args.only.split(","))

    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / (1 << 20)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    fs = sh(["findmnt", "-n", "-o", "FSTYPE", "-T", run_dir], capture=True, check=False).strip()
    META = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "commit": os.environ.get("GD_BENCH_COMMIT") or source_commit(),
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {mem_gib:.0f} GiB, Linux {platform.release()}, stores on {fs} ({args.store}), inputs in {WORK}",
        "load_start": " ".join(open("/proc/loadavg").read().split()[:3]),
        "rounds": rounds,
        "versions": tool_versions(),
    }
    drivers, why_driver = gd_drivers()
    log(f"gd drivers usable here: {', '.join(drivers)}; not: {why_driver}")
    dockerd = Dockerd()
    if only & {"apply", "diff", "memory"}:
        dockerd.start()
        if dockerd.why_not:
            log(f"docker: {dockerd.why_not}")
    try:
        if "apply" in only:
            workload_apply(sizes, rounds, drivers, why_driver, dockerd, args.mirror, large_rounds)
        if "diff" in only:
            workload_diff(sizes, rounds, drivers, why_driver, dockerd, large_rounds)
        if "depth" in only:
            workload_depth(depths, rounds, drivers, why_driver)
        if "read" in only:
            workload_read(sizes, rounds, drivers, why_driver, large_rounds)
        if "memory" in only:
            workload_memory(mem_mib, 1 if args.quick else 2, drivers, why_driver, dockerd)
    finally:
        log("stopping dockerd, unmounting")
        dockerd.stop()
        if args.store == "tmpfs":
            sh(["sh", "-c", f"grep -o ' {run_dir}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l"], check=False)
        META["load_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
        save_results()
    log(f"results: {RESULTS_DIR}/latest.md and latest.json")


if __name__ == "__main__":
    main()
