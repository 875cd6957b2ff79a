"""Load a finished run and draw one figure: its validation curve per epoch, and the final model's test accuracy on
all images and on the bias-conflicting ones, recomputed from its selected checkpoint.

    python docs/example_load_run.py <run dir> [out.png]
"""

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import denetdm  # noqa: E402


def main(run_dir: str, out: str = "run.png") -> None:
    run = denetdm.load_run(run_dir)
    final = run.config["method"]["final"]  # the phase and head whose model is the deliverable
    key = f"{final['phase']}/{final['head']}/val/acc_unbiased"
    epochs = [e for e in run.epochs if key in e]
    model, test = run.model(), run.data().test
    with torch.no_grad():
        correct = model.predict(test.x)[final["head"]].argmax(1) == test.y
    conflicting = test.y != test.b
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax.plot([e["epoch"] for e in epochs], [100 * e[key] for e in epochs], marker="o", ms=3)
    ax.set(xlabel="epoch", ylabel=f"{key} (%)", title=f"{run.results['method_label']}, seed {run.config['seed']}")
    accs = [100 * correct.float().mean().item(), 100 * correct[conflicting].float().mean().item()]
    bars.bar(["all", "bias-conflicting"], accs)
    bars.set(ylabel="test accuracy of the selected model (%)", ylim=(0, 100))
    fig.tight_layout()
    fig.savefig(out)
    recorded = [100 * run.results[f"test/{m}"] for m in ("acc", "acc_conflicting_samples")]
    print(
        f"{out}: all {accs[0]:.2f} %, conflicting {accs[1]:.2f} % (results.json: {recorded[0]:.2f}, {recorded[1]:.2f})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
