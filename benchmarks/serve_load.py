"""`mixlora serve` under load, vs the same load on one adapter and vs `mlx_lm.server`; a soak run.

Model: TinyLlama-shaped with random weights (hidden 2048, 32 / 4 heads, intermediate
5632, vocab 32000) and `--layers` decoder layers, fp32; four random rank-8 q/k/v/o
adapters on every layer (`bench.spec`); a word-level tokenizer with 32000 words.
Both servers run as their own processes on 127.0.0.1 (ephemeral ports), side by side,
and the scenarios alternate between them. mlx-lm's
server gets the same OpenBLAS preload and GEMV shim as ours (it is started through
`import mlx_mixlora`), and the adapters in mlx-lm's format (the same factors).

Before the scenarios each server answers one short untimed request (first-use
costs: buffer allocation, mlx-lm's first adapter load).

Both servers get the same prompts in a scenario, and no prompt repeats across
scenarios (mlx-lm's prompt cache would otherwise serve a later scenario's
prefills from an earlier one's).

Load: N concurrent clients (`--clients`, default 1 4 16), each sending streaming
completion requests one after another (`--requests` per client; a scenario also
stops after `--scenario-timeout` s): a 32-token random prompt, `max_tokens` 32,
greedy. Mixed: request j of client i asks for adapter (i + j) mod 4; single:
always adapter a0. Per scenario: aggregate generated tokens/s over the scenario's
wall time (tokens as the servers' `usage` reports them), and p50 / p95 time to first token (client side, request sent → first
text chunk).

With `--rounds R` every scenario runs R times (round after round, so a change in a
shared machine's load hits every scenario alike) and `load` keeps, per scenario, the
round with the median tokens/s; `load_rounds` has them all.

Soak (`--soak S`): our server alone, 8 clients for S seconds of mixed load; 5% of
requests malformed (bad JSON, unknown model, bad field) and 10% of streams dropped
by the client after the first chunk. Recorded: server crashes (process exit, 5xx
answers), rows left in the batch after the load (/health `active_rows`, `queued`),
and the server's resident memory sampled over the run.

    python benchmarks/serve_load.py --out benchmarks/results/serve_load.json [--soak 120] [--quick]
    # while iterating: --clients 1 4 --requests 2 (fewer scenarios), --split-rows 0 (A/B)
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mlx_mixlora  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np

from mlx_mixlora.bench.env import load_average, machine_record
from mlx_mixlora.bench.spec import Sizes, random_adapters, random_model, shape_config
from mlx_mixlora.io import write_json

N_WORDS = 32000
ADAPTERS = 4
LORA_KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]


# --- fixtures -----------------------------------------------------------------------
def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer over w0..w31999 (ids 3..), with <s>, </s>, <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(N_WORDS - 3):
        vocab[f"w{i}"] = i + 3
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(str(path))


def mlx_lm_adapter(src: Path, dst: Path, layers: int) -> Path:
    """The same adapter in mlx-lm's layout: lora_a [in, r] = Aᵀ, lora_b [r, out] = Bᵀ."""
    cfg = json.loads((src / "adapter_config.json").read_text())
    w = mx.load(str(src / "adapters.safetensors"))
    dst.mkdir(parents=True)
    out = {}
    for k, v in w.items():
        out[k] = v.T
    mx.save_safetensors(str(dst / "adapters.safetensors"), out)
    lora = {"rank": cfg["rank"], "scale": cfg["alpha"] / cfg["rank"], "dropout": 0.0}
    (dst / "adapter_config.json").write_text(
        json.dumps(
            {
                "fine_tune_type": "lora",
                "num_layers": layers,
                "lora_parameters": {**lora, "keys": LORA_KEYS},
            }
        )
    )
    return dst


