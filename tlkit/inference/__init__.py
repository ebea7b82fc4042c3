"""Using a trained run: predictions (:mod:`~tlkit.inference.predict`), prediction files
(:mod:`~tlkit.inference.prediction_file`), scores (:mod:`~tlkit.inference.evaluate`) and Grad-CAM
(:mod:`~tlkit.inference.explain`)."""
