"""llama.cpp (llama-cpp-python) on the same GGUF and prompt as tests/py/llm_bench.py, for the
side-by-side numbers: one stream, greedy, 128 tokens; TTFT and decode tokens/s (median of 3
after one warm-up). Also prints the greedy answer to "What is the capital of France?".

    python3 -m venv /tmp/llama-venv && /tmp/llama-venv/bin/pip install llama-cpp-python   # compiles llama.cpp
    /tmp/llama-venv/bin/python tests/py/llama_cpp_bench.py [MODEL.gguf]
"""

import os
import statistics
import sys
import time

from llama_cpp import Llama

DEFAULT = "~/.cache/bkg/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
path = os.path.expanduser(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
llm = Llama(model_path=path, n_ctx=4096, n_threads=2, verbose=False, seed=0)
msgs = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
res = []
for i in range(4):
    t0 = time.monotonic()
    first, n = None, 0
    for chunk in llm.create_chat_completion(messages=msgs, temperature=0, max_tokens=128, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            n += 1
            if first is None:
                first = time.monotonic()
    end = time.monotonic()
    llm.reset()
    if i:
        res.append(((first - t0) * 1000, (n - 1) / (end - first)))
print("llama.cpp: ttft_ms median", round(statistics.median(r[0] for r in res)),
      "decode tok/s median", round(statistics.median(r[1] for r in res), 1))
q = [{"role": "user", "content": "What is the capital of France?"}]
print("greedy answer:", llm.create_chat_completion(messages=q, temperature=0, max_tokens=32)["choices"][0]["message"]["content"])