def fixtures(work: Path, layers: int) -> tuple[Path, list[Path], list[Path]]:
    config = shape_config("tinyllama", layers)
    model = random_model(work / "model", config)
    save_tokenizer(model)
    ours = [
        Path(p) for p in random_adapters(model, config, work / "ads", Sizes(n_adapters=ADAPTERS))
    ]
    theirs = [mlx_lm_adapter(p, work / "mlx_lm_ads" / p.name, layers) for p in ours]
    return model, ours, theirs


# --- servers ------------------------------------------------------------------------
def start(cmd: list[str], ready: str, timeout: float = 180) -> tuple[subprocess.Popen, int]:
    """Start a server process; wait (bounded) for the line that names its port."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        m = re.search(ready, proc.stderr.readline())
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"server did not start: {' '.join(cmd)}")


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(2)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def ours_cmd(
    model: Path, adapters: list[Path], port: int, max_batch: int, split_rows: int | None = None
) -> list[str]:
    split = [] if split_rows is None else ["--split-rows", str(split_rows)]
    return [
        sys.executable, "-m", "mlx_mixlora.cli", "serve", "--model", str(model),
        "--adapters", *map(str, adapters), "--port", str(port),
        "--max-batch", str(max_batch), "--max-queue", "64", *split,
    ]  # fmt: skip


def mlx_lm_cmd(model: Path, port: int) -> list[str]:
    code = (
        "import sys, logging, mlx_mixlora; from mlx_lm.server import main; "
        "logging.getLogger().addHandler(logging.StreamHandler()); "
        f"sys.argv = ['mlx_lm.server', '--model', {str(model)!r}, '--port', '{port}']; main()"
    )
    return [sys.executable, "-c", code]


def free_port() -> int:
    from mlx_mixlora.serve.server import bind

    s = bind("127.0.0.1", 0)
    port = s.getsockname()[1]
    s.close()
    return port


def wait_http(port: int, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v1/models")
            c.getresponse().read()
            c.close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no server answered on port {port}")


# --- clients ------------------------------------------------------------------------
def stream_request(port: int, body: dict, drop_after_first: bool = False) -> dict:
    """One streaming completion: status, time to first text, generated chunk count."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        c.request(
            "POST",
            "/v1/completions",
            body=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        r = c.getresponse()
        if r.status != 200:
            r.read()
            return {"status": r.status}
        ttft, chunks, usage = None, 0, None
        for line in r:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                return {"status": 500}
            usage = ev.get("usage") or usage
            if ev["choices"] and ev["choices"][0].get("text"):
                chunks += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
                    if drop_after_first:
                        return {"status": "dropped", "ttft": ttft, "tokens": chunks}
        tokens = usage["completion_tokens"] if usage else chunks
        return {"status": 200, "ttft": ttft, "tokens": tokens, "seconds": time.perf_counter() - t0}
    finally:
        c.close()


def prompt(rng: random.Random, n: int = 32) -> str:
    return " ".join(f"w{rng.randrange(N_WORDS - 3)}" for _ in range(n))


def run_load(
    port: int, clients: int, requests: int, body_for, timeout: float, seed: str = ""
) -> dict:
    results: list[dict] = []
    lock = threading.Lock()
    end = time.monotonic() + timeout

    def client(i: int) -> None:
        rng = random.Random(f"{seed}/{i}")
        for j in range(requests):
            if time.monotonic() > end:
                return
            res = stream_request(port, body_for(i, j, rng))
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    tokens = sum(r["tokens"] for r in ok)
    return {
        "clients": clients,
        "requests_ok": len(ok),
        "requests_failed": len(results) - len(ok),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
        "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
        "ttft_p95_s": round(float(np.percentile(ttft, 95)), 3) if ttft else None,
    }


