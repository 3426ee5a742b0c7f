"""Models that ship with SPA Localizer: `demo/` is what `spa-serve` serves by default."""
