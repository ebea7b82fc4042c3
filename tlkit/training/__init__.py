"""Training: the pipeline of a run (:mod:`~tlkit.training.pipeline`), the phases of each mode
(:mod:`~tlkit.training.phases`), what makes a run the same run (:mod:`~tlkit.training.identity`), its
per-epoch checkpoint (:mod:`~tlkit.training.checkpoint`), and cross-validation of the head
(:mod:`~tlkit.training.cv`)."""