def load_table(a, model: Path, ours: list[Path], theirs: list[Path]) -> list[dict]:
    def body(model_name, adapter):
        def make(i, j, rng):
            b = {"model": model_name(i, j), "prompt": prompt(rng), "max_tokens": a.max_tokens}
            b.update(temperature=0.0, stream=True, stream_options={"include_usage": True})
            if adapter is not None:
                b["adapters"] = adapter(i, j)
            return b

        return make

    names = [p.name for p in ours]
    scenarios = {  # server -> load -> (model name, adapters field) per (client, request)
        "mixlora serve": {
            "mixed": body(lambda i, j: names[(i + j) % ADAPTERS], None),
            "single": body(lambda i, j: names[0], None),
        },
        "mlx_lm.server (per-request adapters)": {
            "mixed": body(
                lambda i, j: "default_model", lambda i, j: str(theirs[(i + j) % ADAPTERS])
            ),
            "single": body(lambda i, j: "default_model", lambda i, j: str(theirs[0])),
        },
    }
    if a.no_mlx_lm:
        scenarios.pop("mlx_lm.server (per-request adapters)")
    # both servers run side by side (an idle one uses no CPU) and the scenarios alternate
    # between them, so a change in the shared machine's load hits both alike
    procs, ports = [], {}
    try:
        proc, ports["mixlora serve"] = start(
            ours_cmd(model, ours, 0, max(a.clients), a.split_rows),
            r"at http://127\.0\.0\.1:(\d+)/v1",
        )
        procs.append(proc)
        if not a.no_mlx_lm:
            port = free_port()
            procs.append(subprocess.Popen(mlx_lm_cmd(model, port), stderr=subprocess.DEVNULL))
            wait_http(port)
            ports["mlx_lm.server (per-request adapters)"] = port
        for port in ports.values():  # first-use costs (allocation, adapter load) are not load
            warm = {"model": names[0], "prompt": prompt(random.Random(-1)), "max_tokens": 4}
            if port != ports["mixlora serve"]:
                warm.update(model="default_model", adapters=str(theirs[0]))
            stream_request(port, {**warm, "temperature": 0.0, "stream": True})
        rows = []
        for k in range(a.rounds):
            for n in a.clients:
                for load in ("mixed", "single"):
                    for server, loads in scenarios.items():
                        seed = f"{k}/{n}/{load}"
                        r = run_load(
                            ports[server], n, a.requests, loads[load], a.scenario_timeout, seed
                        )
                        rows.append({"round": k, "server": server, "load": load, **r})
                        print(json.dumps(rows[-1]), flush=True)
    finally:
        for proc in procs:
            stop(proc)
    return rows


