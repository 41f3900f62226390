"""Replays the Dockerfile outside Docker (called by `scripts/image-build.sh check`).

1. Build stage: every instruction is replayed in order in an empty directory: COPY
   copies exactly what it names (after .dockerignore), RUN must be
   `scripts/image-build.sh ...` and is run there, ARG/ENV/WORKDIR set the environment.
   Any other instruction fails the check, so nothing the image does is left unreplayed.
   A file the build needs but no COPY brings in fails the build, as it would in Docker.
2. Runtime stage: the build stage's output is laid out under a scratch root as the
   COPY --from lines say, and the binary is run as the stage's USER (a non-root UID)
   with exactly the stage's ENV (absolute paths mapped under the scratch root, the port
   swapped for a free one) plus the serve secrets as *_FILE files. The stage's
   HEALTHCHECK command must pass, /readyz must answer 200, the process must run as that
   UID, the SQLite audit file must appear in the data directory, and SIGTERM must stop
   it with exit code 0.
3. The built binary must carry its dependency list (cargo auditable: section .dep-v0)
   and need no shared library beyond what distroless `cc` ships.
"""

import atexit
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib

REPO = sys.argv[1]
DOCKERFILE = os.environ.get("DOCKERFILE", os.path.join(REPO, "Dockerfile"))
# Shared libraries present in gcr.io/distroless/cc-debian12 (glibc, libgcc, libstdc++).
DISTROLESS_CC_LIBS = re.compile(
    r"^(linux-vdso|ld-linux-x86-64|ld-linux-aarch64|libc|libm|libdl|libpthread|librt"
    r"|libgcc_s|libstdc\+\+)\.so"
)


def fail(msg):
    print(f"\n[image-check] FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def log(msg):
    print(f"[image-check] {msg}", file=sys.stderr, flush=True)


def instructions(path):
    """Dockerfile -> [(keyword, rest)], continuation lines joined, comments dropped."""
    out, buf = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            kw, _, rest = buf.strip().partition(" ")
            out.append((kw.upper(), rest.strip()))
            buf = ""
    return out


def expand(value, env):
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: env.get(m.group(1) or m.group(2), ""), value
    )


def parse_kv(rest, env):
    """ENV/ARG/LABEL `K=V K2="V 2"` -> dict (values expanded)."""
    pairs = {}
    for tok in shlex.split(rest):
        k, eq, v = tok.partition("=")
        pairs[k] = expand(v, env) if eq else None
    return pairs


def split_flags(rest):
    toks = shlex.split(rest)
    flags = {}
    while toks and toks[0].startswith("--"):
        k, _, v = toks.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, toks


def stages(instrs):
    """Split into (global ARGs, [(from-line, [instr...])])."""
    glob, out = [], []
    for kw, rest in instrs:
        if kw == "FROM":
            out.append((rest, []))
        elif out:
            out[-1][1].append((kw, rest))
        else:
            glob.append((kw, rest))
    return glob, out


def dockerignore():
    path = os.path.join(REPO, ".dockerignore")
    pats = []
    if os.path.exists(path):
        for line in open(path):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("!"):
                fail(".dockerignore exceptions (!) are not replayed; keep the file simple")
            pats.append(line.strip("/"))
    return pats


def ignored(rel, pats):
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) for pat in pats for p in prefixes)


