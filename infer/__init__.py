"""Inference and evaluation: ``pipeline`` (CObLPipeline, guided sampling, object discovery), ``guidance``
(composite guidance maths), ``io`` (photos in, layer files out), ``metrics`` and ``baselines`` (scoring),
``evaluate`` and ``cli`` (``cobl infer``, ``cobl eval``), ``layered`` (PSD and OpenRaster files for image
editors), ``tabletop`` (the authors' real TABLETOP scenes). Import-light: heavy modules load on use."""