def median_rounds(rows: list[dict]) -> list[dict]:
    """Per scenario, the round with the median tokens/s (all rounds' figures beside it)."""
    out = []
    for key in dict.fromkeys((r["server"], r["load"], r["clients"]) for r in rows):
        runs = sorted(
            (r for r in rows if (r["server"], r["load"], r["clients"]) == key),
            key=lambda r: r["tokens_per_s"],
        )
        mid = {k: v for k, v in runs[(len(runs) - 1) // 2].items() if k != "round"}
        out.append({**mid, "tokens_per_s_rounds": [r["tokens_per_s"] for r in runs]})
    return out


# --- soak ---------------------------------------------------------------------------
def health(port: int) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/health")
    out = json.loads(c.getresponse().read())
    c.close()
    return out


def raw_post(port: int, body: bytes) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def soak(a, model: Path, ours: list[Path]) -> dict:
    names = [p.name for p in ours]
    proc, port = start(
        ours_cmd(model, ours, 0, 8, a.split_rows), r"at http://127\.0\.0\.1:(\d+)/v1"
    )
    counts = {"ok": 0, "malformed_400": 0, "dropped": 0, "5xx": 0, "other": 0}
    lock = threading.Lock()
    memory: list[dict] = []
    end = time.monotonic() + a.soak
    bad = [b"{not json", json.dumps({"model": "nope", "prompt": "w1"}).encode(),
           json.dumps({"model": names[0], "prompt": "w1", "temperature": 7}).encode()]  # fmt: skip

    def client(i: int) -> None:
        rng = random.Random(1000 + i)
        j = 0
        while time.monotonic() < end:
            j += 1
            u = rng.random()
            if u < 0.05:
                status = raw_post(port, rng.choice(bad))
                key = "malformed_400" if status == 400 else ("5xx" if status >= 500 else "other")
            else:
                body = {
                    "model": names[(i + j) % ADAPTERS],
                    "prompt": prompt(rng, rng.randrange(4, 64)),
                }
                body.update(
                    max_tokens=rng.randrange(1, 48), temperature=rng.choice([0.0, 0.8]), stream=True
                )
                res = stream_request(port, body, drop_after_first=u > 0.9)
                s = res["status"]
                key = (
                    "dropped"
                    if s == "dropped"
                    else ("ok" if s == 200 else ("5xx" if s >= 500 else "other"))
                )
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        h = health(port)
        memory.append(
            {
                "t_s": round(time.monotonic() - t0, 1),
                "rss_mb": h["rss_mb"],
                "mlx_active_mb": h["mlx_active_mb"],
                "active_rows": h["active_rows"],
            }
        )
        time.sleep(min(5.0, max(0.5, a.soak / 20)))
    for t in threads:
        t.join()
    time.sleep(1.0)  # the last dropped streams are noticed at the next decode turn
    after = health(port)
    alive = proc.poll() is None
    code = stop(proc)
    rss = [m["rss_mb"] for m in memory if m["rss_mb"] is not None]
    half = rss[len(rss) // 2 :]
    return {
        "seconds": a.soak,
        "clients": 8,
        "requests": counts,
        "server_alive_after_load": alive,
        "exit_code_after_ctrl_c": code,
        "after_load": {
            k: after[k]
            for k in ("active_rows", "queued", "served", "cancelled", "rss_mb", "mlx_active_mb")
        },
        "rss_mb_first_last_max": [rss[0], rss[-1], max(rss)] if rss else None,
        "rss_mb_second_half_min_max": [min(half), max(half)] if half else None,
        "memory_samples": memory,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=3, help="Requests per client per scenario.")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Run every scenario this many times, interleaved; `load` keeps each one's median.",
    )
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--scenario-timeout", type=float, default=120.0)
    p.add_argument("--soak", type=float, default=0.0, help="Soak seconds (0: no soak).")
    p.add_argument("--no-mlx-lm", action="store_true")
    p.add_argument(
        "--split-rows", type=int, default=None, help="Pass --split-rows N to mixlora serve."
    )
    p.add_argument("--quick", action="store_true", help="Smoke test: tiny sizes, not a result.")
    a = p.parse_args()
    if a.quick:
        a.clients, a.requests, a.max_tokens = [1, 2], 2, 4
        a.soak = min(a.soak, 5.0)
    if a.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    if a.soak > 600:
        raise SystemExit("--soak is bounded to 600 s")
    with tempfile.TemporaryDirectory(prefix="mixlora-serve-bench-") as tmp:
        model, ours, theirs = fixtures(Path(tmp), a.layers)
        rec = {"machine": machine_record(), "load_average_before": load_average()}
        rec["setup"] = {
            "model": f"TinyLlama-shaped, random, {a.layers} layers, fp32",
            "adapters": f"{ADAPTERS} x rank 8, q/k/v/o, every layer",
            "prompt_tokens": 32,
            "max_tokens": a.max_tokens,
            "requests_per_client": a.requests,
            "rounds": a.rounds,
            "scenario_timeout_s": a.scenario_timeout,
            "warmup": "one 4-token request per server before the scenarios, untimed",
            "split_rows": "server default" if a.split_rows is None else a.split_rows,
            "quick": a.quick,
        }
        rec["load_rounds"] = load_table(a, model, ours, theirs)
        rec["load"] = median_rounds(rec["load_rounds"])
        if a.soak:
            rec["soak"] = soak(a, model, ours)
        rec["load_average_after"] = load_average()
    write_json(a.out, rec)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
