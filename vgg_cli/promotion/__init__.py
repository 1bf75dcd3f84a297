"""What happens to a trained run: the decision against production (``decide``), finishing a run
(``finish``: latest, promotion, pruning, report) and ``vgg train`` as one job (``job``)."""
