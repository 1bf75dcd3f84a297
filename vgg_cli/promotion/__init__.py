"""What happens to a trained run's model: the decision against production (``decide.judge``), applying it, and the
production changes a person asks for (promote, rollback), with their history. ``vgg_cli.job`` calls them."""
