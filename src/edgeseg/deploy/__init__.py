"""Deployment: export to TFLite (the exporter orchestrates), INT8 quantization and its per-tensor rewrite,
activation ranges, bias correction, device presets and op lists, and Vela for the i.MX 93."""
