"""Time to first token and tokens/s of /llm/infer streams, N at once (standard library only).

    python3 tests/py/llm_bench.py http://127.0.0.1:8000 TOKEN [concurrency] [max_tokens] [runs]

Each stream asks the same greedy question; TTFT is measured from sending the request to the
first `token` event, decode speed from the first token to the `end` event. Prints one JSON line.
"""

import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse

PROMPT = "Write a short story about a lighthouse keeper."


def one(base, token, max_tokens, out):
    url = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = json.dumps({"prompt": PROMPT, "temperature": 0, "max_tokens": max_tokens, "stream": True})
    start = time.monotonic()
    conn.request("POST", "/llm/infer", body, {"authorization": f"Bearer {token}", "content-type": "application/json"})
    res = conn.getresponse()
    assert res.status == 200, (res.status, res.read())
    first = end = None
    summary = None
    event = None
    for raw in res:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            if event == "token" and first is None:
                first = time.monotonic()
            elif event == "end":
                end = time.monotonic()
                summary = json.loads(line[6:])
            elif event == "error":
                raise RuntimeError(line)
    conn.close()
    tokens = summary["usage"]["completion_tokens"]
    out.append({
        "ttft_ms": (first - start) * 1000,
        "total_ms": (end - start) * 1000,
        "tokens": tokens,
        "decode_tps": (tokens - 1) / (end - first) if end > first else 0.0,
        "queue_ms": summary["timings"]["queue_ms"],
    })


def main():
    base, token = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    max_tokens = int(sys.argv[4]) if len(sys.argv) > 4 else 128
    runs = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    results = []
    wall = []
    for _ in range(runs):
        out = []
        threads = [threading.Thread(target=one, args=(base, token, max_tokens, out)) for _ in range(n)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall.append(time.monotonic() - t0)
        assert len(out) == n, "a stream failed"
        results.extend(out)
    total_tokens = sum(r["tokens"] for r in results)
    print(json.dumps({
        "concurrency": n,
        "runs": runs,
        "max_tokens": max_tokens,
        "ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in results)),
        "ttft_ms_max": round(max(r["ttft_ms"] for r in results)),
        "per_stream_decode_tps_median": round(statistics.median(r["decode_tps"] for r in results), 1),
        "aggregate_tps": round(total_tokens / sum(wall), 1),
        "tokens_per_stream": statistics.median(r["tokens"] for r in results),
    }))


if __name__ == "__main__":
    main()
