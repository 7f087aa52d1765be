"""What the two studies share: the Fashion-MNIST subset they are run on."""

DATA_DEFAULT = ".demo/fashion-mnist-study"


def add_data_arguments(ap, train_per_class=1000, val_per_class=500):
    ap.add_argument("--data", default=DATA_DEFAULT, help="where the Fashion-MNIST tree is written")
    ap.add_argument("--train-per-class", type=int, default=train_per_class)
    ap.add_argument("--val-per-class", type=int, default=val_per_class)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--quick", action="store_true", help="a smoke run on a tiny subset")


def fashion_mnist(args):
    """The tree of ``args`` (a separate folder for --quick runs, so they never touch the real one)."""
    from dali_kmix.apps.data import make_fashion_mnist_tree

    data = args.data + "-quick" if args.quick else args.data
    return make_fashion_mnist_tree(data, train_per_class=args.train_per_class, val_per_class=args.val_per_class,
                                   seed=0)
