"""PyTorch side of SPA Localizer: the SPA networks, training (spa-train) and ONNX export (spa-export).

It imports the runtime package spa_service (the model card schema); the runtime never imports this one.
"""
