#!/usr/bin/env python3
"""A hyperparameter sweep from Python: the logreg example over learning rate x epochs on iris,
as one Corral job, printing each setting's figures and the best one.

The data goes up once, as a shared input: every task of the job reads the same file, mounted
read-only at /input/<its name> (--data names it; a file uploaded before is not sent again).

Run it from the repository root against a running cluster:

    scripts/build-guests
    corral dev &
    export CORRAL_TOKEN=$(cat ~/.local/share/corral/dev/admin.token)
    pip install ./clients/python
    python3 examples/sweep.py

It exits 1 when some run did not finish.
"""

import argparse
import pathlib
import sys

import corral

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="the host's URL (default: CORRAL_HOST, else the local one)")
    parser.add_argument("--module", default=ROOT / "target/wasm/logreg.wasm", type=pathlib.Path)
    parser.add_argument("--data", default=ROOT / "examples/data/iris.csv", type=pathlib.Path)
    options = parser.parse_args()

    client = corral.Client(options.host)
    job = client.submit_sweep(
        options.module,
        params={"learning_rate": [0.01, 0.05, 0.1, 0.5, 1.0], "epochs": [10, 50, 100, 300]},
        args=[
            "--json",
            "--learning-rate",
            "{learning_rate}",
            "--epochs",
            "{epochs}",
            f"/input/{options.data.name}",  # where the task sees the input
        ],
        inputs=[options.data],
        memory=64 << 20,
        name="logreg-sweep",
    )
    ended = client.wait(job)
    rows = client.results(job)

    print(f"{'learning_rate':>13} {'epochs':>6} {'loss':>8} {'train_acc':>9} {'test_acc':>8}")
    # Runs that finished with every figure a number (a diverging one reports its loss as null).
    figures = ("loss", "train_accuracy", "test_accuracy")
    finished = [
        r
        for r in rows
        if r["state"] == "FINISHED"
        and isinstance(r["result"], dict)
        and all(isinstance(r["result"].get(f), (int, float)) for f in figures)
    ]
    for row in finished:
        p, r = row["params"], row["result"]
        print(
            f"{p['learning_rate']:>13} {p['epochs']:>6} {r['loss']:>8.4f} "
            f"{r['train_accuracy']:>9.4f} {r['test_accuracy']:>8.4f}"
        )
    if not finished:
        print(f"{job.id}: no run finished ({ended['reason']})", file=sys.stderr)
        return 1
    # The best test accuracy; among equals, the lowest training loss.
    best = max(finished, key=lambda r: (r["result"]["test_accuracy"], -r["result"]["loss"]))
    p, r = best["params"], best["result"]
    print(
        f"best: learning_rate={p['learning_rate']} epochs={p['epochs']} "
        f"test_accuracy={r['test_accuracy']:.4f} loss={r['loss']:.4f} ({job.id}, {len(rows)} runs)"
    )
    return 0 if ended["state"] == "FINISHED" else 1


if __name__ == "__main__":
    sys.exit(main())
