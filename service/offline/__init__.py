"""Tools that run the pipeline over collections, never the HTTP layer: evaluation (spa-eval),
collection (spa-batch, Ray), synth (spa-synth)."""
