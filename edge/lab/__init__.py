"""The Pi's lab: the cascade run over a data set split, threshold calibration, request sizes."""
