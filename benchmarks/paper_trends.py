"""M3AE's central claims, reproduced in miniature on synthetic captioned shapes.

    python benchmarks/paper_trends.py --quick --json trends.json   # <= 30 min on 2 CPU cores
    python benchmarks/paper_trends.py --json trends.json           # the recorded run

Three experiments, each over several seeds (mean and spread printed):

1. Linear probe of the pretrained encoder: random init vs MAE vs M3AE, same
   encoder, same pretraining budget, same probe (M3AE Table 1, Fig. 3).
2. Text mask ratio 0.15 / 0.5 / 0.75 / 0.9 (M3AE Fig. 5).
3. Paired fraction: share of training images that keep their caption,
   0 / 0.1 / 1.0 (M3AE Fig. 3).

The data: `keras_m3ae.data.shapes` in its `centered` layout, one large shape
(8 classes) in one of 8 colours on a background of another, 32 px, captioned
"a {colour} {shape} on a {background} background". The label is the shape.
Per-patch normalised pixels (norm-pix loss) leave the colours out of the image
loss; what remains is the outline, which MAE learns from pixels alone and
M3AE also from the one caption word that names it. With 16 patches and 7-word
captions one run is a few minutes on one core.

The probe is the papers' (frozen encoder, CLS feature of the image alone,
BatchNorm without affine -> linear classifier), fitted in closed form by
scikit-learn's logistic regression on standardised features (standardising is
what the non-affine BatchNorm does), on held-out images of a separate render.

Writes `--json PATH` as
`{"probe": {"random": [...], "mae": [...], "m3ae": [...]}, "text_mask_ratio":
{"0.15": [...], ...}, "paired_fraction": {"0.0": [...], "0.1": [...], "1.0":
[...]}, "chance": 0.125, ...}` (top-1 test accuracies, one per seed) and a
plot (`--plot`). Runs configurations in parallel worker processes
(`--workers`, default the number of cores), each single-threaded.
`--experiments paired_per_token` runs a diagnostic: 10 % paired with the text
loss averaged over masked tokens (`text_loss_reduction="per_token"`), so the
few captions are not diluted by the caption-less examples of each batch.
Recorded figures: `benchmarks/RESULTS.md`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TEXT_MASK_RATIOS = (0.15, 0.5, 0.75, 0.9)
PAIRED_FRACTIONS = (0.0, 0.1, 1.0)
# The paper's three claims; `paired_per_token` is a diagnostic: 10 % paired
# with the text loss averaged over the captioned examples' tokens only.
EXPERIMENTS = ("probe", "text_mask_ratio", "paired_fraction")
DIAGNOSTICS = ("paired_per_token",)


# --- Data (parent process) ---


def render(num_examples, image_size, seed, layout="centered"):
    """Images uint8 `(N, S, S, 3)`, captions, labels of the shapes set."""
    from keras_m3ae.data.shapes import render_shape_example

    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(num_examples):
        pixels, caption, label = render_shape_example(rng, image_size, layout=layout)
        images.append(pixels)
        captions.append(caption)
        labels.append(label)
    return np.stack(images), captions, np.asarray(labels, "int32")


def make_data(directory, args):
    """Renders the pretraining and probe sets once; workers load the .npz."""
    from keras_m3ae.data.tokenizer import M3AETokenizer
    from keras_m3ae.demo import caption_words

    vocabulary = os.path.join(directory, "vocabulary.txt")
    with open(vocabulary, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]"] + caption_words()) + "\n")
    tokenizer = M3AETokenizer(vocabulary, max_text_length=args.text_length)
    sets = {
        "pretrain": (args.pretrain_examples, 1000),
        "probe_train": (args.probe_examples, 2000),
        "probe_test": (args.probe_test_examples, 3000),
    }
    for name, (count, seed) in sets.items():
        images, captions, labels = render(count, args.image_size, seed, args.layout)
        token_ids, padding_mask = tokenizer(captions)
        np.savez(os.path.join(directory, f"{name}.npz"), images=images, labels=labels,
                 token_ids=token_ids, padding_mask=padding_mask)
    return vocabulary, tokenizer.vocabulary_size


# --- One configuration (worker process) ---


def _normalise(images):
    from keras_m3ae.data.constants import CC12M_MEAN
    from keras_m3ae.data.constants import CC12M_STD

    return ((images.astype("float32") / 255.0 - np.asarray(CC12M_MEAN, "float32"))
            / np.asarray(CC12M_STD, "float32"))


def _features(backbone, images, batch_size=512):
    """CLS and mean-of-patches features of the images alone, compiled."""
    import keras
    from keras import ops

    class Features(keras.Model):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def call(self, images):
            encoded = self.backbone.encode(self.backbone.embed_images(images))
            return ops.concatenate([encoded[:, 0], ops.mean(encoded[:, 1:], axis=1)], axis=-1)

    features = Features(backbone).predict(_normalise(images), batch_size=batch_size, verbose=0)
    width = backbone.hidden_dim
    return {"token": features[:, :width], "mean": features[:, width:]}


def probe_accuracy(backbone, directory):
    """Logistic regression on standardised features; test top-1 per pooling."""
    from keras_m3ae.analysis import linear_probe_accuracy

    train = np.load(os.path.join(directory, "probe_train.npz"))
    test = np.load(os.path.join(directory, "probe_test.npz"))
    train_features = _features(backbone, train["images"])
    test_features = _features(backbone, test["images"])
    return {pooling: linear_probe_accuracy(train_features[pooling], train["labels"],
                                           test_features[pooling], test["labels"])
            for pooling in ("token", "mean")}


def run_config(config):
    """Pretrains one configuration (or none, for `random`) and probes it."""
    import keras

    from keras_m3ae.models import M3AEBackbone
    from keras_m3ae.models import M3AEPretrainer
    from keras_m3ae.optimizers import pretrain_optimizer

    start = time.time()
    keras.utils.set_random_seed(config["seed"])
    kind = config["kind"]
    backbone = M3AEBackbone(
        image_size=config["image_size"], patch_size=config["patch_size"],
        vocabulary_size=None if kind == "mae" else config["vocabulary_size"],
        max_text_length=config["text_length"], hidden_dim=config["hidden_dim"],
        num_layers=config["num_layers"], num_heads=config["num_heads"],
    )
    history = {}
    if kind != "random":
        data = np.load(os.path.join(config["directory"], "pretrain.npz"))
        x = {"images": _normalise(data["images"])}
        if kind == "m3ae":
            token_ids, padding_mask = data["token_ids"], data["padding_mask"].copy()
            # A fixed, seeded subset of the images keeps its caption.
            rng = np.random.default_rng(config["seed"])
            unpaired = rng.permutation(len(token_ids))[
                int(round(config["paired_fraction"] * len(token_ids))):]
            padding_mask[unpaired] = False
            x["token_ids"] = np.where(padding_mask, token_ids, 0).astype("int32")
            x["padding_mask"] = padding_mask
        pretrainer = M3AEPretrainer(
            backbone, decoder_hidden_dim=config["decoder_dim"], decoder_num_layers=1,
            decoder_num_heads=4, text_mask_ratio=config.get("text_mask_ratio", 0.75),
            text_loss_reduction=config.get("text_loss_reduction", "per_example"),
            norm_pix_loss=True, seed=config["seed"],
        )
        batch_size, steps = config["batch_size"], config["steps"]
        steps_per_epoch = len(x["images"]) // batch_size
        epochs = -(-steps // steps_per_epoch)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps=steps_per_epoch * epochs - steps // 20,
            warmup_target=config["learning_rate"], warmup_steps=steps // 20,
        )
        pretrainer.compile(optimizer=pretrain_optimizer(schedule))
        fit = pretrainer.fit(x, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
        history = {k: float(v[-1]) for k, v in fit.history.items()}
    accuracies = probe_accuracy(backbone, config["directory"])
    return {**config, "accuracy": accuracies["token"], "accuracy_mean_pool": accuracies["mean"],
            "final_logs": history,
            "seconds": round(time.time() - start, 1)}


def _worker(path):
    with open(path) as f:
        configs = json.load(f)
    for config in configs:
        result = run_config(config)
        print("RESULT " + json.dumps(result), flush=True)


# --- The experiments (parent process) ---


def configurations(args, vocabulary_size, directory):
    """Every run: one per (setting, seed); shared settings run once."""
    base = dict(
        image_size=args.image_size, patch_size=args.patch_size, text_length=args.text_length,
        hidden_dim=args.hidden_dim, num_layers=args.num_layers, num_heads=args.num_heads,
        decoder_dim=args.decoder_dim, batch_size=args.batch_size, steps=args.steps,
        learning_rate=args.learning_rate, vocabulary_size=vocabulary_size, directory=directory,
    )
    runs = {}
    experiments = args.experiments.split(",")
    for seed in range(args.seeds):
        def add(kind, **extra):
            if kind == "m3ae":
                extra.setdefault("text_loss_reduction", "per_example")
            key = (kind, tuple(sorted(extra.items())), seed)
            runs.setdefault(key, dict(base, kind=kind, seed=seed, **extra))

        if "probe" in experiments:
            add("random")
            add("mae")
            add("m3ae", text_mask_ratio=0.75, paired_fraction=1.0)
        if "text_mask_ratio" in experiments:
            for ratio in TEXT_MASK_RATIOS:
                add("m3ae", text_mask_ratio=ratio, paired_fraction=1.0)
        if "paired_fraction" in experiments:
            for fraction in PAIRED_FRACTIONS:
                add("m3ae", text_mask_ratio=0.75, paired_fraction=fraction)
        if "paired_per_token" in experiments:
            add("m3ae", text_mask_ratio=0.75, paired_fraction=0.1,
                text_loss_reduction="per_token")
    # Longest first, so the workers finish together.
    return sorted(runs.values(), key=lambda c: (c["kind"] == "random", c["seed"]))


def run_all(configs, workers, log):
    """Runs the configurations in `workers` single-threaded processes."""
    chunks = [configs[i::workers] for i in range(workers)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = []
    for index, chunk in enumerate(chunks):
        if not chunk:
            continue
        path = os.path.join(configs[0]["directory"], f"worker{index}.json")
        with open(path, "w") as f:
            json.dump(chunk, f)
        procs.append(subprocess.Popen([sys.executable, __file__, "--_worker", path], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    total = len(configs)
    import selectors

    selector = selectors.DefaultSelector()
    for proc in procs:
        selector.register(proc.stdout, selectors.EVENT_READ, proc)
    tails = {proc.pid: [] for proc in procs}
    open_streams = len(procs)
    while open_streams:
        for key, _ in selector.select():
            line = key.fileobj.readline()
            if not line:
                selector.unregister(key.fileobj)
                open_streams -= 1
                continue
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                results.append(result)
                log(f"[{len(results)}/{total}] {describe(result)}: "
                    f"probe {result['accuracy']:.3f} ({result['seconds']:.0f} s)")
            else:
                tails[key.data.pid] = (tails[key.data.pid] + [line])[-30:]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"A worker failed (exit {proc.returncode}):\n" + "".join(tails[proc.pid]))
    return results


def describe(config):
    if config["kind"] != "m3ae":
        return f"{config['kind']} seed {config['seed']}"
    reduction = config.get("text_loss_reduction", "per_example")
    return (f"m3ae text mask {config['text_mask_ratio']} paired {config['paired_fraction']}"
            f"{'' if reduction == 'per_example' else ' ' + reduction} seed {config['seed']}")


def collect(results, experiments=EXPERIMENTS):
    """Accuracies per experiment and setting, one per seed (seed order)."""
    def accuracies(**match):
        match.setdefault("text_loss_reduction", "per_example")
        found = [r for r in results
                 if all(r.get(k, "per_example" if k == "text_loss_reduction" else None) == v
                        for k, v in match.items())]
        return [r["accuracy"] for r in sorted(found, key=lambda r: r["seed"])]

    everything = {
        "probe": lambda: {
            "random": accuracies(kind="random"),
            "mae": accuracies(kind="mae"),
            "m3ae": accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=1.0),
        },
        "text_mask_ratio": lambda: {
            str(r): accuracies(kind="m3ae", text_mask_ratio=r, paired_fraction=1.0)
            for r in TEXT_MASK_RATIOS
        },
        "paired_fraction": lambda: {
            str(f): accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=f)
            for f in PAIRED_FRACTIONS
        },
        "paired_per_token": lambda: {
            "0.1": accuracies(kind="m3ae", text_mask_ratio=0.75, paired_fraction=0.1,
                              text_loss_reduction="per_token"),
        },
    }
    return {name: everything[name]() for name in experiments}


def table(summary):
    lines = [f"{'experiment':<18} {'setting':<8} {'mean':>6} {'std':>6}  per seed"]
    for experiment in EXPERIMENTS + DIAGNOSTICS:
        for setting, values in summary.get(experiment, {}).items():
            per_seed = " ".join(f"{v:.3f}" for v in values)
            lines.append(f"{experiment:<18} {setting:<8} {np.mean(values):6.3f} "
                         f"{np.std(values):6.3f}  {per_seed}")
    lines.append(f"chance: {summary['chance']:.3f}")
    return "\n".join(lines)


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [e for e in EXPERIMENTS + DIAGNOSTICS if e in summary]
    figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.6), squeeze=False)
    axes = axes[0]
    titles = {"probe": "Linear probe (Table 1)", "text_mask_ratio": "Text mask ratio (Fig. 5)",
              "paired_fraction": "Paired fraction (Fig. 3)",
              "paired_per_token": "10 % paired, per-token text loss"}
    for axis, experiment in zip(axes, shown):
        settings = list(summary[experiment])
        values = [summary[experiment][s] for s in settings]
        means = [np.mean(v) for v in values]
        axis.bar(range(len(settings)), means, color="#7aa6c2",
                 yerr=[np.std(v) for v in values], capsize=4)
        for i, v in enumerate(values):
            axis.scatter([i] * len(v), v, color="black", s=10, zorder=3)
        axis.axhline(summary["chance"], color="grey", linestyle="--", label="chance")
        axis.set_xticks(range(len(settings)), settings)
        axis.set_title(titles[experiment])
        axis.set_ylabel("probe top-1")
        axis.set_ylim(0, 1)
    axes[0].legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="A smaller budget (<= 30 min on 2 cores).")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--experiments", default=",".join(EXPERIMENTS),
                        help="comma-separated, from " + ", ".join(EXPERIMENTS + DIAGNOSTICS))
    parser.add_argument("--steps", type=int, default=None, help="Pretraining steps per run.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", default=None, help="Write the accuracies here.")
    parser.add_argument("--plot", default=None, help="Save the bar plot here (PNG).")
    parser.add_argument("--layout", default="centered", choices=("centered", "grid"),
                        help="shapes layout (keras_m3ae.data.shapes.render_shape_example)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--patch_size", type=int, default=8)
    parser.add_argument("--text_length", type=int, default=8)
    parser.add_argument("--hidden_dim", type=int, default=64)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--decoder_dim", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--pretrain_examples", type=int, default=8192)
    parser.add_argument("--probe_examples", type=int, default=4096)
    parser.add_argument("--probe_test_examples", type=int, default=2048)
    parser.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 1500 if args.quick else 3000
    return args


def main():
    args = parse_args()
    if args._worker:
        return _worker(args._worker)
    start = time.time()

    def log(message):
        print(f"{time.time() - start:7.0f} s  {message}", flush=True)

    with tempfile.TemporaryDirectory(prefix="m3ae_trends_") as directory:
        log(f"rendering {args.pretrain_examples} + {args.probe_examples} + "
            f"{args.probe_test_examples} images of {args.image_size} px")
        _, vocabulary_size = make_data(directory, args)
        configs = configurations(args, vocabulary_size, directory)
        log(f"{len(configs)} runs ({args.steps} steps of {args.batch_size} each) "
            f"on {args.workers} workers, backend {os.environ.get('KERAS_BACKEND', 'tensorflow')}")
        results = run_all(configs, args.workers, log)
    summary = collect(results, args.experiments.split(","))
    summary["chance"] = 1 / 8
    summary["settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    summary["backend"] = os.environ.get("KERAS_BACKEND", "tensorflow")
    summary["seconds"] = round(time.time() - start)
    summary["runs"] = [{k: v for k, v in r.items() if k != "directory"} for r in results]
    print(table(summary))
    print(f"total {summary['seconds']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.plot:
        plot(summary, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
