#!/usr/bin/env python3
"""The same job through the CLI and through the Python client: an array of N trivial tasks
(tests/fixtures/trivial_wasi.wat) submitted and waited for, first with `corral submit --wait
--array N`, then with `Client.submit_array` and `Client.wait`; three rounds each, alternating.

    cargo build --release -p corral
    target/release/corral dev --listen 127.0.0.1:7700 --data-dir "$(mktemp -d)" &
    CORRAL_TOKEN=$(cat .../admin.token) python3 clients/python/benches/array.py --count 10000

It prints each round's wall time and the medians' ratio (Python over CLI).
"""

import argparse
import os
import pathlib
import statistics
import subprocess
import time

import corral

ROOT = pathlib.Path(__file__).resolve().parents[3]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default=os.environ.get("CORRAL_HOST", corral.DEFAULT_HOST))
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corral", default=str(ROOT / "target" / "release" / "corral"))
    options = parser.parse_args()
    module = ROOT / "tests" / "fixtures" / "trivial_wasi.wat"
    client = corral.Client(options.host)
    env = {**os.environ, "CORRAL_HOST": options.host}
    # Warm up: the module compiled on every agent.
    client.wait(client.submit_array(module, 64), progress=False)
    cli, python = [], []
    for _ in range(options.rounds):
        started = time.monotonic()
        subprocess.run(
            [options.corral, "submit", "--wait", "--array", str(options.count), str(module)],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cli.append(time.monotonic() - started)
        started = time.monotonic()
        # Looked at as often as `corral job wait` does at most (every 500 ms).
        record = client.wait(client.submit_array(module, options.count), progress=False)
        assert record["state"] == "FINISHED", record
        python.append(time.monotonic() - started)
    for name, times in (("cli", cli), ("python", python)):
        rates = ", ".join(f"{t:.2f} s ({options.count / t:,.0f}/s)" for t in times)
        print(f"{name:>6}: {rates}")
    ratio = statistics.median(python) / statistics.median(cli)
    print(f"python / cli (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
