"""Pretrain M3AE (or MAE) on image-caption TFRecords with the papers' recipe.

Reads img2dataset-style shards (CC12M or your own, see docs/data.md) and
trains with AdamW (base lr 1.5e-4 x batch/256, wd 0.05, betas 0.9/0.95),
linear warmup then cosine decay, mask ratios 0.75, loss weights 1.0 / 0.5.
Every `--save_every_steps` steps (and at the end) it writes a checkpoint of
everything that decides the next step (model, optimizer, masking seeds,
metrics, step, and each host's data position) with Orbax, keeping the last
`--keep_checkpoints`; rerunning the same command after a kill continues
from the last one and finishes with the same weights and the same per-step
log (`steps.jsonl`) as a run that was never interrupted (data order is deterministic unless
`--no_deterministic`). The encoder is saved as a preset after every epoch
(atomically too). A NaN or infinite loss stops the run before anything is
saved, with a non-zero exit and a message naming the step and the losses.
On several hosts (multi-process JAX: `--multi_host`, or the
`KERAS_DISTRIBUTION_*` variables set) each host writes its own shards of
the checkpoints (Orbax, asynchronously) and process 0 everything else.
`--output_dir` may be a local directory or a `tf.io.gfile` URL
(`gs://bucket/run`). A SIGTERM (a preemption notice) makes every host save
a checkpoint at the same step and exit with status 143; rerunning the same
command continues from it.

    # CC12M, ViT-B, on whatever KERAS_BACKEND selects:
    python examples/pretrain.py --data "/data/cc12m/*.tfrecord" \
        --preset m3ae_vit_base_patch16 --batch_size 4096 --epochs 50 \
        --num_examples 10000000 --distribution data --dtype mixed_bfloat16
    # With no --data: the bundled shapes dataset and the tiny preset.
    python examples/pretrain.py --epochs 2
"""

import argparse
import os


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="TFRecord file pattern; default: the bundled shapes dataset")
    p.add_argument("--num_examples", type=int, help="examples per epoch (needed for the schedule)")
    p.add_argument("--output_dir", default="m3ae_pretrain_output")
    p.add_argument("--preset", default="m3ae_vit_tiny_demo", help="architecture or preset directory")
    p.add_argument("--mae", action="store_true", help="image only (MAE): no text")
    p.add_argument("--image_size", type=int, help="override the preset's image size")
    p.add_argument("--batch_size", type=int, default=64, help="global: summed over hosts")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--warmup_epochs", type=float, default=5.0, help="5 for M3AE, 40 for MAE")
    p.add_argument("--base_learning_rate", type=float, default=1.5e-4, help="per 256 examples")
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--image_mask_ratio", type=float, default=0.75)
    p.add_argument("--text_mask_ratio", type=float, default=0.75)
    p.add_argument("--text_loss_weight", type=float, default=0.5)
    p.add_argument("--norm_pix_loss", action="store_true")
    p.add_argument("--text_drop_rate", type=float, default=0.0, help="fraction of captions dropped")
    p.add_argument("--decoder_hidden_dim", type=int, default=512)
    p.add_argument("--decoder_num_layers", type=int, default=8)
    p.add_argument("--decoder_num_heads", type=int, default=16)
    p.add_argument("--dtype", default=None, help="e.g. mixed_bfloat16")
    p.add_argument("--distribution", choices=["none", "data", "model"], default="none",
                   help="JAX: keras.distribution DataParallel or ModelParallel over all devices")
    p.add_argument("--gradient_accumulation_steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save_every_steps", type=int, default=500,
                   help="checkpoint interval: a kill loses at most this many steps")
    p.add_argument("--keep_checkpoints", type=int, default=2,
                   help="how many of the most recent checkpoints to keep")
    p.add_argument("--log_every_steps", type=int, default=100,
                   help="TensorBoard scalars and skip counts every this many steps")
    p.add_argument("--snapshot_every_steps", type=int, default=1000,
                   help="reconstruction picture of a fixed batch every this many steps (0: none)")
    p.add_argument("--no_deterministic", dest="deterministic", action="store_false",
                   help="faster reading in any order; a resumed run then sees a slightly "
                        "different stream")
    p.add_argument("--multi_host", action=argparse.BooleanOptionalAction, default=None,
                   help="initialise multi-process JAX (default: when "
                        "KERAS_DISTRIBUTION_NUM_PROCESSES > 1)")
    p.add_argument("--recipe", default="standard", choices=["standard", "efficient"],
                   help="efficient: mask 0.9, 1-block decoder, 1/16 of --epochs (docs/recipes.md); "
                        "flags given explicitly still win")
    from keras_m3ae import recipes

    known = p.parse_known_args(argv)[0]
    p.set_defaults(**recipes.get(known.recipe).example_pretrain_flags(known.epochs))
    return p.parse_args(argv)