def copy_into(src_rel, dest, pats):
    """Docker COPY of one context path: a directory's contents, or a file."""
    src = os.path.join(REPO, src_rel)
    if any(c in src_rel for c in "*?["):
        fail(f"COPY {src_rel}: wildcards are not replayed; name the paths")
    if not os.path.exists(src) or ignored(os.path.normpath(src_rel), pats):
        fail(f"COPY {src_rel}: not in the build context")
    if os.path.isdir(src):
        for root, dirs, files in os.walk(src):
            rel_root = os.path.relpath(root, REPO)
            dirs[:] = [d for d in dirs if not ignored(os.path.join(rel_root, d), pats)]
            target_root = os.path.join(dest, os.path.relpath(root, src))
            os.makedirs(target_root, exist_ok=True)
            for name in files:
                if not ignored(os.path.join(rel_root, name), pats):
                    shutil.copy2(os.path.join(root, name), target_root)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(src, dest)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    pats = dockerignore()
    glob, stage_list = stages(instructions(DOCKERFILE))
    if len(stage_list) != 2:
        fail(f"expected a build stage and a runtime stage, found {len(stage_list)}")
    args = {}
    for kw, rest in glob:
        if kw != "ARG":
            fail(f"{kw} before FROM is not replayed")
        args.update({k: v or "" for k, v in parse_kv(rest, args).items()})

    scratch = tempfile.mkdtemp(prefix="tv-image-")
    if os.environ.get("TV_KEEP_SCRATCH") != "1":
        atexit.register(shutil.rmtree, scratch, True)
    os.chmod(scratch, 0o755)
    ctx = os.path.join(scratch, "build")  # the build stage's filesystem, rooted here
    os.makedirs(ctx)
    out_root = os.path.join(scratch, "buildfs")  # absolute paths the build writes (/out)

    # ---- 1. build stage -------------------------------------------------------------
    from_line, body = stage_list[0]
    log(f"build stage: FROM {expand(from_line, args)}")
    env = dict(os.environ)
    workdir = None
    for kw, rest in body:
        if kw == "ARG":
            for k, v in parse_kv(rest, {**args, **env}).items():
                env[k] = v if v is not None else args.get(k, "")
        elif kw == "ENV":
            env.update(parse_kv(rest, env))
        elif kw == "WORKDIR":
            workdir = rest
        elif kw == "COPY":
            flags, paths = split_flags(rest)
            if "from" in flags:
                fail("COPY --from in the build stage is not replayed")
            *srcs, dest = paths
            if workdir is None:
                fail("the build stage needs a WORKDIR before COPY")
            dest_abs = os.path.join(ctx, os.path.relpath(os.path.join(workdir, dest), workdir))
            for s in srcs:
                is_dir = os.path.isdir(os.path.join(REPO, s))
                into_dir = dest.endswith("/") or len(srcs) > 1
                target = dest_abs if is_dir or not into_dir else os.path.join(dest_abs, os.path.basename(s))
                copy_into(s, target, pats)
            log(f"COPY {' '.join(paths)}")
        elif kw == "RUN":
            argv = shlex.split(rest)
            if not argv or argv[0] != "scripts/image-build.sh":
                fail(f"RUN {rest}: the build stage may only RUN scripts/image-build.sh")
            # Absolute output paths (/out) live under the scratch root.
            argv = [os.path.join(out_root, a.lstrip("/")) if a.startswith("/") else a for a in argv]
            log(f"RUN {' '.join(argv)}")
            started = time.monotonic()
            r = subprocess.run(argv, cwd=ctx, env=env)
            if r.returncode != 0:
                fail(f"RUN {rest} exited {r.returncode} (a file missing from the COPYs?)")
            log(f"  took {time.monotonic() - started:.0f}s")
        else:
            fail(f"{kw} in the build stage is not replayed; use scripts/image-build.sh")

    # ---- 2. runtime stage -----------------------------------------------------------
    from_line, body = stage_list[1]
    log(f"runtime stage: FROM {from_line}")
    rootfs = os.path.join(scratch, "rootfs")
    user, run_env, run_workdir, health, entry, cmd = None, {}, "/", None, None, []
    copies, labels = [], {}
    for kw, rest in body:
        if kw == "COPY":
            flags, paths = split_flags(rest)
            if "from" not in flags:
                fail(f"COPY {rest}: the runtime stage should copy only from the build stage")
            copies.append((flags, paths))
        elif kw == "USER":
            user = rest
        elif kw == "ENV":
            run_env.update(parse_kv(rest, run_env))
        elif kw == "WORKDIR":
            run_workdir = rest
        elif kw == "HEALTHCHECK":
            m = re.search(r"CMD\s+(\[.*\])\s*$", rest)
            if not m:
                fail("HEALTHCHECK must be CMD [exec form] (no shell in the image)")
            health = json.loads(m.group(1))
        elif kw == "ENTRYPOINT":
            entry = json.loads(rest)
        elif kw == "CMD":
            cmd = json.loads(rest)
        elif kw == "LABEL":
            labels.update(parse_kv(rest, {}))
        elif kw == "RUN":
            fail("RUN in the runtime stage: keep it minimal (and replayable)")
    if not user or not re.fullmatch(r"\d+:\d+", user) or user.startswith("0:"):
        fail(f"USER must be a fixed numeric non-root uid:gid, got {user!r}")
    uid, gid = (int(x) for x in user.split(":"))
    oci = ["title", "description", "version", "revision", "licenses"]
    missing = [k for k in oci if f"org.opencontainers.image.{k}" not in labels]
    if missing:
        fail(f"OCI labels missing: {missing}")
    if health is None or entry is None:
        fail("the runtime stage needs a HEALTHCHECK and an exec-form ENTRYPOINT")

    def mapped(path):
        return os.path.join(rootfs, path.lstrip("/"))

    for flags, (src, dest) in copies:
        src_path = os.path.join(out_root, src.lstrip("/"))
        if not os.path.exists(src_path):
            fail(f"COPY --from {src}: the build stage did not produce it")
        if os.path.isdir(src_path):
            shutil.copytree(src_path, mapped(dest), dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(mapped(dest)), exist_ok=True)
            shutil.copy2(src_path, mapped(dest))
        if "chown" in flags:
            owner, group = (int(x) for x in flags["chown"].split(":"))
            for root, dirs, files in os.walk(mapped(dest)):
                for p in [root] + [os.path.join(root, n) for n in files]:
                    if os.geteuid() == 0:
                        os.chown(p, owner, group)
    # Everything the run needs must be reachable by the unprivileged user.
    for d in [scratch, rootfs]:
        os.chmod(d, 0o755)
    for root, dirs, _ in os.walk(rootfs):
        for d in dirs:
            p = os.path.join(root, d)
            if os.stat(p).st_uid == 0:
                os.chmod(p, 0o755)

    binary = mapped(entry[0])
    check_binary(binary)

    # The image's ENV, with its absolute paths under the scratch root.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    for k, v in run_env.items():
        if v.startswith("sqlite:///"):
            v = "sqlite://" + mapped(v[len("sqlite://"):])
        elif v.startswith("/"):
            v = mapped(v)
        env[k] = v
    host, _, _ = env.get("LISTEN_ADDR", "127.0.0.1:8080").rpartition(":")
    port = free_port()
    env["LISTEN_ADDR"] = f"{host}:{port}"
    log(f"runtime ENV (paths mapped, port swapped): {env}")

    secrets = os.path.join(scratch, "secrets")
    os.makedirs(secrets)
    os.chmod(secrets, 0o755)
    fake = os.urandom(16).hex()
    for name, value in [
        ("CORTI_CLIENT_SECRET", f"fake-client-secret-{fake}"),
        ("SESSION_JWT_SECRET", f"fake-session-secret-{fake}-0123456789"),
        ("AUDIT_HMAC_KEY", f"fake-audit-key-{fake}"),
    ]:
        path = os.path.join(secrets, name.lower())
        with open(path, "w") as f:
            f.write(value + "\n")
        os.chmod(path, 0o400)
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
        env[f"{name}_FILE"] = path
    # The replay checks the image starts and serves; signed checkpoints are not its subject.
    env.update({"CORTI_ENVIRONMENT": "eu", "CORTI_CLIENT_ID": "image-check",
                "AUDIT_ALLOW_UNSIGNED": "true"})

    if os.geteuid() == 0:
        shutil.which("setpriv") or fail("running as root needs setpriv (util-linux) to drop to the image's USER")
        as_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                   "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        want_uid = uid
    else:
        log(f"not root: running as the current user {os.geteuid()} instead of {uid}")
        as_user, want_uid = [], os.geteuid()

    cwd = mapped(run_workdir)
    argv = as_user + [binary] + entry[1:] + cmd
    health_argv = as_user + [mapped(health[0])] + health[1:]
    log(f"starting: {' '.join(argv)} (cwd {cwd})")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                fail(f"the service exited with {proc.returncode} before it was healthy")
            r = subprocess.run(health_argv, cwd=cwd, env=env, capture_output=True, text=True)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline:
                fail(f"HEALTHCHECK never passed: {r.stderr.strip()}")
            time.sleep(0.5)
        log(f"HEALTHCHECK {' '.join(health)}: ok")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        if status != 200:
            fail(f"/readyz answered {status}: the audit store in the image's DATABASE_URL is not usable")
        log("/readyz: 200")
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        if any(int(u) != want_uid for u in uids) or want_uid == 0:
            fail(f"the service runs as uid {uids}, not the image's non-root {want_uid}")
        log(f"runs as uid {want_uid}")
        db = env.get("DATABASE_URL", "")
        if db.startswith("sqlite://"):
            path = db[len("sqlite://"):].split("?")[0]
            if not os.path.exists(path):
                fail(f"no SQLite audit file at {path}")
            log(f"audit store created: {path}")
        proc.terminate()
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fail("the service did not stop within 20 s of SIGTERM")
        if code != 0:
            fail(f"the service exited {code} on SIGTERM")
        log("SIGTERM: exit 0")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    log(f"ok; release binary (unstripped): {os.path.join(target, 'release', 'token-vendor')}")


def check_binary(binary):
    """The image's binary: dependency list embedded, only distroless cc's libraries."""
    with tempfile.TemporaryDirectory() as d:
        dump = os.path.join(d, "dep-v0")
        r = subprocess.run(["objcopy", "--dump-section", f".dep-v0={dump}", binary, os.path.join(d, "copy")],
                           capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(dump):
            fail(f"no .dep-v0 section (cargo auditable) in the stripped binary: {r.stderr.strip()}")
        deps = json.loads(zlib.decompress(open(dump, "rb").read()))
    names = {p["name"] for p in deps.get("packages", [])}
    for must in ["token-vendor", "actix-web", "rustls"]:
        if must not in names:
            fail(f"the embedded dependency list lacks {must}")
    log(f"embedded dependency list: {len(names)} packages")
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = [line.split()[0].rsplit("/", 1)[-1] for line in r.stdout.splitlines() if line.strip()]
    extra = [lib for lib in libs if not DISTROLESS_CC_LIBS.match(lib)]
    if extra:
        fail(f"the binary needs libraries distroless cc lacks: {extra}")
    log(f"shared libraries: {libs}")


if __name__ == "__main__":
    main()
