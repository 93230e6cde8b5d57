"""Audio in and out: WAV (PCM16, IMA ADPCM) and the log-mel features models take."""
