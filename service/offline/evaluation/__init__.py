"""Evaluation: data set readers, localization metrics, and `spa-eval`, which runs a data set through
the same `Localizer` the service uses and reports the paper's figures."""
