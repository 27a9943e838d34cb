"""Reading and editing .tflite flatbuffers (no interpreter needed to read)."""
