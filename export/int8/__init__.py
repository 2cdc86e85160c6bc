"""int8 files of an export (``omama export --int8``): calibration data (``calibration``),
NNCF static quantization of one ONNX file to QDQ int8 (``quantize``), the per-block error
growth that names the layers hurting most (``sensitivity``) and the export stage that runs
them, verifies and gates the result (``stage``)."""
