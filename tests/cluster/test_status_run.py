#!/usr/bin/python3
"""The status socket during a real 2-rank run (issue 5), and failures.

    test_status_run.py socket   mpirun -np 2 rlhfd pretrain: curl over the Unix
                                socket, /status JSON fields, Prometheus text,
                                /healthz, 400/404/405, 200 concurrent clients,
                                rlhfctl table and --json, pause/resume, checkpoint,
                                and a graceful stop (exit 0, checkpoint, summary)
    test_status_run.py failure  a rank that hangs (SIGSTOP): the job aborts within
                                parallel.timeout + a few s naming rank 1; a rank
                                killed with -9: the job ends quickly naming rank 1
Needs RLHFD_BIN, mpirun, curl, data/dl. Exit 77 without the data.
"""
import json, os, re, shutil, signal, socket, stat, subprocess, sys, tempfile, threading, time

BIN = os.environ.get("RLHFD_BIN", "build/rlhfd")
CTL = os.path.join(os.path.dirname(BIN), "rlhfctl")
SRC = os.environ.get("RLHFD_SRC", os.path.join(os.path.dirname(__file__), "..", ".."))
ENV = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
failures = []


def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)


def start(d, extra=()):
    args = ["mpirun", "--oversubscribe", "-np", "2", BIN, "pretrain", "--config", "deploy/configs/tiny.ini"]
    for kv in ["train.steps=100000", "train.threads=1", "model.embd=32", "model.layers=1",
               f"run.dir={d}/run", "train.checkpoint_every=0", "train.log_every=1000"] + list(extra):
        args += ["--set", kv]
    return subprocess.Popen(args, cwd=SRC, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(pred, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return None


def raw(sock_path, data, timeout=10):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    s.sendall(data)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        out += chunk
    s.close()
    return out


def http(sock_path, method, path):
    resp = raw(sock_path, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0
    return status, body.decode(errors="replace")


def status_json(sock):
    st, body = http(sock, "GET", "/status")
    return json.loads(body) if st == 200 else None


def rank_pid(proc, rank):
    for line in subprocess.run(["pgrep", "-f", f"{BIN} pretrain"], capture_output=True, text=True).stdout.split():
        try:
            with open(f"/proc/{line}/environ", "rb") as f:
                if f"OMPI_COMM_WORLD_RANK={rank}".encode() in f.read().split(b"\0"):
                    return int(line)
        except OSError:
            pass
    return None


def test_socket(d):
    p = start(d)
    sock = f"{d}/run/status.sock"
    try:
        ok = wait_for(lambda: os.path.exists(sock) and (status_json(sock) or {}).get("step", 0) >= 2, 60)
        check(ok is not None, "the status socket answers during a 2-rank run")
        if not ok:
            return
        check(stat.S_IMODE(os.stat(sock).st_mode) == 0o600, f"socket mode 0600 ({oct(stat.S_IMODE(os.stat(sock).st_mode))})")
        c = subprocess.run(["curl", "-s", "--max-time", "10", "--unix-socket", sock, "http://rlhfd/status"],
                           capture_output=True, text=True)
        j = json.loads(c.stdout)
        for k in ["run_id", "command", "step", "total_steps", "phase", "world", "throughput", "metrics", "eta_s",
                  "run_dir", "socket", "started_unix"]:
            check(k in j, f"/status has '{k}'")
        check(j["command"] == "pretrain" and j["total_steps"] == 100000, "command and total steps")
        w = j["world"]
        check(w["size"] == 2 and w["dp"] == 2 and w["tp"] == 1 and len(w["ranks"]) == 2,
              f"world layout 2 = dp 2 x tp 1 with 2 ranks ({w})")
        check(all(r["heartbeat_age_s"] < 30 and r["host"] for r in w["ranks"]), "every rank has a fresh heartbeat and a host")
        check("loss" in j["metrics"] and j["throughput"]["tokens_per_s"] > 0, "last metrics and throughput")
        st, prom = http(sock, "GET", "/metrics")
        check(st == 200, "/metrics 200")
        line_re = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? [-+0-9.eEinfNa]+$')
        bad = [l for l in prom.splitlines() if l and not l.startswith("#") and not line_re.match(l)]
        check(not bad and "rlhfd_step " in prom, f"Prometheus text exposition parses ({bad[:2]})")
        check(http(sock, "GET", "/healthz")[0] == 200, "/healthz 200")
        check(http(sock, "GET", "/nope")[0] == 404, "unknown path 404")
        check(http(sock, "DELETE", "/status")[0] == 405, "wrong method 405")
        resp = raw(sock, b"\x16\x03\x01garbage that is not http\r\n\r\n")
        check(resp.startswith(b"HTTP/1.1 400"), "garbage 400")
        # many clients at once, while the run trains
        results = []
        lock = threading.Lock()

        def client():
            try:
                r = http(sock, "GET", "/status")[0]
            except OSError:
                r = -1
            with lock:
                results.append(r)
        step0 = status_json(sock)["step"]
        threads = [threading.Thread(target=client) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ok200 = sum(1 for r in results if r == 200)
        check(ok200 >= 190, f"200 concurrent clients: {ok200} got 200 (the rest 503 at most)")
        check(wait_for(lambda: status_json(sock)["step"] > step0, 30) is not None, "training goes on under the load")
        t = subprocess.run([CTL, "status", "--socket", sock], capture_output=True, text=True)
        check(t.returncode == 0 and "dp 2 x tp 1" in t.stdout and "pretrain" in t.stdout, "rlhfctl status table")
        t = subprocess.run([CTL, "status", "--socket", sock, "--json"], capture_output=True, text=True)
        check(t.returncode == 0 and json.loads(t.stdout)["world"]["size"] == 2, "rlhfctl status --json")
        # pause / resume
        check(subprocess.run([CTL, "pause", "--socket", sock], capture_output=True).returncode == 0, "rlhfctl pause")
        paused = wait_for(lambda: (status_json(sock) or {}).get("paused"), 30)
        check(paused is not None, "/status shows paused")
        s1 = status_json(sock)["step"]
        time.sleep(2)
        s2 = status_json(sock)["step"]
        check(s1 == s2, f"no step while paused ({s1} -> {s2})")
        subprocess.run([CTL, "resume", "--socket", sock], capture_output=True)
        check(wait_for(lambda: status_json(sock)["step"] > s2, 30) is not None, "resume: steps advance again")
        # checkpoint on demand
        check(http(sock, "POST", "/checkpoint")[0] == 202, "POST /checkpoint 202")
        ck = wait_for(lambda: [x for x in os.listdir(f"{d}/run") if x.startswith("ckpt-") and ".tmp" not in x], 30)
        check(bool(ck), f"a checkpoint appears ({ck})")
        # graceful stop
        check(http(sock, "POST", "/stop")[0] == 202, "POST /stop 202")
        out, err = p.communicate(timeout=120)
        check(p.returncode == 0, f"stop: the run exits 0 ({p.returncode})")
        summary = json.loads(out.strip().splitlines()[-1])
        check(summary.get("stopped") is True and os.path.isdir(summary["checkpoint"]),
              f"summary says stopped, with its checkpoint ({summary.get('checkpoint')})")
        check(not os.path.exists(sock), "the socket file is removed at exit")
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_failure(d):
    p = start(d, ["parallel.timeout=3"])
    sock = f"{d}/run/status.sock"
    try:
        ok = wait_for(lambda: os.path.exists(sock) and (status_json(sock) or {}).get("step", 0) >= 2, 60)
        check(ok is not None, "run started")
        pid = rank_pid(p, 1)
        t0 = time.time()
        os.kill(pid, signal.SIGSTOP)
        out, err = p.communicate(timeout=60)
        dt = time.time() - t0
        check(p.returncode != 0, f"a hung rank: the job fails ({p.returncode}) instead of hanging")
        check("not answering: rank 1" in err, "the message names rank 1")
        check("in phase '" in err, "and the phase")
        print(f"      aborted {dt:.1f} s after SIGSTOP (parallel.timeout=3)")
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    shutil.rmtree(f"{d}/run", ignore_errors=True)
    limited = ["train.steps=30", "train.checkpoint_every=5"]
    p = start(d, limited)
    try:
        ok = wait_for(lambda: os.path.exists(sock) and (status_json(sock) or {}).get("step", 0) >= 7, 60)
        pid = rank_pid(p, 1)
        t0 = time.time()
        os.kill(pid, signal.SIGKILL)
        out, err = p.communicate(timeout=60)
        dt = time.time() - t0
        check(p.returncode != 0 and "rank 1" in err, f"kill -9 of rank 1: the job ends ({p.returncode}) naming rank 1")
        print(f"      ended {dt:.1f} s after kill -9")
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    # the next launch resumes from the last checkpoint
    args = ["mpirun", "--oversubscribe", "-np", "2", BIN, "pretrain", "--config", "deploy/configs/tiny.ini",
            "--resume", "auto"]
    for kv in ["train.steps=30", "train.threads=1", "model.embd=32", "model.layers=1", f"run.dir={d}/run",
               "train.checkpoint_every=5", "train.log_every=1000"]:
        args += ["--set", kv]
    r = subprocess.run(args, cwd=SRC, env=ENV, capture_output=True, text=True, timeout=300)
    m = re.search(r"resuming from \S*ckpt-(\d+)", r.stderr)
    check(r.returncode == 0 and m is not None and int(m.group(1)) >= 5,
          f"the next launch resumes from the last checkpoint ({m.group(0) if m else r.stderr[-300:]})")
    with open(f"{d}/run/metrics.jsonl") as f:
        steps = [json.loads(l)["step"] for l in f]
    check(steps == list(range(1, 31)), f"and finishes with every step logged once ({len(steps)} lines)")


def main():
    if not os.path.exists(os.path.join(SRC, "data/dl/fortunes.bin")):
        print("skip: data/dl/fortunes.bin is missing (run deploy/fetch-data.sh and deploy/prepare-data.sh)")
        sys.exit(77)
    d = tempfile.mkdtemp(prefix="rlhfd-st-")
    try:
        {"socket": test_socket, "failure": test_failure}[sys.argv[1]](d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
