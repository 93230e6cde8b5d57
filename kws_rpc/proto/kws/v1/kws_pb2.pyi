from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    INT8: _ClassVar[DType]

class TensorEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TENSOR_ENCODING_RAW: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_DIFF2_ZLIB: _ClassVar[TensorEncoding]
    TENSOR_ENCODING_DCT_RC: _ClassVar[TensorEncoding]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
INT8: DType
TENSOR_ENCODING_RAW: TensorEncoding
TENSOR_ENCODING_DIFF2_ZLIB: TensorEncoding
TENSOR_ENCODING_DCT_RC: TensorEncoding

class Audio(_message.Message):
    __slots__ = ("sample_rate", "pcm16", "wav")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PCM16_FIELD_NUMBER: _ClassVar[int]
    WAV_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    pcm16: bytes
    wav: bytes
    def __init__(self, sample_rate: _Optional[int] = ..., pcm16: _Optional[bytes] = ..., wav: _Optional[bytes] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scale", "zero_point", "encoding")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_POINT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scale: float
    zero_point: int
    encoding: TensorEncoding
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scale: _Optional[float] = ..., zero_point: _Optional[int] = ..., encoding: _Optional[_Union[TensorEncoding, str]] = ...) -> None: ...

class FeatureConfig(_message.Message):
    __slots__ = ("sample_rate", "clip_samples", "frame_length", "frame_step", "fft_length", "num_mel_bins", "lower_hz", "upper_hz", "num_mfcc", "peak_normalize")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CLIP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FRAME_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FRAME_STEP_FIELD_NUMBER: _ClassVar[int]
    FFT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    NUM_MEL_BINS_FIELD_NUMBER: _ClassVar[int]
    LOWER_HZ_FIELD_NUMBER: _ClassVar[int]
    UPPER_HZ_FIELD_NUMBER: _ClassVar[int]
    NUM_MFCC_FIELD_NUMBER: _ClassVar[int]
    PEAK_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    sample_rate: int
    clip_samples: int
    frame_length: int
    frame_step: int
    fft_length: int
    num_mel_bins: int
    lower_hz: float
    upper_hz: float
    num_mfcc: int
    peak_normalize: float
    def __init__(self, sample_rate: _Optional[int] = ..., clip_samples: _Optional[int] = ..., frame_length: _Optional[int] = ..., frame_step: _Optional[int] = ..., fft_length: _Optional[int] = ..., num_mel_bins: _Optional[int] = ..., lower_hz: _Optional[float] = ..., upper_hz: _Optional[float] = ..., num_mfcc: _Optional[int] = ..., peak_normalize: _Optional[float] = ...) -> None: ...

class Features(_message.Message):
    __slots__ = ("tensor", "config")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    config: FeatureConfig
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., config: _Optional[_Union[FeatureConfig, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("request_id", "model", "audio", "features")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    audio: Audio
    features: Features
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., features: _Optional[_Union[Features, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "index", "probabilities", "model", "model_version", "margin")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    model: str
    model_version: str
    margin: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., margin: _Optional[float] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("request_id", "prediction", "worker_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prediction: Prediction
    worker_id: str
    def __init__(self, request_id: _Optional[str] = ..., prediction: _Optional[_Union[Prediction, _Mapping]] = ..., worker_id: _Optional[str] = ...) -> None: ...

class ModelMetadataRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("name", "version", "labels", "feature_config", "input_shape", "sha256", "metrics", "architecture")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    feature_config: FeatureConfig
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    sha256: str
    metrics: _containers.ScalarMap[str, float]
    architecture: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., feature_config: _Optional[_Union[FeatureConfig, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ..., sha256: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., architecture: _Optional[str] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "state", "model", "timestamp_ms")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[WorkerStatus.State]
        ONLINE: _ClassVar[WorkerStatus.State]
        OFFLINE: _ClassVar[WorkerStatus.State]
    STATE_UNSPECIFIED: WorkerStatus.State
    ONLINE: WorkerStatus.State
    OFFLINE: WorkerStatus.State
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    state: WorkerStatus.State
    model: ModelMetadata
    timestamp_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., state: _Optional[_Union[WorkerStatus.State, str]] = ..., model: _Optional[_Union[ModelMetadata, _Mapping]] = ..., timestamp_ms: _Optional[int] = ...) -> None: ...
