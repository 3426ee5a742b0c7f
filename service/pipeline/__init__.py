"""The math, in request order: imaging (decode, limits) -> engine (onnxruntime) -> scg -> resize ->
boxes -> localize (backbone run, post-process). No HTTP, no asyncio; http/ and offline/ import it."""