# Settings a resumed run must share with the run it continues.
FINGERPRINT = ("data", "num_examples", "preset", "mae", "image_size", "batch_size",
               "warmup_epochs", "base_learning_rate", "weight_decay", "image_mask_ratio",
               "text_mask_ratio", "text_loss_weight", "norm_pix_loss", "text_drop_rate",
               "decoder_hidden_dim", "decoder_num_layers", "decoder_num_heads", "dtype",
               "gradient_accumulation_steps", "seed", "deterministic")


def set_distribution(kind):
    import keras

    devices = keras.distribution.list_devices()
    # image_text_dataset already gives each host (JAX process) its own files
    # and a per-host batch, so Keras must not shard the dataset again (its
    # default would keep only 1/num_hosts of each host's records on several
    # hosts; see docs/distributed.md).
    if kind == "data":
        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    elif kind == "model":
        import keras_m3ae

        model_dim = 2 if len(devices) % 2 == 0 else 1
        mesh = keras.distribution.DeviceMesh(
            (len(devices) // model_dim, model_dim), ["batch", "model"], devices
        )
        keras.distribution.set_distribution(keras.distribution.ModelParallel(
            layout_map=keras_m3ae.M3AEPretrainer.get_layout_map(mesh), batch_dim_name="batch",
            auto_shard_dataset=False))


def main(argv=None):
    args = parse_args(argv)
    import keras

    import keras_m3ae
    from keras_m3ae import data
    from keras_m3ae import training
    from keras_m3ae.training import hosts
    from keras_m3ae.training import paths

    if hosts.multi_host_requested(args.multi_host):
        # Before anything runs on JAX; several hosts train one model.
        hosts.initialize()
        if args.distribution == "none":
            args.distribution = "data"
    chief = hosts.is_chief()
    keras.utils.set_random_seed(args.seed)
    if args.distribution != "none":
        set_distribution(args.distribution)
    paths.makedirs(args.output_dir)
    run_lock = training.RunLock(args.output_dir).acquire()  # one run writes here at a time

    overrides = {"dtype": args.dtype} if args.dtype else {}
    if args.mae:
        overrides["vocabulary_size"] = None
    if args.image_size:
        overrides["image_size"] = args.image_size
    backbone = keras_m3ae.M3AEBackbone.from_preset(args.preset, **overrides)
    image_size = backbone.image_size

    files = args.data
    num_examples = args.num_examples
    if files is None:
        num_examples = num_examples or 2048
        files = os.path.join(args.output_dir, "shapes")
        if chief:  # the same seed writes the same records again
            data.write_shapes_dataset(files, num_examples=num_examples, image_size=image_size,
                                      seed=args.seed, overwrite=True)
        hosts.barrier("shapes dataset written")
    if not num_examples:
        raise SystemExit("--num_examples is needed with --data (examples per epoch, for the schedule).")
    # --batch_size is global; each host (JAX process) reads its own files
    # and yields its share of every batch.
    _, num_hosts = data.default_shard()
    if args.batch_size % num_hosts:
        raise SystemExit(f"--batch_size {args.batch_size} is not divisible by {num_hosts} hosts.")
    # The position ledger lets a restarted run skip the raw records already
    # trained on without decoding them.
    position = data.positions.DataPosition()
    dataset = data.image_text_dataset(
        files, image_size=image_size, max_text_length=backbone.max_text_length,
        batch_size=args.batch_size // num_hosts, training=True,
        text_drop_rate=args.text_drop_rate,
        seed=args.seed, repeat=True, deterministic=args.deterministic, position=position,
    )

    pretrainer = keras_m3ae.M3AEPretrainer(
        backbone,
        decoder_hidden_dim=args.decoder_hidden_dim,
        decoder_num_layers=args.decoder_num_layers,
        decoder_num_heads=args.decoder_num_heads,
        image_mask_ratio=args.image_mask_ratio,
        text_mask_ratio=args.text_mask_ratio,
        text_loss_weight=args.text_loss_weight,
        norm_pix_loss=args.norm_pix_loss,
        seed=args.seed,
    )
    steps_per_epoch = max(1, num_examples // args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = min(int(args.warmup_epochs * steps_per_epoch), total_steps - 1)
    peak = args.base_learning_rate * args.batch_size / 256
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=total_steps - warmup_steps, warmup_target=peak, warmup_steps=warmup_steps
    )
    pretrainer.compile(optimizer=keras_m3ae.optimizers.pretrain_optimizer(
        schedule, weight_decay=args.weight_decay,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
    ))

    preset_dir = os.path.join(args.output_dir, "preset")
    checkpoint = training.TrainingCheckpoint(
        os.path.join(args.output_dir, "checkpoint"), every_steps=args.save_every_steps,
        positions=[position], skip_counters=[dataset.skip_counter],
        config={k: getattr(args, k) for k in FINGERPRINT} | {"hosts": num_hosts},
        log_path=os.path.join(args.output_dir, "steps.jsonl"),
        max_to_keep=args.keep_checkpoints,
    )
    # First: a non-finite loss stops the run before any callback below
    # saves the broken weights.
    callbacks = [training.NonFiniteLossGuard(), checkpoint]
    tensorboard_dir = os.path.join(args.output_dir, "tensorboard")
    if args.snapshot_every_steps:
        # On every host: on several, each picture step reads the weights on
        # all of them (process 0 alone draws and writes). The fixed batch
        # comes from its own evaluation reader: drawing it from the training
        # dataset would open another iterator of it.
        fixed = next(iter(data.image_text_dataset(
            files, image_size=image_size, max_text_length=backbone.max_text_length,
            batch_size=8, training=False)))
        callbacks.append(keras_m3ae.analysis.ReconstructionSnapshots(
            fixed, tensorboard_dir, every_steps=args.snapshot_every_steps, seed=args.seed))
    if chief:
        callbacks += [
            # Before the writers: it puts `skipped` into the logs they record.
            training.SkipCountLogger(dataset.skip_counter, every_steps=args.log_every_steps),
            keras.callbacks.CSVLogger(os.path.join(args.output_dir, "log.csv"), append=True),
            training.TensorBoardScalars(tensorboard_dir, every_steps=args.log_every_steps),
        ]
    # On every host: weights sharded over the hosts are read with all of
    # them; process 0 alone writes.
    callbacks.append(training.SavePreset(backbone, preset_dir))
    if chief:
        callbacks.append(training.RunSummary(
            batch_size=args.batch_size, counters=[dataset.skip_counter], print_fn=print,
            outputs={"preset": preset_dir, "checkpoint": checkpoint.directory,
                     "tensorboard": tensorboard_dir}))
    if chief:
        print(f"Peak learning rate {peak:.3g} ({args.base_learning_rate} x {args.batch_size}/256), "
              f"{steps_per_epoch} steps/epoch, {warmup_steps} warmup steps.")
    try:
        training.fit_resumable(pretrainer, dataset, epochs=args.epochs,
                               steps_per_epoch=steps_per_epoch, checkpoint=checkpoint,
                               callbacks=callbacks, verbose="auto" if chief else 0)
    except keras_m3ae.training.NonFiniteLossError as error:
        run_lock.release()
        raise SystemExit(f"error: {error}") from None
    except keras_m3ae.training.Preempted as preempted:
        # Every host saved at the same step; the same command resumes.
        print(f"{preempted} Exiting with status {training.PREEMPTED_EXIT_CODE}.", flush=True)
        run_lock.release()
        raise SystemExit(training.PREEMPTED_EXIT_CODE) from None
    # A rerun of a finished run, or one that never ended an epoch here: the
    # hosts agree (a collective), since all of them take part in the save.
    if hosts.any_host(chief and not paths.isdir(preset_dir)):
        training.save_preset_atomically(backbone, preset_dir)
    if chief:
        print(f"Encoder preset: {preset_dir}.")
    run_lock.release()


if __name__ == "__main__":
    main()
